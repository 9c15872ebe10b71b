"""grain input pipelines: deterministic, resumable at any step, sharded across processes.

Global training batch k is a pure function of (seed, k): position p of the endless stream is
example `order(p // n)[p % n]` of a per-epoch permutation drawn from (seed, epoch), augmented
with a generator seeded by (seed, p), each in its own stream (`SHUFFLE`, `AUGMENT`). So
resuming at step k is exact and costs nothing, and every process reads only its own
contiguous slice of each global batch, so 1 and N processes see the same global batch.
grain's background threads build and prefetch batches.

Speed: the training subset is resized once, in bulk and vectorized, and kept in memory (when it
fits), so an epoch costs only the random augmentation of each example; 1 -> 3 channel repeat
and scaling to [-1, 1] run once per batch.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from jtl.data import augment as aug

FOREVER = 1 << 62  # the length of an endless (resumable) batch stream
# Batch keys of text data sets (jtl.data.text), passed to the model as one dict.
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
# A training subset whose resized uint8 images fit in this many bytes is kept in memory.
PREFIT_BYTES = 1 << 30
_CHUNK = 1024
# Seed-sequence tags: epoch e's permutation and position p's augmentation never share a
# generator (untagged, (seed, 3) would seed both epoch 3's order and position 3's crop).
SHUFFLE, AUGMENT = 0, 1


def model_inputs(batch: dict[str, Any]) -> Any:
    """What a model takes from a batch: the image array, or the dict of token arrays (text).

    Every jtl classifier is called as `model.apply(variables, model_inputs(batch), train=...)`,
    so one trainer serves images (`Classifier`) and text (`BertClassifier`).
    """
    if "image" in batch:
        return batch["image"]
    inputs = {k: batch[k] for k in TEXT_KEYS if k in batch}
    if "input_ids" not in inputs:
        raise KeyError(f"batch has neither 'image' nor 'input_ids' (keys: {sorted(batch)})")
    return inputs


def read_records(source: Any, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 `(n, H, W, C)` images and int64 labels of `indices`, read in bulk where possible."""
    indices = np.asarray(indices, np.int64)
    if hasattr(source, "images") and hasattr(source, "labels"):  # an in-memory split
        return source.images[indices], np.asarray(source.labels)[indices].astype(np.int64)
    getitems = getattr(source, "__getitems__", None)
    records = getitems(indices.tolist()) if getitems else [source[int(i)] for i in indices]
    images = np.stack([np.asarray(r["image"]) for r in records])
    if images.ndim == 3:
        images = images[..., None]
    return images, np.array([r["label"] for r in records], np.int64)


def _stored_channels(source: Any, indices: np.ndarray, channels: int) -> int:
    """Grayscale kept as 1 channel until the batch is built (3x less memory and augment work)."""
    image = read_records(source, indices[:1])[0]
    return 1 if image.shape[-1] == 1 else channels


class FittedSource:
    """`source[indices]` resized to the model's input size (uint8), as a random-access source.

    Small subsets are resized up front, in bulk, and held in memory; large ones per record.
    """

    def __init__(self, source: Any, indices: Sequence[int], image_size: int, channels: int):
        self._indices = np.asarray(indices, np.int64)
        self._source, self._size = source, image_size
        self.channels = _stored_channels(source, self._indices, channels)
        self.images: np.ndarray | None = None
        nbytes = len(self._indices) * image_size * image_size * self.channels
        if nbytes <= PREFIT_BYTES:
            parts = [
                read_records(source, self._indices[s : s + _CHUNK])
                for s in range(0, len(self._indices), _CHUNK)
            ]
            self.images = np.concatenate(
                [aug.fit_images(x, image_size, self.channels) for x, _ in parts]
            )
            self.labels = np.concatenate([y for _, y in parts])

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.images is not None:
            return {"image": self.images[i], "label": int(self.labels[i])}
        record = self._source[int(self._indices[i])]
        image = aug.fit_image(np.asarray(record["image"]), self._size, self.channels)
        return {"image": image, "label": int(record["label"])}


