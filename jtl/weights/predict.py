"""`jtl predict`: top-k classes of one image under an imported or trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jtl.evaluation import run_summary
from jtl.weights import source_model


def load_image(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def temperature(checkpoint: str | Path) -> float:
    """The temperature a run fitted on its validation split (summary.json), else 1 (imports,
    runs from before calibration)."""
    summary = run_summary.read(checkpoint) or {}
    t = summary.get("temperature")
    return float(t) if isinstance(t, int | float) and t > 0 else 1.0


def predict(
    checkpoint: str | Path,
    image: np.ndarray,
    top: int = 5,
    calibrated: bool = True,
    base: str | None = None,
) -> list[tuple[str, float]]:
    """Top-`top` (class name, probability) pairs for one uint8 HWC image; with `calibrated`,
    the probabilities are the run's temperature-scaled ones (jtl.evaluation.calibration)."""
    info = source_model.describe(checkpoint)
    # The source's own input scaling (ImageNet mean/std for torchvision ResNets, (x-127)/128
    # for Lite0, [-1, 1] for jtl runs): recorded in import.json, see jtl.weights.source_model.
    x = source_model.prepare_image(info, image)[None]
    _, model, variables = source_model.load(checkpoint, x, base)
    logits = np.asarray(model.apply(variables, x, train=False), np.float64)[0]
    if calibrated:
        logits = logits / temperature(checkpoint)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)[:top]
    names = info.class_names
    return [(names[i] if i < len(names) else str(i), float(probs[i])) for i in order]
