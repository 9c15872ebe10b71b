"""The benchmark table: one row per (source, target, size) with its scores and measured gains.

Why a table of its own: the advisor is fitted and validated on *measured outcomes*, so it reads
the finished studies' `results.json` (rows of cells and the per-size transferability records of
`jtl.study.advise_scores`) and nothing else. Gains are in points of test accuracy over the best
scratch arm at the same target and size (scratch is shared by every source, also across study
directories: a probe-only part finds its scratch rows in the main part).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from jtl.runtime.errors import MissingFileError

SCRATCH = "scratch"
ALPHA = 0.05  # one-sided Welch test: "transfer helps significantly"


def read_studies(paths: Iterable[str | Path]) -> tuple[list[dict], list[dict]]:
    """(rows, advise records) of every study directory (or results.json) given."""
    rows, records = [], []
    for p in paths:
        p = Path(p)
        f = p / "results.json" if p.is_dir() else p
        if not f.exists():
            raise MissingFileError(
                f"{f}: no results.json", "run the study, or its report with --only report"
            )
        data = json.loads(f.read_text())
        rows += data.get("rows") or []
        for rec in (data.get("study") or {}).get("advise") or []:
            records.append({**_source_facts(f.parent, rec["source"]), **rec})
    return rows, records


def _source_facts(root: Path, source: str) -> dict[str, Any]:
    """A trained source's data set and accuracy from its run (for records scored before
    jtl.advisor.advise recorded them); empty for imports and sources trained elsewhere."""
    summary = root / "sources" / source / "summary.json"
    if not summary.exists():
        return {}
    s = json.loads(summary.read_text())
    return {"source_dataset": s.get("dataset"), "source_accuracy": s.get("test_accuracy")}


def _is_scratch(row: dict[str, Any]) -> bool:
    return row.get("source") in (None, "none") or row.get("strategy") == SCRATCH


def _summary(
    values: Sequence[float], converged: Sequence[bool], seeds: Sequence[Any] = ()
) -> dict[str, Any]:
    v = np.asarray(values, float)
    out = {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "n": len(v),
        "values": [float(x) for x in v],
        "converged": bool(all(converged)),
    }
    if seeds and None not in seeds:  # which seed each value is (seed-vs-seed agreement)
        out["seeds"] = [int(s) for s in seeds]
    return out


def arm_name(label: str) -> str:
    """An arm's name without its "@source": a study with several sources labels its arms
    "lp_ft@mnist" and its scratch arm "scratch@none", one with a single source "lp_ft" and
    "scratch". Why: one arm must have one name, or a later phase's scratch rows would stand
    beside an earlier phase's instead of replacing them, and the best of both (on test) win.
    Arm variants keep their own label."""
    return str(label).split("@")[0]


def _arms(rows: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """(target, size, source) -> arm -> summary over seeds and folds (100 x accuracy)."""
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        source = "none" if _is_scratch(r) else r["source"]
        arm = arm_name(r["arm"])
        groups[(r["target"], r["size"], source)][arm].append(r)
    return {
        key: {
            arm: _summary(
                [100.0 * float(r["test_accuracy"]) for r in runs],
                [bool(r.get("converged", True)) for r in runs],
                [r.get("seed") for r in runs],
            )
            for arm, runs in arms.items()
        }
        for key, arms in groups.items()
    }


def p_greater(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided Welch p-value for mean(a) > mean(b) (exact 0/1 when both are constant)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return 1.0
    if a.var() == 0 and b.var() == 0:
        return 0.0 if a.mean() > b.mean() + 1e-9 else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)


def gain_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """95 % Welch interval of mean(a) - mean(b) (infinite with fewer than 2 runs a side)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return -math.inf, math.inf
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return d, d
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    h = float(stats.t.ppf(0.975, df)) * se
    return d - h, d + h


# An entry's measured fields; the rest of it is the advise record it was built from.
MEASURED = ("scratch", "arms", "gain", "gain_ci", "significant", "converged")


def read_tables(paths: Iterable[str | Path]) -> list[dict]:
    """The entries of earlier fits' tables (`validation.json` of `jtl advisor fit --report`)."""
    out: list[dict] = []
    for p in paths:
        f = Path(p) / "validation.json" if Path(p).is_dir() else Path(p)
        if not f.exists():
            raise MissingFileError(
                f"{f}: no validation.json", "give the --report directory of an earlier fit"
            )
        out += json.loads(f.read_text())["table"]
    return out


def _prior_arms(prior: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """`_arms`' mapping rebuilt from a saved table's summaries (its best scratch arm only)."""
    arms: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for e in prior:
        scratch = {k: v for k, v in e["scratch"].items() if k != "arm"}
        arms[(e["target"], e["size"], "none")][arm_name(e["scratch"]["arm"])] = scratch
        arms[(e["target"], e["size"], e["source"])].update(e["arms"])
    return arms


def build(
    rows: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    prior: Sequence[dict[str, Any]] = (),
) -> list[dict]:
    """One entry per advise record whose target and size have scratch and transfer rows.

    Each entry: the record's identity and scores, `scratch` (the best scratch arm's summary),
    `arms` (transfer arm -> summary), `gain` (arm -> points over scratch), `gain_ci`,
    `significant` (arm -> one-sided Welch p < ALPHA) and `converged` (every run of the arm and
    of scratch converged).

    `prior`: a saved table whose measured summaries and records stand in for runs no longer on
    disk (a benchmark grows phase by phase); `rows` and `records` add to it and win on overlap.
    """
    arms = _prior_arms(prior)
    for key, measured in _arms(rows).items():
        arms[key] = {**arms.get(key, {}), **measured}
    keyed = {
        (r.get("source"), r.get("target"), r.get("size")): r
        for r in [*({k: v for k, v in e.items() if k not in MEASURED} for e in prior), *records]
    }
    out = []
    for rec in keyed.values():
        if "size" not in rec:
            continue  # a per-pair record from before per-size scoring
        target, size, source = rec["target"], rec["size"], rec["source"]
        scratch_arms = arms.get((target, size, "none"), {})
        transfer = arms.get((target, size, source), {})
        if not scratch_arms or not transfer:
            continue
        best_name = max(scratch_arms, key=lambda a: scratch_arms[a]["mean"])
        scratch = {"arm": best_name, **scratch_arms[best_name]}
        entry = {
            **{k: v for k, v in rec.items() if k not in ("reasons", "recommendation")},
            "scratch": scratch,
            "arms": transfer,
            "gain": {},
            "gain_ci": {},
            "significant": {},
            "converged": {},
        }
        for arm, s in transfer.items():
            entry["gain"][arm] = s["mean"] - scratch["mean"]
            entry["gain_ci"][arm] = list(gain_interval(s["values"], scratch["values"]))
            entry["significant"][arm] = p_greater(s["values"], scratch["values"]) < ALPHA
            entry["converged"][arm] = s["converged"] and scratch["converged"]
        out.append(entry)
    return out


def transfer_arms(table: Sequence[dict[str, Any]]) -> list[str]:
    """Every transfer arm measured in the table, in first-seen order."""
    return list(dict.fromkeys(arm for e in table for arm in e["arms"]))
