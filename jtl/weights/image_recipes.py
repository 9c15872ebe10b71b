"""How each family of pretrained weights expects one image: the evaluation recipes of their
own pipelines, reproduced exactly (`jtl predict`, `SourceModel.preprocess`).

Why one module: a recipe belongs to the weights, not to the architecture, and both recipes
start the same way (uint8 HWC, grey repeated to RGB, alpha dropped). Training batches use the
data pipeline's `fit` recipe and an input scale instead (jtl.data.augment).

| recipe | weights | steps |
|---|---|---|
| `preprocess_lite0` | EfficientNet-Lite (TF) | crop S/(S+32), bicubic to S, (x - 127) / 128 |
| `preprocess_torchvision` | torchvision | short side S*256/224, crop S, ImageNet mean/std |
"""

from __future__ import annotations

import numpy as np

# EfficientNet-Lite's TF eval pipeline: MEAN_RGB = 127, STDDEV_RGB = 128 (not jtl's 127.5).
LITE0_MEAN, LITE0_STD = 127.0, 128.0
LITE0_CROP_PADDING = 32
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _rgb_uint8(image: np.ndarray, recipe: str) -> np.ndarray:
    """uint8 HWC (or HW) -> uint8 HW3: grey repeated to RGB, an alpha channel dropped."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{recipe} expects a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image[..., :3]


def preprocess_lite0(image: np.ndarray, image_size: int = 224) -> np.ndarray:
    """uint8 HWC image -> float32 [S, S, 3] exactly as EfficientNet-Lite was evaluated.

    The original TF eval pipeline: center crop `S / (S + 32)` of the shorter side (224/256,
    i.e. "resize 256 + center crop 224"), bicubic resize to S, then `(x - 127) / 128`.
    """
    from PIL import Image

    image = _rgb_uint8(image, "preprocess_lite0")
    h, w = image.shape[:2]
    crop = int(image_size / (image_size + LITE0_CROP_PADDING) * min(h, w))
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    image = image[top : top + crop, left : left + crop]
    resized = Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BICUBIC)
    return (np.asarray(resized, dtype=np.float32) - LITE0_MEAN) / LITE0_STD


def preprocess_torchvision(image: np.ndarray, image_size: int = 224) -> np.ndarray:
    """uint8 HWC -> float32 [S, S, 3] as torchvision's ImageNet weights were evaluated.

    Resize the shorter side to `S * 256 / 224` (bilinear), center crop S, scale to [0, 1],
    subtract the ImageNet mean and divide by its std per channel.
    """
    from PIL import Image

    image = _rgb_uint8(image, "preprocess_torchvision")
    h, w = image.shape[:2]
    short = int(round(image_size * 256 / 224))
    nh, nw = (
        (short, max(1, round(w * short / h))) if h <= w else (max(1, round(h * short / w)), short)
    )
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    crop = resized[top : top + image_size, left : left + image_size].astype(np.float32) / 255.0
    return (crop - IMAGENET_MEAN) / IMAGENET_STD
