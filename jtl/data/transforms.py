"""Data-set transforms in the data-set name: a deterministic similarity dial for any image set.

    mnist|classes(5-9)              MNIST's digits 5..9, relabelled 0..4
    mnist|block_shuffle(4)          4x4-pixel blocks permuted by one fixed, seeded permutation
    fashion_mnist|noise(0.3)|invert transforms compose left to right
    'folder:/data/xrays|lowres(8)'  user data and tfds catalog names take them alike

Why in the name: a transformed data set is then a data set like any other, for every command
(`jtl train`, `jtl advise`, a study's targets and sources) with no new config field, and the
name recorded in config.json / summary.json / model.json says exactly what was trained on.
Quote the name on a shell command line (`|` and `()`); in a config argument string no quotes
are needed (`configs/transfer.py:target=mnist|classes(5-9)`).

Transforms act on the stored uint8 images at their native resolution, before jtl resizes them
to the model's input, and identically on train, validation and test: the same block permutation,
angle or class map. Per-example randomness (`noise`) is a pure function of (seed, split, index),
so every epoch, every process and every re-run sees the same pixels.

The transforms, their arguments and meanings are listed by `jtl data list` (`TABLE`, built
from `_SPECS`) and in the README.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jtl.data.augment import resize_images
from jtl.runtime.errors import ConfigError

SEPARATOR = "|"
_STEP = re.compile(r"^([a-z_]+)(?:\((.*)\))?$")


class TransformError(ConfigError):
    """A malformed transform, an unknown class or a block size that does not fit the images."""


@dataclasses.dataclass(frozen=True)
class Transform:
    """One parsed step: its name, positional argument and options, as written."""

    name: str
    arg: str = ""
    options: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        inner = ";".join([self.arg] * bool(self.arg) + [f"{k}={v}" for k, v in self.options])
        return f"{self.name}({inner})" if inner else self.name

    def option(self, key: str, default: int) -> int:
        return int(dict(self.options).get(key, default))


# name -> (needs an argument, allowed options, what the argument is, what it does)
_SPECS: dict[str, tuple[bool, tuple[str, ...], str, str]] = {
    "block_shuffle": (
        True,
        ("seed",),
        "a block size in pixels, e.g. block_shuffle(4)",
        "permute the k x k-pixel blocks with one fixed permutation (Neyshabur et al. 2020); "
        "k = image size is the identity, k = 1 a fixed pixel permutation; k divides H and W",
    ),
    "classes": (
        True,
        (),
        "class ids as ranges and + lists, e.g. classes(0-4) or classes(1+3+7)",
        "keep these classes, relabelled 0..n-1 in the order given (Yosinski et al. 2014)",
    ),
    "rotate": (True, (), "an angle in degrees, e.g. rotate(30)", "rotate (bilinear, zero fill)"),
    "invert": (False, (), "no argument", "255 - x"),
    "noise": (
        True,
        ("seed",),
        "a std on the [0, 1] scale, e.g. noise(0.2)",
        "add Gaussian noise (std on the [0, 1] scale), clipped; fixed per example",
    ),
    "blur": (True, (), "a Gaussian sigma in pixels, e.g. blur(1.5)", "Gaussian blur"),
    "lowres": (True, (), "a size in pixels, e.g. lowres(7)", "down-sample to r x r, then back up"),
}
NAMES = tuple(_SPECS)
_USAGE = {
    "block_shuffle": "block_shuffle(k) or block_shuffle(k;seed=S)",
    "classes": "classes(0-4) or classes(1+3+7)",
    "rotate": "rotate(deg)",
    "invert": "invert",
    "noise": "noise(sigma) or noise(sigma;seed=S)",
    "blur": "blur(sigma)",
    "lowres": "lowres(r)",
}
# One line per transform, for `jtl data list` and the README.
TABLE = tuple(f"{_USAGE[n]}: {spec[3]}" for n, spec in _SPECS.items())


def split_name(name: str) -> tuple[str, tuple[Transform, ...]]:
    """`'mnist|classes(0-4)|invert'` -> `('mnist', (classes(0-4), invert))`; checks the syntax."""
    base, *steps = [part.strip() for part in str(name).split(SEPARATOR)]
    if not base:
        raise TransformError(f"data set {name!r} has transforms but no data set before the first |")
    return base, tuple(_parse_step(step, name) for step in steps)


def _parse_step(step: str, name: str) -> Transform:
    m = _STEP.match(step)
    where = f"in data set {name!r}"
    if not m:
        raise TransformError(
            f"malformed transform {step!r} {where}: write NAME or NAME(ARG), e.g. rotate(30); "
            f"transforms: {', '.join(NAMES)}"
        )
    op, inner = m.group(1), m.group(2)
    if op not in _SPECS:
        raise TransformError(f"unknown transform {op!r} {where}: use one of {', '.join(NAMES)}")
    needs_arg, allowed, what, _ = _SPECS[op]
    parts = [p.strip() for p in (inner or "").split(";") if p.strip()]
    arg = parts[0] if parts and "=" not in parts[0] else ""
    options = []
    for part in parts[1:] if arg else parts:
        key, sep, value = part.partition("=")
        if not sep or key not in allowed or not re.fullmatch(r"\d+", value.strip()):
            raise TransformError(f"bad option {part!r} of {op} {where}: {op} takes {what}")
        options.append((key.strip(), value.strip()))
    if needs_arg != bool(arg):
        raise TransformError(f"{op} {where} takes {what}")
    t = Transform(op, arg, tuple(options))
    if op != "classes" and arg:
        _number(t, positive=op != "rotate", integer=op in ("block_shuffle", "lowres"))
    if op == "classes":
        class_ids(t)
    return t


def _number(t: Transform, positive: bool, integer: bool) -> float:
    try:
        value = int(t.arg) if integer else float(t.arg)
    except ValueError:
        raise TransformError(
            f"{t}: {t.arg!r} is not {'an integer' if integer else 'a number'} ({_SPECS[t.name][2]})"
        ) from None
    if not np.isfinite(value) or (positive and value <= 0) or (t.name == "noise" and value < 0):
        raise TransformError(f"{t}: the argument must be {'> 0' if positive else 'finite'}")
    return value


def class_ids(t: Transform) -> list[int]:
    """`classes(0-4)` -> [0, 1, 2, 3, 4]; `classes(7+1)` -> [7, 1] (the order is the new label)."""
    out: list[int] = []
    for part in t.arg.split("+"):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise TransformError(f"{t}: {part!r} is not a class id or range like 0-4")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        out.extend(range(lo, hi + 1))
    if len(set(out)) != len(out):
        raise TransformError(f"{t}: a class is named twice")
    if len(out) < 2:
        raise TransformError(f"{t}: keep at least 2 classes to classify")
    return out


# ----------------------------------------------------------------------------- pixel ops
# Each takes uint8 (N, H, W, C) images and the split's record indices (for per-example seeds).

PixelOp = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _block_shuffle(t: Transform, shape: tuple[int, ...]) -> PixelOp:
    k, (h, w) = _number(t, True, True), shape[:2]
    if h % k or w % k:
        divisors = [d for d in range(1, min(h, w) + 1) if h % d == 0 and w % d == 0]
        raise TransformError(
            f"{t}: block size {k} does not divide the {h}x{w} images; use {divisors}"
        )
    k = int(k)
    gh, gw = h // k, w // k
    perm = np.random.default_rng(t.option("seed", 0)).permutation(gh * gw)

    def op(x: np.ndarray, _: np.ndarray) -> np.ndarray:
        n, c = len(x), x.shape[-1]
        blocks = (
            x.reshape(n, gh, k, gw, k, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, gh * gw, k, k, c)
        )
        blocks = blocks[:, perm].reshape(n, gh, gw, k, k, c).transpose(0, 1, 3, 2, 4, 5)
        return np.ascontiguousarray(blocks.reshape(n, h, w, c))

    return op


def _rotate(t: Transform, shape: tuple[int, ...]) -> PixelOp:
    from scipy import ndimage

    deg = _number(t, False, False)

    def op(x: np.ndarray, _: np.ndarray) -> np.ndarray:
        y = ndimage.rotate(x.astype(np.float32), deg, axes=(2, 1), reshape=False, order=1, cval=0)
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)

    return op


def _invert(t: Transform, shape: tuple[int, ...]) -> PixelOp:
    return lambda x, _: 255 - x


def _noise(t: Transform, shape: tuple[int, ...], split: str) -> PixelOp:
    sigma, seed, tag = (
        _number(t, False, False) * 255.0,
        t.option("seed", 0),
        zlib.crc32(split.encode()),
    )

    def op(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        eps = np.zeros((len(idx), *shape), np.float32)
        for j, i in enumerate(idx):  # one generator per example: the same noise streamed or not
            eps[j] = np.random.default_rng([seed, tag, int(i)]).standard_normal(shape, np.float32)
        return np.clip(np.rint(x.astype(np.float32) + sigma * eps), 0, 255).astype(np.uint8)

    return op


def _blur(t: Transform, shape: tuple[int, ...]) -> PixelOp:
    from scipy import ndimage

    sigma = _number(t, True, False)

    def op(x: np.ndarray, _: np.ndarray) -> np.ndarray:
        y = ndimage.gaussian_filter(
            x.astype(np.float32), sigma=(0, sigma, sigma, 0), mode="nearest"
        )
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)

    return op


def _lowres(t: Transform, shape: tuple[int, ...]) -> PixelOp:
    r, (h, w) = int(_number(t, True, True)), shape[:2]
    if r > min(h, w):
        raise TransformError(f"{t}: {r} is larger than the {h}x{w} images")
    return lambda x, _: resize_images(resize_images(x, (r, r)), (h, w))


def pixel_op(t: Transform, shape: tuple[int, ...], split: str) -> PixelOp:
    """The function that applies `t` to a split's images of native `shape` (H, W, C)."""
    if t.name == "noise":
        return _noise(t, shape, split)
    return {
        "block_shuffle": _block_shuffle,
        "rotate": _rotate,
        "invert": _invert,
        "blur": _blur,
        "lowres": _lowres,
    }[t.name](t, shape)


