"""Linear probes on frozen "bottleneck" features: extract once, cache on disk, fit in seconds.

The frozen backbone runs once over the data (its cost is one forward pass); every classifier
after that sees only the cached feature matrix. Fitted on the training subset, selected on the
validation split, reported on test:
- multinomial logistic regression, L2 chosen on validation (full-batch L-BFGS in JAX);
- closed-form ridge classifier on one-hot targets, alpha chosen on validation;
- a linear SVM (scikit-learn) as an option for tiny data.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jtl.runtime.paths import unique_tmp

L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclasses.dataclass
class LinearClassifier:
    """`logits = x @ kernel + bias` on raw (unstandardized) features: drops into a Dense head."""

    kind: str
    kernel: np.ndarray  # [D, C]
    bias: np.ndarray  # [C]
    hyper: float
    val_accuracy: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(x @ self.kernel + self.bias, axis=-1)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(self.predict(x) == y)) if len(y) else float("nan")


@dataclasses.dataclass
class Standardizer:
    """Per-feature standardization, folded back into the classifier weights after fitting."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        return cls(x.mean(0), x.std(0) + 1e-6)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale

    def fold(self, kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = kernel / self.scale[:, None]
        return k.astype(np.float32), (bias - self.mean @ k).astype(np.float32)


# ----------------------------------------------------------------------------- features


def extract_features(
    apply_features: Any, variables: dict, batches: Iterable[dict]
) -> tuple[np.ndarray, np.ndarray]:
    """Runs the frozen backbone over padded eval batches; returns (features, labels)."""
    from jtl.data.pipeline import model_inputs

    feats, labels = [], []
    for batch in batches:
        f = np.asarray(apply_features(variables, model_inputs(batch)))
        keep = np.asarray(batch["mask"]) > 0
        feats.append(f[keep])
        labels.append(np.asarray(batch["label"])[keep])
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int32)


