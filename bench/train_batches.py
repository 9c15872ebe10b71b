"""Training-batch cost: jtl's per-epoch permutation lookup against grain's shuffle().repeat().

    .venv/bin/python bench/train_batches.py [--batches 200] [--augment "crop(2)"]

Why: study cells train on 10-100 examples per class, so a batch of 64 spans several epochs
of the training subset. Built element by element through grain's `shuffle -> random_map ->
repeat` (jtl's pipeline before 2026-12-04), a batch cost 1-4x the cnn_small training step it
fed. Prints ms per batch for each way at subset sizes from lfw_subset's 13 examples to 6,660,
and the ratio, measured side by side in one run on in-memory uint8 images (28x28x1).
"""

from __future__ import annotations

import argparse
import functools
import time

import grain
import numpy as np

from jtl.data import augment as aug
from jtl.data import pipeline
from jtl.data.registry import ArraySource

SIZES = (13, 66, 666, 6660)  # lfw 10/class fold, 10/class x 10 classes fold, 100/class, more


def _grain_batches(fitted, batch: int, seed: int, ops: list):
    """The earlier way: grain's element-wise shuffle, augment and endless repeat."""

    def augment(record: dict, rng: np.random.Generator) -> dict:
        x = record["image"]
        for op in ops:
            x = op(x, rng)
        return {"image": x, "label": record["label"]}

    elements = grain.MapDataset.source(fitted).shuffle(seed=seed).random_map(augment, seed=seed)
    elements = elements.repeat(None)

    def batch_at(k: int) -> dict:
        items = [elements[k * batch + j] for j in range(batch)]
        return {"image": np.stack([it["image"] for it in items])}

    return batch_at


def _time(make_batch, batches: int) -> float:
    make_batch(0)
    start = time.perf_counter()
    for k in range(1, batches + 1):
        make_batch(k)
    return (time.perf_counter() - start) / batches * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--augment", default="")
    a = p.parse_args()
    ops = aug.parse(a.augment)
    print(f"batch {a.batch_size}, augment {a.augment!r}, {a.batches} batches each (ms/batch)")
    print(f"{'examples':>9} {'grain':>8} {'jtl':>8} {'ratio':>7}")
    for n in SIZES:
        x = np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
        source = ArraySource(x, np.arange(n) % 10)
        fitted = pipeline.FittedSource(source, np.arange(n), image_size=28, channels=1)
        old = _time(_grain_batches(fitted, a.batch_size, 0, ops), a.batches)
        stream = pipeline.train_batches(
            source, np.arange(n), batch_size=a.batch_size, seed=0,
            image_size=28, channels=1, augment=a.augment, threads=0, prefetch=0,
        )  # fmt: skip
        new = _time(functools.partial(_next, stream), a.batches)
        print(f"{n:>9} {old:>8.2f} {new:>8.2f} {old / new:>6.1f}x")


def _next(stream, _k: int) -> dict:
    return next(stream)


if __name__ == "__main__":
    main()