# ----------------------------------------------------------------------------- data sets


class TransformedSource:
    """A streamed split whose records pass through `ops` (and a class subset) as they are read.

    `index` maps this split's positions to the base split's (a `classes()` subset), `relabel`
    maps old labels to new ones. In-memory splits are transformed once instead (`in_memory`).
    """

    def __init__(
        self,
        base: Any,
        ops: Sequence[PixelOp],
        index: np.ndarray,
        relabel: np.ndarray | None,
        base_labels: np.ndarray | None = None,
    ) -> None:
        self._base, self._ops, self._index, self._relabel = base, list(ops), index, relabel
        if base_labels is not None:  # labels without running the pixel ops over the split
            self.labels = _relabelled(np.asarray(base_labels)[index], relabel)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Any) -> list[dict[str, Any]]:
        base_idx = self._index[np.asarray(list(indices), np.int64)]
        getitems = getattr(self._base, "__getitems__", None)
        records = (
            getitems(base_idx.tolist()) if getitems else [self._base[int(i)] for i in base_idx]
        )
        images = _run(self._ops, np.stack([np.asarray(r["image"]) for r in records]), base_idx)
        labels = _relabelled(np.array([r["label"] for r in records]), self._relabel)
        return [{"image": im, "label": int(y)} for im, y in zip(images, labels, strict=True)]


