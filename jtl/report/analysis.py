"""Who wins, from which size on, and where transfer or training goes wrong.

Crossover (the size from which scratch catches up with transfer), negative transfer (one-sided
Welch t-test) and overfitting flags (validation loss rising while training loss falls).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from jtl.report.aggregate import TIE, _at, _best, _isnan, sizes_of, targets_of
from jtl.report.convergence import blockers, target_blockers

# --------------------------------------------------------------------------- crossover


def crossover(
    scratch: Sequence[dict[str, Any]],
    transfer: Sequence[dict[str, Any]],
    tolerance: float | None = None,
) -> dict[str, Any]:
    """The smallest size from which scratch stays >= transfer − tolerance at every larger size.

    `scratch` and `transfer` are curves: points `{"size", "train_examples", "mean", "std", "n"}`
    (matched by size label). The tolerance defaults to the pooled standard error
    sqrt(s_s²/n_s + s_t²/n_t) at each size, i.e. "scratch is not significantly worse".
    Returns `reached`, `size`, `train_examples` (None when not reached), `gap_at_largest`
    (scratch − transfer at the largest common size) and the per-size comparison.
    """
    t_by_size = {p["size"]: p for p in transfer}
    common = sorted(
        ((s, t_by_size[s["size"]]) for s in scratch if s["size"] in t_by_size),
        key=lambda st: st[0]["train_examples"],
    )
    per_size = []
    for s, t in common:
        tol = tolerance
        if tol is None:
            tol = math.sqrt(s["std"] ** 2 / s["n"] + t["std"] ** 2 / t["n"])
        per_size.append(
            {
                "size": s["size"],
                "train_examples": s["train_examples"],
                "scratch_mean": s["mean"],
                "transfer_mean": t["mean"],
                "gap": s["mean"] - t["mean"],
                "tolerance": tol,
                "scratch_ok": s["mean"] >= t["mean"] - tol - TIE,
            }
        )
    start = None
    for i in range(len(per_size) - 1, -1, -1):
        if not per_size[i]["scratch_ok"]:
            break
        start = i
    return {
        "reached": start is not None,
        "size": per_size[start]["size"] if start is not None else None,
        "train_examples": per_size[start]["train_examples"] if start is not None else None,
        "gap_at_largest": per_size[-1]["gap"] if per_size else None,
        "largest_size": per_size[-1]["size"] if per_size else None,
        "tolerance": "pooled standard error" if tolerance is None else tolerance,
        "per_size": per_size,
    }


def best_curves(agg: Sequence[dict[str, Any]], target: str) -> tuple[list[dict], list[dict]]:
    """Per size, the best scratch arm and the best transfer arm (by mean): the two envelopes."""
    scratch, transfer = [], []
    for size in sizes_of(agg, target):
        for items, out in (
            (_at(agg, target, size, True), scratch),
            (_at(agg, target, size, False), transfer),
        ):
            b = _best(items)
            if b is not None:
                out.append(b)
    return scratch, transfer


def crossover_by_target(
    agg: Sequence[dict[str, Any]], tolerance: float | None = None
) -> dict[str, dict[str, Any]]:
    """`crossover` per target on the best-scratch vs best-transfer envelopes.

    `inconclusive` lists why no crossover verdict may be stated: any arm of the target that did
    not converge (its number is a lower bound, so it might lead either envelope).
    """
    out = {}
    for target in targets_of(agg):
        scratch, transfer = best_curves(agg, target)
        if not scratch or not transfer:
            missing = "scratch" if not scratch else "transfer"
            out[target] = {
                "reached": None,
                "size": None,
                "train_examples": None,
                "gap_at_largest": None,
                "largest_size": None,
                "per_size": [],
                "note": f"n/a (no {missing} arm)",
            }
            continue
        out[target] = crossover(scratch, transfer, tolerance)
        out[target]["inconclusive"] = target_blockers(agg, target)
        out[target]["arms"] = {
            p["size"]: {"scratch": s["arm"], "transfer": t["arm"]}
            for p, s, t in _zip_sizes(out[target]["per_size"], scratch, transfer)
        }
    return out


def _zip_sizes(per_size: Sequence[dict], scratch: Sequence[dict], transfer: Sequence[dict]):
    s_by = {p["size"]: p for p in scratch}
    t_by = {p["size"]: p for p in transfer}
    return [(p, s_by[p["size"]], t_by[p["size"]]) for p in per_size]


# --------------------------------------------------------------------------- flags


def welch_p_less(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided Welch t-test p-value for mean(a) < mean(b); exact 0/1 when both are constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.var() == 0 and b.var() == 0:
        return 0.0 if a.mean() < b.mean() - TIE else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue)


def welch_p_two_sided(a: Sequence[float], b: Sequence[float]) -> float | None:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return None
    if a.var() == 0 and b.var() == 0:
        return 0.0 if abs(a.mean() - b.mean()) > TIE else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def negative_transfer(
    agg: Sequence[dict[str, Any]], alpha: float = 0.05, unconfirmed_gap: float = 0.02
) -> list[dict[str, Any]]:
    """Transfer arms significantly below scratch at a size: the pretrained start hurt.

    The comparator is the scratch arm of the same model when there is one (the same network,
    only the initialization differs), else the best scratch arm at that size. With n >= 2 on
    both sides: one-sided Welch t-test p < alpha. With a single run on either side no test is
    possible: a gap above `unconfirmed_gap` (2 points) is flagged "unconfirmed (1 run)".
    A pair where either arm did not converge is never a verdict: a gap that would be flagged
    gets the status "inconclusive: ARM not converged at SIZE (raise max_epochs)" (or
    "equal-step budget, not converged") and `verdict: False`.
    """
    flags = []
    for target in targets_of(agg):
        for size in sizes_of(agg, target):
            scratch = _at(agg, target, size, True)
            if not scratch:
                continue
            for t in _at(agg, target, size, False):
                same = [s for s in scratch if s["model"] == t["model"]]
                s = _best(same) or _best(scratch)
                gap = t["mean"] - s["mean"]
                if t["n"] >= 2 and s["n"] >= 2:
                    p = welch_p_less(t["values"], s["values"])
                    status = "significant" if p < alpha else None
                else:
                    p = None
                    status = "unconfirmed (1 run)" if gap < -unconfirmed_gap else None
                if status is None:
                    continue
                reasons = blockers([t, s])
                if reasons:
                    status = "; ".join(reasons)
                flags.append(
                    {
                        "target": target,
                        "size": size,
                        "train_examples": t["train_examples"],
                        "arm": t["arm"],
                        "scratch_arm": s["arm"],
                        "transfer_mean": t["mean"],
                        "scratch_mean": s["mean"],
                        "gap": gap,
                        "p_value": p,
                        "n_transfer": t["n"],
                        "n_scratch": s["n"],
                        "status": status,
                        "verdict": not reasons,
                    }
                )
    return flags


def detect_overfitting(curve: dict[str, Any] | None, margin: float = 0.10) -> dict | None:
    """Validation loss rising while training loss still falls; None when the curve is clean.

    Flags when the last validation loss exceeds its minimum by more than `margin` (relative)
    and the training loss at the end is below its value at that minimum. The overfitting start
    is the step of the validation-loss minimum.
    """
    if not curve:
        return None
    val = [p for p in curve.get("val") or [] if p[1] is not None and not _isnan(p[1])]
    train = [p for p in curve.get("train") or [] if p[1] is not None and not _isnan(p[1])]
    if len(val) < 2 or len(train) < 2:
        return None
    val = sorted(val, key=lambda p: p[0])
    train = sorted(train, key=lambda p: p[0])
    i_min = int(np.argmin([p[1] for p in val]))
    start_step, v_min = val[i_min][0], float(val[i_min][1])
    v_end = float(val[-1][1])
    if i_min == len(val) - 1 or v_end - v_min <= margin * abs(v_min):
        return None
    before = [p for p in train if p[0] <= start_step]
    t_start = float((before[-1] if before else train[0])[1])
    t_end = float(train[-1][1])
    if train[-1][0] <= start_step or t_end >= t_start:
        return None
    return {
        "start_step": int(start_step),
        "val_loss_min": v_min,
        "val_loss_end": v_end,
        "val_loss_rise": (v_end - v_min) / abs(v_min) if v_min else math.inf,
        "train_loss_at_start": t_start,
        "train_loss_end": t_end,
    }


def overfitting_flags(
    rows: Sequence[dict[str, Any]], margin: float = 0.10
) -> tuple[list[dict], list[dict]]:
    """Per-cell overfitting flags and their summary per (target, arm, size): k of n cells."""
    cells, groups = [], defaultdict(lambda: {"flagged": 0, "n": 0, "start_steps": []})
    for r in rows:
        g = groups[(r["target"], r["arm"], r["size"])]
        g["n"] += 1
        g["train_examples"] = r["train_examples"]
        f = detect_overfitting(r.get("curve"), margin)
        if f is None:
            continue
        g["flagged"] += 1
        g["start_steps"].append(f["start_step"])
        cells.append(
            {
                "cell": r["cell"],
                "target": r["target"],
                "arm": r["arm"],
                "size": r["size"],
                "seed": r.get("seed"),
                "fold": r.get("fold"),
                **f,
            }
        )
    summary = [
        {
            "target": t,
            "arm": a,
            "size": s,
            **g,
            "median_start_step": float(np.median(g["start_steps"])),
        }
        for (t, a, s), g in groups.items()
        if g["flagged"]
    ]
    summary.sort(key=lambda g: (g["target"], g["train_examples"], g["arm"]))
    return cells, summary
