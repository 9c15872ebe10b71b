"""`jtl predict`: top-k classes of one image under an imported or trained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jtl import checkpoint as ckpt


def _load_image(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def _describe(directory: Path) -> dict[str, Any]:
    """Model, preprocessing and class names of a checkpoint dir (import or run workdir)."""
    if (directory / "import.json").exists():
        meta = json.loads((directory / "import.json").read_text())
        return {"kind": "import", **meta}
    if (directory / "config.json").exists():
        cfg = json.loads((directory / "config.json").read_text())
        from jtl.data import registry

        ds = registry.load(cfg["dataset"], data_dir=cfg.get("data_dir") or None)
        return {
            "kind": "run",
            "model": cfg["model"]["name"],
            "model_kwargs": cfg["model"]["kwargs"],
            "class_names": ds.class_names or [str(i) for i in range(ds.num_classes)],
            "image_size": cfg["image_size"],
            "channels": cfg["channels"],
        }
    raise FileNotFoundError(
        f"{directory} has neither import.json (from `jtl import`) nor config.json (a run workdir)"
    )


def predict(checkpoint: str | Path, image: np.ndarray, top: int = 5) -> list[tuple[str, float]]:
    """Top-`top` (class name, probability) pairs for one uint8 HWC image."""
    directory = Path(checkpoint).absolute()
    info = _describe(directory)
    names = list(info.get("class_names") or [])
    if info["kind"] == "import":
        from jtl.models import get_model
        from jtl.models.efficientnet_lite import preprocess_imagenet

        kwargs = dict(info.get("model_kwargs") or {})
        model = get_model(info["model"], kwargs.pop("num_classes", len(names)), **kwargs)
        x = preprocess_imagenet(image)[None]
    else:
        from jtl.data.augment import fit_image, normalize
        from jtl.models import get_model

        model = get_model(info["model"], len(names), **info["model_kwargs"])
        x = normalize(fit_image(image, info["image_size"], info["channels"]))[None]
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    target = {
        "params": abstract["params"],
        "batch_stats": abstract.get("batch_stats", {}),
    }
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), target)
    variables, _ = ckpt.load_variables(directory, target, exclude=())
    if not variables["batch_stats"]:
        variables = {"params": variables["params"]}
    logits = np.asarray(model.apply(variables, x, train=False))[0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)[:top]
    return [(names[i] if i < len(names) else str(i), float(probs[i])) for i in order]
