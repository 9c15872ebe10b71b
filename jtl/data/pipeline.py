"""grain input pipelines: deterministic, resumable at any step, sharded across processes.

Training batches come from a random-access `grain.MapDataset` (shuffle -> augment -> repeat),
so global batch k is a pure function of (seed, k): resuming at step k is exact and costs
nothing, and every process reads only its own contiguous slice of each global batch, so 1 and
N processes see the same global batch. A background thread pool prefetches batches.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from jtl.data import augment as aug

_FOREVER = 1 << 62


class IndexedSource:
    """`source` restricted to `indices` (a training subset) as a grain-compatible source."""

    def __init__(self, source: Any, indices: Sequence[int]) -> None:
        self._source = source
        self._indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._source[int(self._indices[int(i)])]


def _local_slice(batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    if batch_size % process_count:
        raise ValueError(
            f"global batch size {batch_size} is not divisible by {process_count} processes"
        )
    local = batch_size // process_count
    return process_index * local, local


def _train_example(
    record: dict, rng: np.random.Generator, image_size: int, channels: int, ops: list
) -> dict[str, Any]:
    x = aug.fit_image(np.asarray(record["image"]), image_size, channels)
    for op in ops:
        x = op(x, rng)
    return {"image": x, "label": record["label"]}


def _stack(items: list[dict]) -> dict[str, np.ndarray]:
    return {
        "image": aug.normalize(np.stack([it["image"] for it in items])),
        "label": np.array([it["label"] for it in items], np.int32),
    }


def train_batches(
    source: Any,
    indices: Sequence[int],
    *,
    batch_size: int,
    seed: int,
    image_size: int,
    channels: int,
    augment: str = "",
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 4,
    threads: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless process-local batches `{"image": f32[b,H,W,C], "label": i32[b]}` from `start_step`.

    Each epoch is reshuffled from `seed`; augmentation randomness depends only on (seed,
    example position), so batch k is identical whether or not the run was resumed.
    """
    if len(indices) == 0:
        raise ValueError("the training subset is empty")
    offset, local = _local_slice(batch_size, process_index, process_count)
    ops = aug.parse(augment)
    elements = (
        grain.MapDataset.source(IndexedSource(source, indices))
        .shuffle(seed=seed)
        .random_map(
            functools.partial(_train_example, image_size=image_size, channels=channels, ops=ops),
            seed=seed,
        )
        .repeat(None)
    )

    def batch_at(k: int) -> dict[str, np.ndarray]:
        start = k * batch_size + offset
        return _stack([elements[start + j] for j in range(local)])

    batches = grain.MapDataset.range(start_step, _FOREVER).map(batch_at)
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
    return iter(batches.to_iter_dataset(options))


def eval_batches(
    source: Any,
    indices: Sequence[int],
    *,
    batch_size: int,
    image_size: int,
    channels: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over `indices` in order; the last batch is padded, with `mask` 0 on padding."""
    offset, local = _local_slice(batch_size, process_index, process_count)
    indices = np.asarray(indices, np.int64)
    num_batches = -(-len(indices) // batch_size)

    def batch_at(k: int) -> dict[str, np.ndarray]:
        pos = np.arange(k * batch_size + offset, k * batch_size + offset + local)
        mask = pos < len(indices)
        take = indices[np.where(mask, pos, 0)] if len(indices) else np.zeros(local, np.int64)
        items = [
            {
                "image": aug.fit_image(np.asarray(r["image"]), image_size, channels),
                "label": r["label"],
            }
            for r in (source[int(i)] for i in take)
        ]
        out = _stack(items)
        out["mask"] = mask.astype(np.float32)
        return out

    batches = grain.MapDataset.range(0, num_batches).map(batch_at)
    return iter(batches.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))


def load_arrays(
    source: Any, indices: Sequence[int], image_size: int, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed `(x f32[N,H,W,C], y i32[N])` of `indices`, for feature caches and probes."""
    items = [
        {"image": aug.fit_image(np.asarray(source[int(i)]["image"]), image_size, channels),
         "label": source[int(i)]["label"]}
        for i in indices
    ]  # fmt: skip
    out = _stack(items)
    return out["image"], out["label"]
