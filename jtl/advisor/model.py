"""The advisor's predictor: per transfer arm, a ridge regression of the gain over scratch.

Why this shape: it must be small and inspectable (a user can read which scores drive the
advice: the coefficients are in the shipped JSON), fit on ~100-200 benchmark rows without
over-fitting, and give intervals. Inputs are only what exists before training on the target:
transferability scores of the source's features on (a sample of) the target's labelled
training examples, the same scores for a random-init network of the same architecture (the
baseline transfer must beat), the source's own accuracy, the size per class and the number of
classes. Features are standardized; the ridge penalty is chosen by leave-one-target-out
cross-validation *inside* the rows it is fitted on, and the interval is the 90 % quantile of
those inner residuals, so nothing is tuned on a held-out fold (jtl.advisor.validation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Record = dict[str, Any]
ALPHAS = (0.1, 1.0, 10.0, 100.0)
COVERAGE = 0.9  # the predicted interval's nominal coverage
# How far outside the benchmark's range of a feature (in units of that range) a query may lie
# before the advisor says it cannot answer.
RANGE_SLACK = 0.1


def _gap(key: str) -> Callable[[Record], float]:
    return lambda r: _num(r.get(key)) - _num((r.get("random_init") or {}).get(key))


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and v is not None else math.nan


# name -> how to compute it from a record (jtl.study.advise_scores / jtl.advisor.advise.advise).
FEATURES: dict[str, Callable[[Record], float]] = {
    "probe_gap": _gap("probe_accuracy"),
    "knn_gap": _gap("knn_accuracy"),
    "logme_gap": _gap("logme"),
    "leep_gap": _gap("leep"),
    "nce_gap": _gap("nce"),
    "probe_accuracy": lambda r: _num(r.get("probe_accuracy")),
    "knn_accuracy": lambda r: _num(r.get("knn_accuracy")),
    "source_accuracy": lambda r: _num(r.get("source_accuracy")),
    "log2_per_class": lambda r: math.log2(max(_num(r.get("per_class")), 1.0)),
    "log2_classes": lambda r: math.log2(max(_num(r.get("num_classes")), 2.0)),
    # The gain of good features shrinks as data grows (He et al. 2018): their interaction.
    "probe_gap_x_log2_per_class": lambda r: (
        FEATURES["probe_gap"](r) * FEATURES["log2_per_class"](r)
    ),
}
# The advisor's feature set, fixed before any benchmark result was seen. The baselines of the
# validation are the same model on one score (plus the size), or the source's accuracy alone.
ADVISOR = (
    "probe_gap",
    "knn_gap",
    "logme_gap",
    "leep_gap",
    "nce_gap",
    "probe_accuracy",
    "source_accuracy",
    "log2_per_class",
    "log2_classes",
    "probe_gap_x_log2_per_class",
)
SINGLE_SCORES = {
    "LogME alone": ("logme_gap", "log2_per_class"),
    "k-NN alone": ("knn_accuracy", "log2_per_class"),
    "source accuracy (static)": ("source_accuracy",),
}


def feature_matrix(records: Sequence[Record], names: Sequence[str]) -> np.ndarray:
    return np.array([[FEATURES[n](r) for n in names] for r in records], float).reshape(
        len(records), len(names)
    )


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Weights `[intercept, w...]` of ridge regression (the intercept is not penalized)."""
    a = np.hstack([np.ones((len(x), 1)), x])
    pen = alpha * np.eye(a.shape[1])
    pen[0, 0] = 0.0
    return np.linalg.solve(a.T @ a + pen, a.T @ y)


def _predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return w[0] + x @ w[1:]


class _Scaler:
    """Standardization with missing values imputed by the training mean (recorded)."""

    def __init__(self, x: np.ndarray) -> None:
        self.mean = np.nanmean(x, axis=0) if len(x) else np.zeros(x.shape[1])
        self.mean = np.where(np.isfinite(self.mean), self.mean, 0.0)
        filled = np.where(np.isfinite(x), x, self.mean)
        self.std = filled.std(axis=0) if len(x) else np.ones(x.shape[1])
        self.std = np.where(self.std > 1e-12, self.std, 1.0)
        self.lo, self.hi = filled.min(axis=0), filled.max(axis=0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.where(np.isfinite(x), x, self.mean) - self.mean) / self.std