def cache_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_rows(
    path: Path, indices: np.ndarray, n: int, compute: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of rows `indices` of an `n`-row split, from the .npz cache at `path` (rows `idx`
    with x, y; a file without `idx` holds every row), computing only the missing rows with
    `compute(missing_indices)` and writing the merged cache atomically."""
    have_idx = np.zeros(0, np.int64)
    have_x = have_y = None
    if path.exists():
        with np.load(path) as f:
            have_x, have_y = f["x"], f["y"]
            have_idx = f["idx"] if "idx" in f.files else np.arange(len(have_x))
    wanted = np.unique(indices)
    missing = np.setdiff1d(wanted, have_idx)
    if len(missing):
        new_x, new_y = compute(missing)
        if have_x is None:
            have_idx, have_x, have_y = missing, new_x, new_y
        else:
            have_idx = np.concatenate([have_idx, missing])
            have_x = np.concatenate([have_x, new_x])
            have_y = np.concatenate([have_y, new_y])
        order = np.argsort(have_idx, kind="stable")
        have_idx, have_x, have_y = have_idx[order], have_x[order], have_y[order]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = unique_tmp(path)
        if len(have_idx) == n:  # complete: the plain form every reader takes
            np.savez(tmp, x=have_x, y=have_y)
        else:
            np.savez(tmp, x=have_x, y=have_y, idx=have_idx)
        tmp.replace(path)
    rows = np.searchsorted(have_idx, indices)
    return have_x[rows], have_y[rows]


# ----------------------------------------------------------------------------- classifiers


def _ce_objective(x: jax.Array, y: jax.Array, num_classes: int, l2: float) -> Any:
    onehot = jax.nn.one_hot(y, num_classes)

    def loss(w: dict) -> jax.Array:
        logits = x @ w["kernel"] + w["bias"]
        ce = -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1))
        return ce + l2 * jnp.sum(w["kernel"] ** 2)

    return loss


def _lbfgs(loss: Any, w0: dict, max_steps: int, tol: float) -> dict:
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry: tuple) -> tuple:
        w, state = carry
        value, grad = value_and_grad(w, state=state)
        updates, state = opt.update(grad, state, w, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(w, updates), state

    def cont(carry: tuple) -> jax.Array:
        _, state = carry
        count = optax.tree.get(state, "count")
        grad = optax.tree.get(state, "grad")
        return (count == 0) | ((count < max_steps) & (optax.tree.norm(grad) >= tol))

    w, _ = jax.lax.while_loop(cont, step, (w0, opt.init(w0)))
    return w


@functools.partial(jax.jit, static_argnames=("num_classes", "max_steps", "tol"))
def _fit_lbfgs(
    x: jax.Array,
    y: jax.Array,
    w0: dict,
    l2: jax.Array,
    num_classes: int,
    max_steps: int,
    tol: float,
) -> dict:
    """One program per shape, the data an argument: a study fits many probes of equal shapes
    (every source on a target), and a closure would bake each one's features into a new one."""
    return _lbfgs(_ce_objective(x, y, num_classes, l2), w0, max_steps, tol)


def fit_logistic(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    num_classes: int,
    l2_grid: Sequence[float] = L2_GRID,
    max_steps: int = 500,
) -> LinearClassifier:
    """Multinomial logistic regression; L2 strength picked by validation accuracy (ties: larger)."""
    std = Standardizer.fit(x_train)
    xt, xv = jnp.asarray(std(x_train)), std(x_val)
    yt = jnp.asarray(y_train)
    d = x_train.shape[1]
    w = {"kernel": jnp.zeros((d, num_classes)), "bias": jnp.zeros((num_classes,))}
    best: LinearClassifier | None = None
    for l2 in sorted(l2_grid, reverse=True):  # strong -> weak, warm-started
        w = _fit_lbfgs(xt, yt, w, l2, num_classes=num_classes, max_steps=max_steps, tol=1e-5)
        kernel, bias = np.asarray(w["kernel"]), np.asarray(w["bias"])
        acc = float(np.mean(np.argmax(xv @ kernel + bias, -1) == y_val)) if len(y_val) else 0.0
        if best is None or acc > best.val_accuracy:
            best = LinearClassifier("logistic", *std.fold(kernel, bias), l2, acc)
    assert best is not None
    return best


def fit_ridge(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    num_classes: int,
    alphas: Sequence[float] = RIDGE_GRID,
) -> LinearClassifier:
    """Closed-form ridge regression onto centred one-hot targets, one solve per alpha."""
    std = Standardizer.fit(x_train)
    xt, xv = std(x_train).astype(np.float64), std(x_val)
    targets = np.eye(num_classes)[y_train] * 2.0 - 1.0
    t_mean = targets.mean(0)
    n, d = xt.shape
    # Dual form when there are fewer examples than features (few-shot): an n x n solve.
    gram = xt @ xt.T if n < d else xt.T @ xt
    best: LinearClassifier | None = None
    for alpha in alphas:
        reg = alpha * n
        if n < d:
            kernel = xt.T @ np.linalg.solve(gram + reg * np.eye(n), targets - t_mean)
        else:
            kernel = np.linalg.solve(gram + reg * np.eye(d), xt.T @ (targets - t_mean))
        bias = t_mean
        acc = float(np.mean(np.argmax(xv @ kernel + bias, -1) == y_val)) if len(y_val) else 0.0
        if best is None or acc > best.val_accuracy:
            best = LinearClassifier("ridge", *std.fold(kernel, bias), alpha, acc)
    assert best is not None
    return best


def fit_svm(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    num_classes: int,
    cs: Sequence[float] = (0.01, 0.1, 1.0),
) -> LinearClassifier:
    """Linear SVM (one-vs-rest, scikit-learn): a margin classifier for tiny data."""
    from sklearn.svm import LinearSVC

    std = Standardizer.fit(x_train)
    xt, xv = std(x_train), std(x_val)
    best: LinearClassifier | None = None
    for c in cs:
        svm = LinearSVC(C=c, max_iter=5000).fit(xt, y_train)
        kernel = np.zeros((xt.shape[1], num_classes))
        bias = np.full(num_classes, -1e9)
        coef = svm.coef_ if len(svm.classes_) > 2 else np.stack([-svm.coef_[0], svm.coef_[0]])
        inter = (
            svm.intercept_
            if len(svm.classes_) > 2
            else np.array([-svm.intercept_[0], svm.intercept_[0]])
        )
        kernel[:, svm.classes_] = coef.T
        bias[svm.classes_] = inter
        acc = float(np.mean(np.argmax(xv @ kernel + bias, -1) == y_val)) if len(y_val) else 0.0
        if best is None or acc > best.val_accuracy:
            best = LinearClassifier("svm", *std.fold(kernel, bias), c, acc)
    assert best is not None
    return best


PROBES = {"logistic": fit_logistic, "ridge": fit_ridge, "svm": fit_svm}


def fit_probes(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    kinds: Sequence[str] = ("logistic", "ridge"),
) -> tuple[LinearClassifier, dict[str, LinearClassifier]]:
    """Fits each probe kind; the winner is the best on validation (never on test)."""
    unknown = [k for k in kinds if k not in PROBES]
    if unknown:
        raise ValueError(f"unknown probe kinds {unknown}; valid: {sorted(PROBES)}")
    fitted = {k: PROBES[k](*train, *val, num_classes) for k in kinds}
    winner = max(fitted.values(), key=lambda p: p.val_accuracy)
    for k, p in fitted.items():
        logging.info("probe %-8s hyper=%g val acc %.4f", k, p.hyper, p.val_accuracy)
    return winner, fitted
