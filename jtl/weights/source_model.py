"""What model a checkpoint directory holds, and loading it with its weights.

One answer for every tool that starts from a checkpoint (`jtl predict`, `jtl advise`): a
`jtl import` output describes itself in `import.json`, a run workdir in `config.json`.

Input scaling (`SourceModel.preprocess`) differs by where the weights come from, and a wrong
one silently degrades predictions and transferability scores:

| preprocess | models | input |
|---|---|---|
| `lite0` | imported EfficientNet-Lite0 | crop 224/256, bicubic resize, (x - 127) / 128 |
| `torchvision` | imported torchvision ResNets | resize 256, crop 224, (x/255 - mean) / std |
| `minus_one_one` | jtl runs | resize to the run's size, (x - 127.5) / 127.5 |
| `wordpiece` | imported BERT / MiniLM | text (token ids), not images |

`import.json` records it (`preprocess`); imports written before it existed get it from the model
name (`resnet*` -> torchvision, `efficientnet_lite0` -> lite0). This module is the one reader of
a checkpoint directory's description: the data layer and the config get what they need from it
resolved (`target_data`, `resolve_input_scale`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from etils import epath

from jtl.data.target import TargetData
from jtl.weights import image_recipes

# Resize/crop recipes: imports crop like their original evaluation; runs ("fit", and
# "minus_one_one" from before model.json) resize the whole image as the data pipeline does.
PREPROCESS = ("lite0", "torchvision", "fit", "minus_one_one", "wordpiece")


@dataclasses.dataclass
class SourceModel:
    kind: str  # "import" or "run"
    model: str
    kwargs: dict[str, Any]  # model kwargs without num_classes
    num_classes: int
    class_names: list[str]
    image_size: int
    channels: int
    preprocess: str = "minus_one_one"
    # uint8 -> input scale (jtl.data.augment.INPUT_SCALES) after `preprocess`'s resize/crop;
    # "" = the one that goes with `preprocess`.
    input_scale: str = ""

    def __post_init__(self) -> None:
        self.input_scale = self.input_scale or scale_for(self.preprocess)

    @property
    def is_text(self) -> bool:
        return self.preprocess == "wordpiece"


def source_dataset(directory: Any) -> str | None:
    """The data set a trained source ran on (its model.json or config.json); None for
    imports and unreadable directories."""
    meta = self_description(directory) or {}
    if meta.get("dataset"):
        return str(meta["dataset"])
    d = epath.Path(directory)
    d = d.parent if d.name == "checkpoints" else d
    if (d / "config.json").exists():
        return json.loads((d / "config.json").read_text()).get("dataset")
    return None


def resolve_input_scale(config: mlc.ConfigDict) -> str:
    """`input_scale`, with "auto" read from the source (`init.checkpoint`), else [-1, 1]."""
    scale = config.get("input_scale", "auto")
    if scale != "auto":
        return scale
    if config.init.checkpoint:
        return source_input_scale(config.init.checkpoint)
    return "minus_one_one"


def preprocess_for_model(model: str) -> str:
    """The input recipe of an import that did not record one (by model name)."""
    if model.startswith("resnet"):
        return "torchvision"
    if model.startswith("efficientnet_lite"):
        return "lite0"
    if model in ("bert", "minilm_l6"):
        return "wordpiece"
    return "minus_one_one"


def scale_for(preprocess: str) -> str:
    """The input scale that goes with an import's `preprocess` recipe."""
    return preprocess if preprocess in ("torchvision", "lite0") else "minus_one_one"


def self_description(directory: Any) -> dict[str, Any] | None:
    """A checkpoint directory's `import.json` (imports, exports) or `model.json` (runs)."""
    directory = epath.Path(directory)
    # `init.checkpoint` may name the run or import itself, or its `checkpoints/` directory.
    for d in (directory, directory.parent) if directory.name == "checkpoints" else (directory,):
        for name in ("import.json", "model.json"):
            if (d / name).exists():
                return json.loads((d / name).read_text())
    return None


