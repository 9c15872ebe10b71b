"""Learning curves: mean validation accuracy per step, is scratch still improving, head start."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from jtl.report.aggregate import _at, _best, _isnan, arms_of, sizes_of, targets_of


def mean_curve(
    rows: Sequence[dict[str, Any]], split: str = "val", column: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Mean over cells of one curve column (2 = accuracy) per step, over cells that have it."""
    by_step: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        for p in (r.get("curve") or {}).get(split) or []:
            if p[column] is not None and not _isnan(p[column]):
                by_step[p[0]].append(float(p[column]))
    steps = sorted(by_step)
    return np.array(steps, float), np.array([np.mean(by_step[s]) for s in steps], float)


def still_improving(
    steps: Sequence[float], values: Sequence[float], frac: float = 0.25, min_gain: float = 0.005
) -> dict[str, Any]:
    """Is the curve still rising at the end? Linear fit over the last `frac` of the steps.

    `gain` is the fitted rise over that window (accuracy units); improving when > `min_gain`
    (0.5 points): then a longer schedule would likely have helped this arm.
    """
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    if len(steps) < 2:
        return {"improving": None, "gain": None, "slope_per_1k_steps": None, "window": None}
    lo = (1.0 - frac) * steps[-1]
    mask = steps >= lo
    if mask.sum() < 2:
        mask = np.zeros_like(mask)
        mask[-2:] = True
    x, y = steps[mask], values[mask]
    slope = float(np.polyfit(x, y, 1)[0]) if x[-1] > x[0] else 0.0
    gain = slope * float(steps[-1] - min(lo, x[0]))
    return {
        "improving": gain > min_gain,
        "gain": gain,
        "slope_per_1k_steps": slope * 1000.0,
        "window": [float(x[0]), float(steps[-1])],
    }


def learning_curves(
    rows: Sequence[dict[str, Any]], agg: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Mean val-accuracy curves per arm at the smallest and largest size of each target.

    Also: whether the best scratch arm was still improving at the end, and the fine-tune head
    start (best transfer arm's val accuracy at its first evaluation minus scratch's).
    """
    out = []
    for target in targets_of(agg):
        sizes = sizes_of(agg, target)
        for size in dict.fromkeys([sizes[0], sizes[-1]]):
            curves = {}
            for arm in arms_of(_at(agg, target, size)):
                cells = [
                    r
                    for r in rows
                    if r["target"] == target and r["size"] == size and r["arm"] == arm
                ]
                steps, acc = mean_curve(cells)
                if len(steps):
                    curves[arm] = {"steps": steps.tolist(), "val_accuracy": acc.tolist()}
            s = _best([a for a in _at(agg, target, size, True) if a["arm"] in curves])
            t = _best([a for a in _at(agg, target, size, False) if a["arm"] in curves])
            entry: dict[str, Any] = {
                "target": target,
                "size": size,
                "curves": curves,
                "scratch_arm": s and s["arm"],
                "scratch_arms": [a["arm"] for a in _at(agg, target, size, True)],
                "transfer_arm": t and t["arm"],
                "scratch_improving": None,
                "head_start": None,
            }
            if s is not None:
                c = curves[s["arm"]]
                entry["scratch_improving"] = still_improving(c["steps"], c["val_accuracy"])
            if s is not None and t is not None:
                cs, ct = curves[s["arm"]], curves[t["arm"]]
                entry["head_start"] = {
                    "transfer_first": ct["val_accuracy"][0],
                    "transfer_step": ct["steps"][0],
                    "scratch_first": cs["val_accuracy"][0],
                    "scratch_step": cs["steps"][0],
                    "points": 100 * (ct["val_accuracy"][0] - cs["val_accuracy"][0]),
                }
            out.append(entry)
    return out