def _run(ops: Sequence[PixelOp], images: np.ndarray, base_idx: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    for op in ops:
        images = op(images, base_idx)
    return images


def _relabelled(labels: np.ndarray, relabel: np.ndarray | None) -> np.ndarray:
    labels = np.asarray(labels, np.int64)
    return relabel[labels] if relabel is not None else labels


def in_memory(
    images: np.ndarray,
    labels: np.ndarray,
    ops: Sequence[PixelOp],
    index: np.ndarray,
    relabel: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """An in-memory split transformed once: `(images, labels)` of the kept records."""
    return _run(ops, images[index], index), _relabelled(labels[index], relabel)


def apply(
    name: str,
    splits: dict[str, Any],
    labels: Callable[[str], np.ndarray],
    num_classes: int,
    class_names: Sequence[str],
    image_shape: tuple[int, ...],
    transforms: Sequence[Transform],
    wrap_arrays: Callable[[np.ndarray, np.ndarray], Any],
) -> tuple[dict[str, Any], int, list[str]]:
    """`(splits, num_classes, class_names)` of the transformed data set (images only).

    In-memory splits are transformed once and handed to `wrap_arrays(images, labels)`; others
    are streamed through a `TransformedSource`.
    """
    keep: list[int] | None = None
    for t in transforms:
        if t.name == "classes":
            if keep is not None:
                raise TransformError(f"data set {name!r}: give classes() once")
            keep = class_ids(t)
            bad = [c for c in keep if c >= num_classes]
            if bad:
                raise TransformError(
                    f"{t} in data set {name!r}: no class {bad} (classes are 0..{num_classes - 1})"
                )
    if -1 in image_shape[:2] and any(t.name != "classes" for t in transforms):
        raise TransformError(
            f"data set {name!r}: pixel transforms need images of one size (this data set's "
            "vary); only classes() applies"
        )
    relabel = None
    if keep is not None:
        relabel = np.full(num_classes, -1, np.int64)
        relabel[keep] = np.arange(len(keep))
        names = list(class_names) or [str(i) for i in range(num_classes)]
        class_names, num_classes = [names[c] for c in keep], len(keep)
    out = {}
    for split, source in splits.items():
        ops = [pixel_op(t, image_shape, split) for t in transforms if t.name != "classes"]
        index = np.arange(len(source))
        if relabel is not None:
            index = np.flatnonzero(relabel[labels(split)] >= 0)
        base_images, base_labels = getattr(source, "images", None), getattr(source, "labels", None)
        if isinstance(base_images, np.ndarray) and isinstance(base_labels, np.ndarray):
            out[split] = wrap_arrays(*in_memory(base_images, base_labels, ops, index, relabel))
        else:
            out[split] = TransformedSource(source, ops, index, relabel, labels(split))
    return out, num_classes, list(class_names)


def describe(name: str) -> list[str]:
    """The transforms of a data-set name as canonical strings (recorded in summary.json)."""
    return [str(t) for t in split_name(name)[1]]
