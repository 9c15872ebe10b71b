"""Image preprocessing and augmentation ops, chosen in the config by a spec string.

    augment = "crop(4)|flip|rotate(15)|scale(0.9,1.1)"

Ops act on one uint8 HWC image already resized to the model's input size, with a
`np.random.Generator` that grain seeds per example and epoch (deterministic, resumable).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import numpy as np
from PIL import Image

Op = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def from_pil(im: Image.Image, channels: int) -> np.ndarray:
    arr = np.asarray(im, np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr[..., :channels]


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """PIL's bilinear weights (antialiased when shrinking) as an `(n_out, n_in)` matrix.

    Resizing is separable and linear, so a batch is resized with two matmuls instead of one PIL
    call per image; taking the weights from PIL itself keeps PIL's filter.
    """
    eye = Image.fromarray(np.eye(n_in, dtype=np.float32), mode="F")
    return np.asarray(eye.resize((n_in, n_out), Image.BILINEAR), np.float32)


def resize_images(images: np.ndarray, size: tuple[int, int], chunk: int = 1024) -> np.ndarray:
    """Bilinear resize of a uint8 `(N, H, W, C)` batch to `size = (h, w)`, vectorized."""
    n, h, w, c = images.shape
    if (h, w) == tuple(size):
        return images
    wy, wx = resize_matrix(h, size[0]), resize_matrix(w, size[1])
    out = np.empty((n, size[0], size[1], c), np.uint8)
    for s in range(0, n, chunk):
        x = images[s : s + chunk].astype(np.float32)
        m = len(x)
        x = np.matmul(wy, x.reshape(m, h, w * c)).reshape(m * size[0], w, c)
        x = np.matmul(wx, x).reshape(m, size[0], size[1], c)
        out[s : s + m] = np.clip(np.rint(x), 0, 255)
    return out


def fit_images(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """Resize a uint8 batch to `image_size` and convert channels (1 -> 3 repeat, 3 -> 1 mean).

    Accepts `(N, H, W)` or `(N, H, W, C)`; an alpha channel is dropped. The one preprocessing
    for training, evaluation and prediction, so all three see identical pixels.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 4:
        images = images[..., :3]
    c = images.shape[-1]
    if c not in (1, 3) or channels not in (1, 3):
        raise ValueError(f"cannot convert {c}-channel images to {channels} channels")
    if c == 3 and channels == 1:  # luminance mean first: one channel is cheaper to resize
        images = np.rint(images.astype(np.float32).mean(-1, keepdims=True)).astype(np.uint8)
    images = resize_images(images.astype(np.uint8, copy=False), (image_size, image_size))
    return expand_channels(images, channels)


def expand_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """1 -> `channels` by repeat (last axis); kept separate so it can run after augmentation."""
    if images.shape[-1] == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    return images


def fit_image(image: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """`fit_images` for one HWC (or HW) image."""
    image = np.asarray(image)
    return fit_images(image[None], image_size, channels)[0]


# Input scales: uint8 v -> (v / 255 - mean) / std per channel. jtl's own runs use
# `minus_one_one`; a transfer run feeds its source's scale (`config.input_scale`, "auto" reads
# it from the source's import.json / model.json): torchvision's ImageNet weights expect the
# ImageNet mean and std, EfficientNet-Lite0 (TF) (v - 127) / 128.
INPUT_SCALES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "minus_one_one": ((0.5,), (0.5,)),
    "torchvision": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "lite0": ((127 / 255,), (128 / 255,)),
}


