"""Validation split, nested stratified training subsets, and k-fold splits.

Nesting is what makes a training-set-size sweep a fair comparison: for one seed the 1% subset
is inside the 10% subset, which is inside the full set, so a larger size only *adds* examples.
"""

from __future__ import annotations

import numpy as np

from jtl.runtime.errors import DataError


def _per_class_order(labels: np.ndarray, indices: np.ndarray, seed: int) -> dict[int, np.ndarray]:
    """A fixed random order of each class's indices; subsets take prefixes of it."""
    rng = np.random.default_rng(seed)
    sub = labels[indices]
    return {int(c): rng.permutation(indices[sub == c]) for c in np.unique(sub)}


def train_val_split(
    labels: np.ndarray, val_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified hold-out of `val_fraction` of each class (at least one per class if > 0)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
    labels = np.asarray(labels)
    order = _per_class_order(labels, np.arange(len(labels)), seed + 7919)
    train, val = [], []
    for idx in order.values():
        n_val = int(round(len(idx) * val_fraction))
        if val_fraction > 0 and len(idx) > 1:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def nested_subset(
    labels: np.ndarray,
    indices: np.ndarray,
    fraction: float | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Stratified subset of `indices`; for one seed, smaller subsets are inside larger ones.

    `per_class` takes that many examples of every class; asking for more than the smallest
    class has is a `DataError` naming the maximum (a run labelled "5000/class" must be one);
    `fraction` in (0, 1] takes that fraction of every class (at least one).
    """
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction or per_class")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(
            f"train fraction {fraction} is outside (0, 1]; use e.g. 0.1 for 10% of the training "
            "set, or per_class=N for N examples per class"
        )
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class={per_class} must be >= 1 (examples per class)")
    labels = np.asarray(labels)
    indices = np.asarray(indices)
    chosen = []
    order = _per_class_order(labels, indices, seed)
    if per_class is not None and order:
        smallest = min(order, key=lambda c: len(order[c]))
        available = len(order[smallest])
        if per_class > available:
            raise DataError(
                f"per_class={per_class} but class {smallest} has only {available} training "
                f"examples (after the validation split); the maximum available is {available}",
                f"use per_class<={available}, a fraction, or size 'full'",
            )
    for idx in order.values():
        n = (
            min(per_class, len(idx))
            if per_class is not None
            else max(1, int(round(len(idx) * fraction)))
        )
        chosen.append(idx[:n])
    return np.sort(np.concatenate(chosen))


def kfold_splits(
    labels: np.ndarray, indices: np.ndarray, k: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k folds of `indices`: [(train_idx, val_idx)] with each example validated once."""
    if k < 2:
        raise ValueError(f"k={k}: k-fold cross-validation needs k >= 2")
    folds: list[list[np.ndarray]] = [[] for _ in range(k)]
    offset = 0
    for idx in _per_class_order(np.asarray(labels), np.asarray(indices), seed + 104729).values():
        for j, i in enumerate(idx):
            folds[(j + offset) % k].append(np.array([i]))
        offset += len(idx)
    fold_idx = [np.sort(np.concatenate(f)) if f else np.array([], int) for f in folds]
    return [
        (np.sort(np.concatenate([fold_idx[j] for j in range(k) if j != i])), fold_idx[i])
        for i in range(k)
    ]
