"""Validating the advisor without leakage, against honest baselines, with bootstrap intervals.

Cross-validation leaves one group out (a target, a source, or a target's base data set) and
fits on the rest: no held-out group's results ever reach its own prediction, and the ridge
penalty and interval are chosen inside the training rows (jtl.advisor.model.fit). On the
out-of-fold predictions it reports, each with a 95 % bootstrap interval over targets (the
unit the advice generalises over):
- Kendall tau and weighted tau (scipy.stats.weightedtau) of predicted against measured gain,
  ranking sources per (target, size, arm), and arms per (source, target, size);
- Pearson r over every (triple, arm);
- sign accuracy: predicted "helps" (interval above 0) against measured "helps significantly";
- top-1 regret: points lost by following the advice instead of the best measured arm, against
  the fixed policies (always one arm), each single score alone, and the static ranker.
Beside them, the measurement's own reproducibility: the same rankings of seed 0's gains against
seed 1's. No predictor can rank the measured gains much better than the measurement ranks
itself, so this is the yardstick for the tau goal.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from jtl.advisor import model as model_lib
from jtl.advisor.table import SCRATCH, transfer_arms

PROBE = "linear_probe"  # the arm every triple of the benchmark measured next to scratch

Entry = dict[str, Any]
SCHEMES = {
    "leave-one-target-out": lambda e: e["target"],
    "leave-one-source-out": lambda e: e["source"],
    "leave-one-base-data-set-out": lambda e: str(e.get("dataset") or e["target"]).split("|")[0],
}
BOOTSTRAP = 2000


def cross_validate(
    table: Sequence[Entry],
    group_of: Callable[[Entry], str],
    names: Sequence[str] = model_lib.ADVISOR,
    fit: Callable[..., dict[str, Any]] = model_lib.fit,
) -> list[dict[str, dict[str, float]]]:
    """Out-of-fold predictions per entry: `{"pred": arm -> gain, "interval": arm -> half}`."""
    arms = transfer_arms(table)
    groups = [group_of(e) for e in table]
    out: list[dict[str, dict[str, float]]] = [{"pred": {}, "interval": {}} for _ in table]
    for g in dict.fromkeys(groups):
        train = [e for e, h in zip(table, groups, strict=True) if h != g]
        held = [i for i, h in enumerate(groups) if h == g]
        m = fit(train, arms, names)
        preds = model_lib.predict(m, [table[i] for i in held])
        for arm, values in preds.items():
            for i, v in zip(held, values, strict=True):
                if arm in table[i]["gain"]:
                    out[i]["pred"][arm] = float(v)
                    out[i]["interval"][arm] = m["arms"][arm]["interval"]
    return out


# ----------------------------------------------------------------------------- decisions


def choose(pred: dict[str, float]) -> str:
    """The recommended arm: the highest predicted gain, or scratch when none is above 0."""
    best = max(pred, key=pred.get, default=None)
    return best if best is not None and pred[best] > 0 else SCRATCH


def _accuracy(e: Entry, arm: str) -> float:
    return e["scratch"]["mean"] if arm == SCRATCH else e["arms"][arm]["mean"]


def regret(e: Entry, arm: str) -> float:
    """Points lost by training `arm` instead of the best measured arm of this triple."""
    best = max([e["scratch"]["mean"], *(a["mean"] for a in e["arms"].values())])
    return best - _accuracy(e, arm)


# ----------------------------------------------------------------------------- metrics


def _tau(x: Sequence[float], y: Sequence[float], weighted: bool) -> float:
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if weighted:  # scipy's default (as the transferability literature reports it): the
            # hyperbolic weights average the rankings by measured and by predicted gain
            return float(stats.weightedtau(y, x).statistic)
        return float(stats.kendalltau(x, y).statistic)


def ranking_groups(table: Sequence[Entry], oof: Sequence[dict], by: str) -> list[dict[str, Any]]:
    """Groups of (predicted, measured) gains to rank: sources per (target, size, arm), or arms
    (scratch = 0) per (source, target, size). Each group keeps its target for the bootstrap."""
    groups: dict[tuple, dict[str, Any]] = defaultdict(lambda: {"pred": [], "true": []})
    for e, o in zip(table, oof, strict=True):
        if by == "sources":
            for arm, p in o["pred"].items():
                g = groups[(e["target"], e["size"], arm)]
                g["pred"].append(p)
                g["true"].append(e["gain"][arm])
                g["target"] = e["target"]
        else:
            g = groups[(e["source"], e["target"], e["size"])]
            g["pred"] = [0.0, *o["pred"].values()]
            g["true"] = [0.0, *(e["gain"][a] for a in o["pred"])]
            g["target"] = e["target"]
    return list(groups.values())


def _bootstrap(
    targets: Sequence[str], stat: Callable[[np.ndarray], float], seed: int = 0
) -> list[float]:
    """95 % percentile interval of `stat(indices)` over resamples of whole targets."""
    names = sorted(set(targets))
    by_target = {t: np.flatnonzero(np.asarray(targets) == t) for t in names}
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(BOOTSTRAP):
        pick = rng.choice(len(names), len(names))
        idx = np.concatenate([by_target[names[k]] for k in pick])
        v = stat(idx)
        if math.isfinite(v):
            values.append(v)
    if not values:
        return [math.nan, math.nan]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def _with_ci(values: Sequence[float], targets: Sequence[str]) -> dict[str, Any]:
    v = np.asarray(values, float)

    def mean(idx: np.ndarray) -> float:
        sel = v[idx]
        sel = sel[np.isfinite(sel)]
        return float(sel.mean()) if len(sel) else math.nan

    return {"value": mean(np.arange(len(v))), "ci": _bootstrap(targets, mean), "n": len(v)}


def _pearson(p: np.ndarray, t: np.ndarray, targets: Sequence[str]) -> dict[str, Any]:
    def r(idx: np.ndarray) -> float:
        if len(set(p[idx])) < 2 or len(set(t[idx])) < 2:
            return math.nan
        return float(np.corrcoef(p[idx], t[idx])[0, 1])

    return {"value": r(np.arange(len(p))), "ci": _bootstrap(targets, r), "n": len(p)}


def ranking_taus(table: Sequence[Entry], oof: Sequence[dict]) -> dict[str, Any]:
    """Kendall and weighted tau, ranking sources per (target, size, arm) and arms per triple."""
    out: dict[str, Any] = {}
    for by in ("sources", "arms"):
        groups = ranking_groups(table, oof, by)
        tg = [g["target"] for g in groups]
        for weighted in (False, True):
            key = f"{'weighted_tau' if weighted else 'kendall_tau'}_{by}"
            out[key] = _with_ci([_tau(g["pred"], g["true"], weighted) for g in groups], tg)
    return out


def metrics(table: Sequence[Entry], oof: Sequence[dict]) -> dict[str, Any]:
    """Every validation number of one set of out-of-fold predictions."""
    out: dict[str, Any] = ranking_taus(table, oof)
    pairs = [(p, e["gain"][a], e, a, o) for e, o in zip(table, oof, strict=True)
             for a, p in o["pred"].items()]  # fmt: skip
    tp = [e["target"] for *_, e, _, _ in pairs]
    pred = np.array([p for p, *_ in pairs])
    true = np.array([t for _, t, *_ in pairs])
    out["pearson"] = _pearson(pred, true, tp)
    helps = [p - o["interval"][a] > 0 for p, _, _, a, o in pairs]
    sig = [e["significant"][a] for _, _, e, a, _ in pairs]
    out["sign_accuracy"] = _with_ci([float(h == s) for h, s in zip(helps, sig, strict=True)], tp)
    out["sign_accuracy"]["base_rate_significant"] = float(np.mean(sig)) if sig else math.nan
    inside = [abs(t - p) <= o["interval"][a] for p, t, _, a, o in pairs]
    out["interval_coverage"] = _with_ci([float(v) for v in inside], tp)
    return out


def _value(summary: dict[str, Any], k: int) -> float:
    """The k-th seed's value of an arm (entries saved before `seeds` was recorded list their
    values in seed order: the study orders a group's runs by seed)."""
    seeds = summary.get("seeds")
    return summary["values"][seeds.index(sorted(seeds)[k]) if seeds else k]