def source_input_scale(directory: str | Path) -> str:
    """The input scale a checkpoint directory's model expects (minus_one_one if unrecorded)."""
    meta = self_description(directory)
    if meta is None:
        return "minus_one_one"
    return meta.get("input_scale") or scale_for(
        meta.get("preprocess") or preprocess_for_model(meta["model"])
    )


def target_data(config: mlc.ConfigDict) -> TargetData:
    """The run's target data, fed at the input scale its source expects."""
    source = config.init.checkpoint
    return TargetData(
        config, resolve_input_scale(config), source_dataset(source) if source else None
    )


MODEL_JSON = "model.json"


def model_json(
    model: str,
    kwargs: dict[str, Any],
    class_names: list[str],
    image_size: int,
    channels: int,
    input_scale: str,
    text: bool = False,
) -> dict[str, Any]:
    """A run's `model.json`: `import.json`'s schema, so a run workdir describes itself.

    `preprocess` "fit" is the data pipeline's (whole image resized, no crop), then
    `input_scale`; text runs take WordPiece ids.
    """
    return {
        "model": model,
        "model_kwargs": dict(kwargs),
        "class_names": list(class_names),
        "image_size": int(image_size),
        "channels": int(channels),
        "preprocess": "wordpiece" if text else "fit",
        "input_scale": input_scale,
    }


def prepare_image(info: SourceModel, image: np.ndarray) -> np.ndarray:
    """One uint8 HWC image -> the float32 model input [S, S, C] this source expects."""
    if info.is_text:
        raise ValueError(
            f"{info.model} is a text model (preprocess 'wordpiece'); it takes token ids, not images"
        )
    if info.preprocess == "lite0":
        return image_recipes.preprocess_lite0(image, info.image_size)
    if info.preprocess == "torchvision":
        return image_recipes.preprocess_torchvision(image, info.image_size)
    from jtl.data.augment import fit_image, normalize

    return normalize(fit_image(image, info.image_size, info.channels), info.input_scale)


def rescale_batch(info: SourceModel, x: np.ndarray) -> np.ndarray:
    """A batch in jtl's pipeline scale ([-1, 1], resized) -> this source's input scale.

    For `jtl advise`, which reads the target through jtl's data pipeline: the pixel values are
    mapped exactly (x255 = 127.5 x + 127.5); crops are the pipeline's (the whole image).
    """
    if info.is_text:
        raise ValueError(f"{info.model} is a text model; image batches do not apply")
    from jtl.data.augment import normalize

    x = np.asarray(x, np.float32)
    if info.input_scale == "minus_one_one":
        return x
    return normalize(x * 127.5 + 127.5, info.input_scale)


def describe(directory: str | Path) -> SourceModel:
    """Reads `import.json` (imports, exports) or `model.json` (runs), else a legacy run's
    `config.json` (which loads its data set for the classes); none is a clear error."""
    directory = Path(directory).absolute()
    meta = self_description(directory)
    if meta is not None:
        kwargs = dict(meta.get("model_kwargs") or {})
        names = list(meta.get("class_names") or [])
        preprocess = meta.get("preprocess") or preprocess_for_model(meta["model"])
        return SourceModel(
            "import" if (directory / "import.json").exists() else "run",
            meta["model"],
            kwargs,
            int(kwargs.pop("num_classes", len(names))),
            names,
            int(meta.get("image_size", 224)),
            int(meta.get("channels", 3)),  # `jtl export` records it; imports are RGB
            preprocess,
            meta.get("input_scale") or scale_for(preprocess),
        )
    if (directory / "config.json").exists():  # a run from before model.json
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


def load(
    directory: str | Path, example: np.ndarray, base: str | None = None
) -> tuple[SourceModel, Any, dict]:
    """`(description, flax model, variables)`; `example` is one input batch for shapes; `base`:
    where a PEFT run's base moved to."""
    from jtl.models import get_model

    info = describe(directory)
    model = get_model(info.model, info.num_classes, **info.kwargs)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), example, train=False))
    target = {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})}
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), target)
    from jtl.weights.slim_checkpoint import load_variables  # a PEFT run loads with its base, merged

    variables, _ = load_variables(directory, target, exclude=(), base=base)
    if not variables["batch_stats"]:
        variables = {"params": variables["params"]}
    return info, model, variables
