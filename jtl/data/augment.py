"""Image preprocessing and augmentation ops, chosen in the config by a spec string.

    augment = "crop(4)|flip|rotate(15)|scale(0.9,1.1)"

Ops act on one uint8 HWC image already resized to the model's input size, with a
`np.random.Generator` that grain seeds per example and epoch (deterministic, resumable).
"""

from __future__ import annotations

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


def fit_image(image: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """Resize to `image_size` (bilinear) and convert channels (1 -> 3 repeat, 3 -> 1 mean)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 4:
        image = image[..., :3]
    if image.shape[0] != image_size or image.shape[1] != image_size:
        resized = to_pil(image).resize((image_size, image_size), Image.BILINEAR)
        image = from_pil(resized, image.shape[-1])
    c = image.shape[-1]
    if c == channels:
        return image
    if c == 1 and channels == 3:
        return np.repeat(image, 3, axis=-1)
    if c == 3 and channels == 1:
        return np.round(image.astype(np.float32).mean(-1, keepdims=True)).astype(np.uint8)
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1], the input scale of every jtl model."""
    return (images.astype(np.float32) - 127.5) / 127.5


def _crop(pad: float) -> Op:
    p = int(pad)

    def op(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = x.shape[:2]
        padded = np.pad(x, ((p, p), (p, p), (0, 0)))
        i, j = rng.integers(0, 2 * p + 1, size=2)
        return padded[i : i + h, j : j + w]

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