def _per_seed(e: Entry, k: int) -> Entry:
    """`e` with its gains taken from one seed's runs (the k-th seed of each arm and scratch)."""
    base = _value(e["scratch"], k)
    return {**e, "gain": {a: _value(s, k) - base for a, s in e["arms"].items()}}


def reproducibility(table: Sequence[Entry]) -> dict[str, Any]:
    """Seed 0's gains as the "prediction" of seed 1's, ranked as the advisor's are.

    Why: with 2 seeds the measured ranking of sources is itself noisy; how well one seed ranks
    the other bounds what any predictor can reach. `implied_ceiling_kendall_tau_sources`
    converts the seed-vs-seed Kendall tau to the tau a perfect predictor of the true gain would
    reach against the 2-seed mean, under a normal model (Greiner's tau = 2/pi asin(rho), and
    Spearman-Brown for the mean of 2 seeds); an estimate, not a measurement.
    """
    two = [e for e in table
           if e["scratch"]["n"] == 2 and all(s["n"] == 2 for s in e["arms"].values())]  # fmt: skip
    if not two:
        return {"entries": 0}
    seed1 = [_per_seed(e, 1) for e in two]
    pred0 = [{"pred": _per_seed(e, 0)["gain"]} for e in two]
    out: dict[str, Any] = {"entries": len(two), **ranking_taus(seed1, pred0)}
    tau = out["kendall_tau_sources"]["value"]
    rho = math.sin(math.pi * tau / 2) if math.isfinite(tau) else math.nan
    rho2 = 2 * rho / (1 + rho) if rho > 0 else math.nan
    out["implied_ceiling_kendall_tau_sources"] = (
        2 / math.pi * math.asin(math.sqrt(rho2)) if math.isfinite(rho2) else math.nan
    )
    return out


