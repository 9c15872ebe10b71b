"""Transferability scores (`jtl advise`) next to the measured gain, and Spearman's rho."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from jtl.report.aggregate import _at, _best, sizes_of

SCORES = ("logme", "leep", "nce", "hscore", "knn_accuracy")


EXACT_MAX_N = 7  # two-sided permutation p-value (all n! orderings) up to this many pairs


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Spearman rank correlation with its p-value and n; a note instead when undefined."""
    n = len(x)
    if n < 3:
        return {"rho": None, "p": None, "n": n, "note": "n/a (need >= 3 pairs)"}
    if len(set(x)) < 2 or len(set(y)) < 2:
        return {"rho": None, "p": None, "n": n, "note": "n/a (constant input)"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(x, y)
    rho, p = float(res.statistic), float(res.pvalue)
    if n <= EXACT_MAX_N:  # the t approximation says p = 0 for rho = 1 at n = 3; exact is 1/3
        rx, ry = stats.rankdata(x), stats.rankdata(y)
        perms = np.array(list(itertools.permutations(ry)))
        rhos = np.array([np.corrcoef(rx, q)[0, 1] for q in perms])
        p = float(np.mean(np.abs(rhos) >= abs(rho) - 1e-12))
    return {"rho": rho, "p": p, "n": n, "note": None}


def advise_vs_gain(
    advise: Sequence[dict[str, Any]], agg: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Transferability scores next to the measured gain, and how well each score ranks it.

    Gain of a (source, target) pair at a size = best transfer arm from that source minus the best
    scratch arm; reported as the mean over sizes and at the smallest size. Spearman's rho of
    each score vs each gain, across pairs with a measured gain.
    """
    pairs = []
    for adv in advise:
        src, target = adv["source"], adv["target"]
        gains = []
        # A record scored at one size (jtl.study.advise_scores) is compared at that size.
        for size in [adv["size"]] if adv.get("size") else sizes_of(agg, target):
            s = _best(_at(agg, target, size, True))
            t = _best([a for a in _at(agg, target, size, False) if a["source"] == src])
            if s is not None and t is not None:
                gains.append((size, t["mean"] - s["mean"], t["arm"]))
        pairs.append(
            {
                **{k: adv.get(k) for k in ("source", "target", "size", "recommendation", *SCORES)},
                "gain_mean": float(np.mean([g for _, g, _ in gains])) if gains else None,
                "gain_smallest": gains[0][1] if gains else None,
                "smallest_size": gains[0][0] if gains else None,
                "sizes": len(gains),
            }
        )
    correlations: dict[str, dict[str, Any]] = {}
    for score in SCORES:
        correlations[score] = {}
        for gain in ("gain_mean", "gain_smallest"):
            ok = [p for p in pairs if _finite(p.get(score)) and _finite(p[gain])]
            correlations[score][gain] = spearman([p[score] for p in ok], [p[gain] for p in ok])
    return {"pairs": pairs, "spearman": correlations}


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)