def _affine(scale: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) x 255 as float32 [k]: x -> (x - mean) / std on the 0..255 scale."""
    if scale not in INPUT_SCALES:
        raise ValueError(f"input_scale={scale!r}: use one of {', '.join(INPUT_SCALES)}")
    mean, std = (np.asarray(v, np.float64) * 255 for v in INPUT_SCALES[scale])
    return mean.astype(np.float32), std.astype(np.float32)


def _lut(scale: str) -> np.ndarray:
    """f32[256, k]: the scaled value of every uint8 level, per channel (k = 1 or 3)."""
    mean, std = _affine(scale)
    return (np.arange(256, dtype=np.float32)[:, None] - mean) / std


_LUTS = {name: _lut(name) for name in INPUT_SCALES}


def normalize(images: np.ndarray, scale: str = "minus_one_one") -> np.ndarray:
    """uint8 [..., C] -> float32 in `scale` (default [-1, 1]); a table lookup: fast."""
    mean, std = _affine(scale)
    if len(mean) > 1 and images.shape[-1] != len(mean):
        raise ValueError(
            f"input_scale={scale!r} is per channel ({len(mean)}); the images have "
            f"{images.shape[-1]} channels (set --config.channels={len(mean)})"
        )
    if images.dtype != np.uint8:
        return (images.astype(np.float32) - mean) / std
    lut = _LUTS[scale]
    if lut.shape[1] == 1:
        return np.take(lut[:, 0], images)
    return np.stack([np.take(lut[:, c], images[..., c]) for c in range(lut.shape[1])], axis=-1)


def _crop(pad: float) -> Op:
    """Pad by `pad` and crop back at a random offset: a random translation, filled with 0."""
    p = int(pad)

    def op(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = x.shape[:2]
        dy, dx = (int(v) - p for v in rng.integers(0, 2 * p + 1, size=2))
        if dy == 0 and dx == 0:
            return x
        out = np.zeros_like(x)
        out[max(0, -dy) : min(h, h - dy), max(0, -dx) : min(w, w - dx)] = x[
            max(0, dy) : min(h, h + dy), max(0, dx) : min(w, w + dx)
        ]
        return out

    return op


def _flip() -> Op:
    def op(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return x[:, ::-1] if rng.random() < 0.5 else x

    return op


def _rotate(degrees: float) -> Op:
    def op(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        angle = float(rng.uniform(-degrees, degrees))
        return from_pil(to_pil(x).rotate(angle, Image.BILINEAR), x.shape[-1])

    return op


def _scale(lo: float, hi: float) -> Op:
    def op(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = x.shape[:2]
        s = float(rng.uniform(lo, hi))
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        y = from_pil(to_pil(x).resize((nw, nh), Image.BILINEAR), x.shape[-1])
        out = np.zeros_like(x)
        # Centre crop (zoom in) or centre pad (zoom out) back to h x w.
        sy, sx = max(0, (nh - h) // 2), max(0, (nw - w) // 2)
        dy, dx = max(0, (h - nh) // 2), max(0, (w - nw) // 2)
        ch, cw = min(h, nh), min(w, nw)
        out[dy : dy + ch, dx : dx + cw] = y[sy : sy + ch, sx : sx + cw]
        return out

    return op


OPS: dict[str, tuple[Callable[..., Op], int]] = {
    "crop": (_crop, 1),
    "flip": (_flip, 0),
    "rotate": (_rotate, 1),
    "scale": (_scale, 2),
}
_SPEC = re.compile(r"^\s*([a-z_]+)\s*(?:\(([^)]*)\))?\s*$")


def parse(spec: str) -> list[Op]:
    """`"crop(4)|flip"` -> ops; `""` or `"none"` -> no augmentation."""
    if not spec or spec.strip() == "none":
        return []
    ops = []
    for part in spec.split("|"):
        m = _SPEC.match(part)
        if not m or m.group(1) not in OPS:
            raise ValueError(
                f"unknown augmentation {part.strip()!r} in {spec!r}; valid ops: "
                "crop(pad), flip, rotate(degrees), scale(lo,hi), joined with '|'"
            )
        name, raw = m.group(1), m.group(2)
        args = [float(a) for a in raw.split(",")] if raw and raw.strip() else []
        make, nargs = OPS[name]
        if len(args) != nargs:
            raise ValueError(f"augmentation {name} takes {nargs} argument(s), got {part.strip()!r}")
        ops.append(make(*args))
    return ops