def local_slice(batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    """(offset, rows) of this process's slice of every global batch (images and text alike)."""
    if batch_size % process_count:
        raise ValueError(
            f"global batch size {batch_size} is not divisible by {process_count} processes"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    local = batch_size // process_count
    return process_index * local, local


class EpochOrder:
    """Position p of an endless stream over n examples -> the example it shows: index p % n of
    a permutation of range(n) drawn from (seed, p // n), so every epoch is reshuffled.

    Why not grain's `shuffle().repeat()`: its per-element bookkeeping cost 135 ms to build a
    batch of 64 drawn from 13 examples, 29 ms from 66 (bench/train_batches.py), 1-4x the
    training step it fed; this is one vectorized lookup per batch. Thread-safe: grain's
    threads build batches concurrently. The permutations kept for the batches in flight are
    bounded by `CACHE_BYTES` (at least 2: one batch can straddle two epochs).
    """

    CACHE_BYTES = 8 << 20

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        kept = max(2, min(64, self.CACHE_BYTES // (8 * max(n, 1))))
        self._permutation = functools.lru_cache(maxsize=kept)(self._draw)

    def _draw(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, SHUFFLE, epoch)).permutation(self.n)

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        epochs, within = np.divmod(np.asarray(positions, np.int64), self.n)
        out = np.empty_like(within)
        for e in np.unique(epochs):
            here = epochs == e
            out[here] = self._permutation(int(e))[within[here]]
        return out


def _augment(x: np.ndarray, rng: np.random.Generator, ops: list) -> np.ndarray:
    for op in ops:
        x = op(x, rng)
    return x


def _to_batch(
    images: np.ndarray, labels: np.ndarray, channels: int, scale: str
) -> dict[str, np.ndarray]:
    return {
        "image": aug.normalize(aug.expand_channels(images, channels), scale),
        "label": np.asarray(labels, np.int32),
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
    scale: str = "minus_one_one",
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 4,
    threads: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless process-local batches `{"image": f32[b,H,W,C], "label": i32[b]}` from `start_step`.

    `batch_size` is global; process p gets rows `[p*b, (p+1)*b)` of every global batch, with
    `b = batch_size // process_count`. Each epoch is reshuffled from `seed`, and augmentation
    randomness depends only on (seed, position in the endless stream), so batch k is identical
    whether the run started at 0 or resumed at `start_step`.
    """
    if len(indices) == 0:
        raise ValueError("the training subset is empty")
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0")
    offset, local = local_slice(batch_size, process_index, process_count)
    ops = aug.parse(augment)
    fitted = FittedSource(source, indices, image_size, channels)
    order = EpochOrder(len(fitted), seed)

    def batch_at(k: int) -> dict[str, np.ndarray]:
        positions = np.arange(k * batch_size + offset, k * batch_size + offset + local)
        rows = order(positions)
        if fitted.images is not None:
            images, labels = fitted.images[rows], fitted.labels[rows]
        else:
            items = [fitted[int(i)] for i in rows]
            images = np.stack([it["image"] for it in items])
            labels = np.array([it["label"] for it in items])
        if ops:
            images = np.stack(
                [_augment(x, np.random.default_rng((seed, AUGMENT, int(p))), ops)
                 for x, p in zip(images, positions, strict=True)]
            )  # fmt: skip
        return _to_batch(images, labels, channels, scale)

    batches = grain.MapDataset.range(start_step, FOREVER).map(batch_at)
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
    return iter(batches.to_iter_dataset(options))


def eval_batches(
    source: Any,
    indices: Sequence[int],
    *,
    batch_size: int,
    image_size: int,
    channels: int,
    scale: str = "minus_one_one",
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over `indices` in order; the last batch is padded, with `mask` 0 on padding.

    Every process yields the same number of batches (its slice of each global batch), so
    collective evaluation steps stay in lockstep.
    """
    offset, local = local_slice(batch_size, process_index, process_count)
    indices = np.asarray(indices, np.int64)
    num_batches = -(-len(indices) // batch_size)
    if isinstance(source, FittedSource) and source.images is not None:
        # Already resized and in memory (TargetData caches its eval splits): plain slicing.
        # Per evaluation this saves the re-read and re-resize and grain's thread start-up,
        # which dominated a study cell's frequent validation passes.
        return _in_memory_eval_batches(source, indices, batch_size, offset, local, channels, scale)

    def batch_at(k: int) -> dict[str, np.ndarray]:
        pos = np.arange(k * batch_size + offset, k * batch_size + offset + local)
        mask = pos < len(indices)
        images, labels = read_records(source, indices[np.where(mask, pos, 0)])
        out = _to_batch(aug.fit_images(images, image_size, channels), labels, channels, scale)
        out["mask"] = mask.astype(np.float32)
        return out

    batches = grain.MapDataset.range(0, num_batches).map(batch_at)
    return iter(batches.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))


def _in_memory_eval_batches(
    source: FittedSource,
    indices: np.ndarray,
    batch_size: int,
    offset: int,
    local: int,
    channels: int,
    scale: str,
) -> Iterator[dict[str, np.ndarray]]:
    """`eval_batches` over a fitted in-memory source: same batches, masks and order."""
    assert source.images is not None
    for k in range(-(-len(indices) // batch_size)):
        pos = np.arange(k * batch_size + offset, k * batch_size + offset + local)
        mask = pos < len(indices)
        rows = indices[np.where(mask, pos, 0)]
        out = _to_batch(source.images[rows], source.labels[rows], channels, scale)
        out["mask"] = mask.astype(np.float32)
        yield out


def load_arrays(
    source: Any,
    indices: Sequence[int],
    image_size: int,
    channels: int,
    scale: str = "minus_one_one",
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed `(x f32[N,H,W,C], y i32[N])` of `indices`, for feature caches and probes."""
    indices = np.asarray(indices, np.int64)
    xs, ys = [], []
    for s in range(0, len(indices), _CHUNK):
        images, labels = read_records(source, indices[s : s + _CHUNK])
        batch = _to_batch(aug.fit_images(images, image_size, channels), labels, channels, scale)
        xs.append(batch["image"])
        ys.append(batch["label"])
    if not xs:
        return np.zeros((0, image_size, image_size, channels), np.float32), np.zeros(0, np.int32)
    return np.concatenate(xs), np.concatenate(ys)
