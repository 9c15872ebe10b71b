"""Cells reduced over seeds and folds: per (target, arm, size), per arm, and lookups on them.

An aggregate is one (target, arm, size) with mean, std (ddof=1), sem, n, the raw values and the
mean cost; the helpers list targets, sizes and arms and pick the best arm at a size.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

SCRATCH = "scratch"
TIE = 1e-9


def is_scratch(row: dict[str, Any]) -> bool:
    """A row (or aggregate) is the baseline when it trains from scratch, i.e. has no source."""
    return row.get("strategy") == SCRATCH or row.get("source") in (None, "none")


# Per-run cost fields of a result row (jtl.evaluation.costs.COST_FIELDS; not imported: the
# report reads rows only) that aggregate and the cost table average.
RUN_COST_FIELDS = (
    "trainable_params",
    "flops_per_step",
    "opt_state_bytes",
    "checkpoint_bytes",
    "peak_host_memory_bytes",
)


def _mean_or_none(values: Sequence[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and not _isnan(v)]
    return float(np.mean(vals)) if vals else None


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def aggregate(rows: Sequence[dict[str, Any]], metric: str = "test_accuracy") -> list[dict]:
    """Reduces cells over seeds and folds per (target, arm, size): mean, std (ddof=1), n, cost.

    Seeds and folds are pooled: both are replicates of the same experimental condition.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["target"], r["arm"], r["size"])].append(r)
    out = []
    for (target, arm, size), runs in groups.items():
        values = np.array([float(r[metric]) for r in runs])
        n = len(values)
        std = float(values.std(ddof=1)) if n > 1 else 0.0
        first = runs[0]
        out.append(
            {
                "target": target,
                "arm": arm,
                "size": size,
                "source": first.get("source"),
                "strategy": first.get("strategy"),
                "model": first.get("model"),
                "scratch": is_scratch(first),
                "train_examples": float(np.mean([r["train_examples"] for r in runs])),
                "per_class": _mean_or_none([r.get("per_class") for r in runs]),
                "n": n,
                "mean": float(values.mean()),
                "std": std,
                "sem": std / math.sqrt(n),
                "values": [float(v) for v in values],
                "wall_time_s": _mean_or_none([r.get("wall_time_s") for r in runs]),
                "images_seen": _mean_or_none([r.get("images_seen") for r in runs]),
                "train_flops": _mean_or_none([r.get("train_flops") for r in runs]),
                "steps": _mean_or_none([r.get("steps") for r in runs]),
                **{k: _mean_or_none([r.get(k) for r in runs]) for k in RUN_COST_FIELDS},
                # A verdict needs every replicate converged (jtl.report.convergence).
                "converged": all(bool(r.get("converged")) for r in runs),
                "not_converged": sum(1 for r in runs if not r.get("converged")),
                "cap_doubled": sum(1 for r in runs if r.get("cap_doublings")),
                "budget": _budget(runs),
                "epochs_run": _mean_or_none([r.get("epochs_run") for r in runs]),
                # Choices made (a later seed that reused its tuning seeds' choice is no new one).
                "chosen": [r["chosen"] for r in runs if r.get("chosen") and not r.get("tuned_on")],
                "sweep_trials": _mean_or_none([r.get("sweep_trials") for r in runs]),
                "sweep_spread": _mean_or_none([r.get("sweep_spread") for r in runs]),
                "probe_grid": _mean_or_none([r.get("probe_grid") for r in runs]),
            }
        )
    return sorted(out, key=lambda a: (a["target"], a["train_examples"], _arm_key(a)))


def _budget(runs: Sequence[dict[str, Any]]) -> str | None:
    kinds = {r.get("budget") for r in runs}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _with_tuning(r: dict[str, Any], key: str) -> Any:
    """A cell's cost including its whole sweep (its own cost when it was not swept)."""
    v = r.get(f"tuning_{key}")
    return r.get(key) if v is None and not r.get("sweep_trials") else v


def _arm_key(a: dict[str, Any]) -> tuple:
    return (not a["scratch"], a["arm"])


def targets_of(agg: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({a["target"] for a in agg})


def sizes_of(agg: Sequence[dict[str, Any]], target: str) -> list[str]:
    """Size labels of a target, ordered by (mean) number of training examples."""
    n: dict[str, list[float]] = defaultdict(list)
    for a in agg:
        if a["target"] == target:
            n[a["size"]].append(a["train_examples"])
    return sorted(n, key=lambda s: (float(np.mean(n[s])), s))


def arms_of(agg: Sequence[dict[str, Any]], target: str | None = None) -> list[str]:
    """Arm names, scratch arms first, then transfer arms, each alphabetically."""
    keys = {(not a["scratch"], a["arm"]) for a in agg if target is None or a["target"] == target}
    return [arm for _, arm in sorted(keys)]


def _at(agg: Sequence[dict], target: str, size: str, scratch: bool | None = None) -> list[dict]:
    return [
        a
        for a in agg
        if a["target"] == target
        and a["size"] == size
        and (scratch is None or a["scratch"] == scratch)
    ]


def _best(items: Sequence[dict]) -> dict | None:
    return max(items, key=lambda a: (a["mean"], -a["std"], a["arm"])) if items else None


def cost_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean cost per cell of each arm (over all its targets and sizes) and its total wall time."""
    by_arm: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_arm[r["arm"]].append(r)
    out = []
    for arm, runs in by_arm.items():
        out.append(
            {
                "arm": arm,
                "scratch": is_scratch(runs[0]),
                "cells": len(runs),
                "wall_time_s": _mean_or_none([r.get("wall_time_s") for r in runs]),
                "images_seen": _mean_or_none([r.get("images_seen") for r in runs]),
                "train_flops": _mean_or_none([r.get("train_flops") for r in runs]),
                "total_wall_time_s": float(sum(r.get("wall_time_s") or 0.0 for r in runs)),
                **{k: _mean_or_none([r.get(k) for r in runs]) for k in RUN_COST_FIELDS},
                "trials": _mean_or_none([r.get("sweep_trials") or 1 for r in runs]),
                "tuning_wall_time_s": _mean_or_none([_with_tuning(r, "wall_time_s") for r in runs]),
                "tuning_images_seen": _mean_or_none([_with_tuning(r, "images_seen") for r in runs]),
                "tuning_train_flops": _mean_or_none([_with_tuning(r, "train_flops") for r in runs]),
                "total_tuning_wall_time_s": float(
                    sum(_with_tuning(r, "wall_time_s") or 0.0 for r in runs)
                ),
            }
        )
    return sorted(out, key=_arm_key)