def _inner_residuals(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alpha: float) -> np.ndarray:
    """Leave-one-group-out residuals of ridge at `alpha` (standardized per training split)."""
    res = np.full(len(y), np.nan)
    for g in np.unique(groups):
        held = groups == g
        if held.all():
            continue
        sc = _Scaler(x[~held])
        w = _ridge(sc(x[~held]), y[~held], alpha)
        res[held] = y[held] - _predict(w, sc(x[held]))
    return res


def fit_arm(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """One arm's ridge: alpha by inner leave-one-group-out CV, interval from its residuals."""
    best = None
    for alpha in ALPHAS:
        res = _inner_residuals(x, y, groups, alpha)
        mse = float(np.nanmean(res**2)) if np.isfinite(res).any() else math.inf
        if best is None or mse < best[0] - 1e-12:
            best = (mse, alpha, res)
    assert best is not None
    _, alpha, res = best
    sc = _Scaler(x)
    w = _ridge(sc(x), y, alpha)
    finite = np.abs(res[np.isfinite(res)])
    half = float(np.quantile(finite, COVERAGE)) if len(finite) else math.inf
    return {
        "alpha": alpha,
        "intercept": float(w[0]),
        "weights": [float(v) for v in w[1:]],
        "mean": [float(v) for v in sc.mean],
        "std": [float(v) for v in sc.std],
        "lo": [float(v) for v in sc.lo],
        "hi": [float(v) for v in sc.hi],
        "interval": half,
        "n": len(y),
    }


def fit(
    table: Sequence[Record], arms: Sequence[str], names: Sequence[str] = ADVISOR
) -> dict[str, Any]:
    """The predictor for every arm, fitted on the benchmark `table` (jtl.advisor.table.build).

    Groups for the inner CV are targets: the alpha and the interval come from predictions of
    targets left out of the inner fit, as the advisor will be used.
    """
    model: dict[str, Any] = {"features": list(names), "coverage": COVERAGE, "arms": {}}
    for arm in arms:
        rows = [e for e in table if arm in e["gain"]]
        if len(rows) < 3:
            continue
        x = feature_matrix(rows, names)
        y = np.array([e["gain"][arm] for e in rows], float)
        groups = np.array([e["target"] for e in rows])
        model["arms"][arm] = fit_arm(x, y, groups)
    model["per_class_range"] = _range(table, "per_class")
    return model


def _range(table: Sequence[Record], key: str) -> list[float]:
    vals = [float(e[key]) for e in table if isinstance(e.get(key), int | float)]
    return [min(vals), max(vals)] if vals else [math.nan, math.nan]


def predict(model: dict[str, Any], records: Sequence[Record]) -> dict[str, np.ndarray]:
    """arm -> predicted gains (points over scratch) for each record."""
    x = feature_matrix(records, model["features"])
    out = {}
    for arm, m in model["arms"].items():
        mean, std = np.array(m["mean"]), np.array(m["std"])
        z = (np.where(np.isfinite(x), x, mean) - mean) / std
        out[arm] = m["intercept"] + z @ np.array(m["weights"])
    return out


def out_of_range(model: dict[str, Any], record: Record) -> list[str]:
    """Reasons the record lies outside what the benchmark covers (empty: covered)."""
    reasons = []
    x = feature_matrix([record], model["features"])[0]
    arm = next(iter(model["arms"].values()), None)
    if arm is None:
        return ["the advisor has no fitted arm"]
    for name, v, lo, hi in zip(model["features"], x, arm["lo"], arm["hi"], strict=True):
        if not math.isfinite(v):
            if name != "source_accuracy":  # imports have none; the training mean stands in
                reasons.append(f"{name} could not be computed")
            continue
        slack = RANGE_SLACK * max(hi - lo, 1e-9)
        if v < lo - slack or v > hi + slack:
            reasons.append(f"{name} = {v:.3g} is outside the benchmark's {lo:.3g}..{hi:.3g}")
    return reasons