def regret_table(
    table: Sequence[Entry], choices: dict[str, Sequence[str]]
) -> dict[str, dict[str, Any]]:
    """Mean top-1 regret of each policy (a choice per entry), with bootstrap intervals, and the
    difference of each policy to the best fixed policy (paired over the same resamples)."""
    targets = [e["target"] for e in table]
    regrets = {k: np.array([regret(e, a) for e, a in zip(table, c, strict=True)])
               for k, c in choices.items()}  # fmt: skip
    fixed = [k for k in regrets if k.startswith("always ")]
    best_fixed = min(fixed, key=lambda k: regrets[k].mean()) if fixed else None
    out = {}
    for k, r in regrets.items():
        row = _with_ci(r, targets)
        row["best_fixed"] = best_fixed
        if best_fixed is not None:
            d = r - regrets[best_fixed]
            row["minus_best_fixed"] = _with_ci(d, targets)
        out[k] = row
    return out


def _probe_or_scratch_regret(
    table: Sequence[Entry], oof: Sequence[dict], single: dict[str, Sequence[dict]]
) -> dict[str, dict[str, Any]]:
    """Regret of the decision every triple measured, "linear probe or scratch?", on all of them:
    each policy chooses between those two arms only (the advisor by its probe prediction;
    `single`: each single score's out-of-fold predictions, by label)."""
    if not all(PROBE in e["arms"] for e in table):
        return {}
    two = [{**e, "arms": {PROBE: e["arms"][PROBE]}} for e in table]

    def pick(preds: Sequence[dict]) -> list[str]:
        return [choose({PROBE: o["pred"][PROBE]}) for o in preds]

    choices = {"advisor": pick(oof), f"always {SCRATCH}": [SCRATCH] * len(two)}
    choices[f"always {PROBE}"] = [PROBE] * len(two)
    for label, preds in single.items():
        choices[label] = pick(preds)
    choices["oracle"] = [min((SCRATCH, PROBE), key=lambda a, e=e: regret(e, a)) for e in two]
    return regret_table(two, choices)


def validate(table: Sequence[Entry]) -> dict[str, Any]:
    """The whole validation: per CV scheme, the advisor's metrics and the regret table."""
    arms = transfer_arms(table)
    # Regret compares whole policies, so it is taken over the triples that measured every arm
    # (a probe-only part of the benchmark has no "always finetune_full" to follow).
    complete = [i for i, e in enumerate(table) if set(e["arms"]) == set(arms)]
    result: dict[str, Any] = {
        "entries": len(table),
        "arms": arms,
        "regret_entries": len(complete),
        "reproducibility": reproducibility(table),
        "schemes": {},
    }
    for scheme, group_of in SCHEMES.items():
        oof = cross_validate(table, group_of)
        choices: dict[str, list[str]] = {"advisor": [choose(o["pred"]) for o in oof]}
        for arm in [SCRATCH, *arms]:
            choices[f"always {arm}"] = [arm] * len(table)
        single = {
            label: cross_validate(table, group_of, names)
            for label, names in model_lib.SINGLE_SCORES.items()
        }
        for label, base in single.items():
            choices[label] = [choose(o["pred"]) for o in base]
        choices["oracle"] = [
            min([SCRATCH, *e["arms"]], key=lambda a, e=e: regret(e, a)) for e in table
        ]
        result["schemes"][scheme] = {
            "metrics": metrics(table, oof),
            "regret": regret_table(
                [table[i] for i in complete],
                {k: [c[i] for i in complete] for k, c in choices.items()},
            ),
            "regret_probe_or_scratch": _probe_or_scratch_regret(table, oof, single),
            "predictions": [
                {
                    "source": e["source"],
                    "target": e["target"],
                    "size": e["size"],
                    "pred": o["pred"],
                    "interval": o["interval"],
                    "gain": e["gain"],
                    "choice": c,
                }
                for e, o, c in zip(table, oof, choices["advisor"], strict=True)
            ],
        }
    return result
