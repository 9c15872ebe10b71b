"""What model a checkpoint directory holds, and loading it with its weights.

One answer for every tool that starts from a checkpoint (`jtl predict`, `jtl advise`): a
`jtl import` output describes itself in `import.json`, a run workdir in `config.json`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jtl import checkpoint as ckpt


@dataclasses.dataclass
class SourceModel:
    kind: str  # "import" or "run"
    model: str
    kwargs: dict[str, Any]  # model kwargs without num_classes
    num_classes: int
    class_names: list[str]
    image_size: int
    channels: int


def describe(directory: str | Path) -> SourceModel:
    """Reads `import.json` or `config.json`; neither is a clear error."""
    directory = Path(directory).absolute()
    if (directory / "import.json").exists():
        meta = json.loads((directory / "import.json").read_text())
        kwargs = dict(meta.get("model_kwargs") or {})
        names = list(meta.get("class_names") or [])
        return SourceModel(
            "import",
            meta["model"],
            kwargs,
            int(kwargs.pop("num_classes", len(names))),
            names,
            int(meta.get("image_size", 224)),
            3,
        )
    if (directory / "config.json").exists():
        from jtl.data import registry

        cfg = json.loads((directory / "config.json").read_text())
        ds = registry.load(cfg["dataset"], data_dir=cfg.get("data_dir") or None)
        return SourceModel(
            "run",
            cfg["model"]["name"],
            dict(cfg["model"]["kwargs"]),
            ds.num_classes,
            ds.class_names or [str(i) for i in range(ds.num_classes)],
            int(cfg["image_size"]),
            int(cfg["channels"]),
        )
    raise FileNotFoundError(
        f"{directory} has neither import.json (from `jtl import`) nor config.json (a run workdir)"
    )


def load(directory: str | Path, example: np.ndarray) -> tuple[SourceModel, Any, dict]:
    """`(description, flax model, variables)`; `example` is one input batch for shapes."""
    from jtl.models import get_model

    info = describe(directory)
    model = get_model(info.model, info.num_classes, **info.kwargs)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), example, train=False))
    target = {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})}
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), target)
    variables, _ = ckpt.load_variables(directory, target, exclude=())
    if not variables["batch_stats"]:
        variables = {"params": variables["params"]}
    return info, model, variables
