"""Calibration: can a run's probabilities be trusted? NLL, Brier, ECE and temperature scaling.

Why in every run: a strategy that wins on accuracy can still be over-confident (Guo et al.
2017), and calibration decays under shift (Minderer et al. 2021), so the comparison a user
reads must show it. Definitions (the common ones; implementations disagree, so here they are):
- NLL: mean -log p(y | x) (natural log).
- Brier: mean over examples of sum over classes (p_k - [y = k])^2 (multi-class, range 0..2).
- ECE: top-label, 15 equal-width confidence bins on [0, 1], bin b = (b/15, (b+1)/15] (Guo et
  al.'s right-closed bins; the first also takes 0), sum over bins of |bin| / N *
  |accuracy(bin) - mean confidence(bin)|. torchmetrics' `MulticlassCalibrationError(n_bins=15,
  norm="l1")` uses left-closed bins and puts a confidence of exactly 1.0 in a bin of its own,
  so the two agree except for confidences on a bin edge (the test checks inputs without them).
- Temperature scaling: one T > 0 for the logits, fitted on the validation split by NLL
  (bounded 1-D search over log T); T = 1 is kept unless the fit lowers validation NLL, so it
  never raises it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special

BINS = 15
LOG_T_RANGE = (-4.0, 4.0)  # T in [e^-4, e^4]


def _log_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / float(temperature)
    return z - special.logsumexp(z, axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    lp = _log_probs(logits, temperature)
    return float(-np.mean(lp[np.arange(len(lp)), np.asarray(labels, np.int64)]))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    p = np.asarray(probs, np.float64)
    onehot = np.eye(p.shape[1])[np.asarray(labels, np.int64)]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, list]:
    """Per equal-width confidence bin: count, mean confidence, accuracy (the diagram's data)."""
    p = np.asarray(probs, np.float64)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == np.asarray(labels, np.int64)).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=bins)
    return {  # empty bins: None (summary.json stays strict JSON)
        "count": count.astype(int).tolist(),
        "confidence": [float(c / n) if n else None for c, n in zip(conf_sum, count, strict=True)],
        "accuracy": [float(a / n) if n else None for a, n in zip(acc_sum, count, strict=True)],
    }


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    r = reliability(probs, labels, bins)
    n = max(sum(r["count"]), 1)
    cells = zip(r["count"], r["accuracy"], r["confidence"], strict=True)
    return float(sum(c / n * abs(a - f) for c, a, f in cells if c > 0))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T minimizing validation NLL; 1.0 unless that strictly lowers it (and for empty input)."""
    if len(labels) == 0:
        return 1.0
    res = optimize.minimize_scalar(
        lambda log_t: nll(logits, labels, math.exp(log_t)),
        bounds=LOG_T_RANGE,
        method="bounded",
        options={"xatol": 1e-4},
    )
    t = float(math.exp(res.x))
    return t if nll(logits, labels, t) < nll(logits, labels, 1.0) else 1.0


def metrics(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> dict[str, float]:
    """NLL, Brier and ECE of `logits / temperature`."""
    probs = np.exp(_log_probs(logits, temperature))
    return {
        "nll": nll(logits, labels, temperature),
        "brier": brier(probs, labels),
        "ece": ece(probs, labels),
    }


def split_fields(
    split: str, logits: np.ndarray, labels: np.ndarray, temperature: float
) -> dict[str, object]:
    """`{split}_nll/brier/ece`, the same at `temperature` (`_ts`), and `{split}_reliability`."""
    raw = metrics(logits, labels)
    scaled = metrics(logits, labels, temperature)
    out: dict[str, object] = {}
    for k in ("nll", "brier", "ece"):
        out[f"{split}_{k}"] = raw[k]
        out[f"{split}_{k}_ts"] = scaled[k]
    out[f"{split}_reliability"] = reliability(np.exp(_log_probs(logits)), labels)
    return out


def shift_fields(
    logits: np.ndarray,
    labels: np.ndarray,
    temperature: float,
    accuracy: float | None = None,
    loss: float | None = None,
) -> dict[str, object]:
    """An `eval_shifts` set's summary entry: accuracy, loss, examples, NLL / Brier / ECE raw
    and at `temperature` (`_ts`). `accuracy` and `loss` default to those of `logits`."""
    raw, scaled = metrics(logits, labels), metrics(logits, labels, temperature)
    if accuracy is None and len(labels):
        accuracy = float(np.mean(np.argmax(logits, 1) == labels))
    return {
        "accuracy": accuracy,
        "loss": raw["nll"] if loss is None else loss,
        "examples": int(len(labels)),
        **raw,
        **{f"{k}_ts": v for k, v in scaled.items()},
    }


def summary_fields(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, object]:
    """summary.json's calibration fields from each split's (logits, labels): raw and
    temperature-scaled (T fitted on "val", stored as `temperature`), with reliability bins."""
    if "val" not in splits or len(splits["val"][1]) == 0:
        return {}
    temperature = fit_temperature(*splits["val"])
    out: dict[str, object] = {"temperature": temperature}
    for split, (logits, labels) in splits.items():
        if len(labels):
            out.update(split_fields(split, logits, labels, temperature))
    return out
