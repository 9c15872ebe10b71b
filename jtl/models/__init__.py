"""Model registry: `get_model(name, num_classes, **kwargs) -> Classifier`.

Image models register a backbone builder (wrapped in `Classifier`); text models (`bert`,
`minilm_l6`) register a whole-classifier builder `(num_classes, **kwargs) -> BertClassifier`,
which follows the same contract (`backbone`/`head` params, `block_names()`, `features`,
`__call__(x, train=..., inference_blocks=...)` with `x` a dict of token arrays).

Each registered name maps to a backbone builder; `**kwargs` (norm, width, stem, dtype, ...) go to
that builder, and a kwarg it does not take is an error (a typo in a config must not silently fall
back to a default).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from jtl.models.bert import bert_classifier
from jtl.models.classifier import Classifier
from jtl.models.cnn import cnn_small
from jtl.models.efficientnet_lite import efficientnet_lite0
from jtl.models.norm import NORMS, make_norm
from jtl.models.resnet import cifar_resnet, imagenet_resnet, resnet18, resnet20, resnet50

__all__ = [
    "NORMS",
    "TEXT_MODELS",
    "Classifier",
    "default_width",
    "get_model",
    "list_models",
    "make_norm",
    "param_count",
    "register_model",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "cnn_small": cnn_small,
    "resnet20": resnet20,
    "resnet32": functools.partial(cifar_resnet, 32),
    "resnet56": functools.partial(cifar_resnet, 56),
    "resnet110": functools.partial(cifar_resnet, 110),
    "cifar_resnet": cifar_resnet,  # needs depth=6n+2
    "resnet18": resnet18,
    "resnet34": functools.partial(imagenet_resnet, 34),
    "resnet50": resnet50,
    "resnet101": functools.partial(imagenet_resnet, 101),
    "efficientnet_lite0": efficientnet_lite0,
}
# Builders of a whole classifier (num_classes, **kwargs); kwargs are BertConfig fields.
_CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {
    "bert": bert_classifier,  # defaults: the all-MiniLM-L6-v2 architecture
    "minilm_l6": bert_classifier,
}
TEXT_MODELS = tuple(_CLASSIFIERS)
# Width multipliers the reference configs use when none is given (`width=0` in
# configs/transfer.py and configs/mnist_pretrain.py). ResNet-20 at 0.5 is the MNIST source of the
# reference studies; cnn_small is already ~0.1M parameters at 1.0, and at 0.5 (16-32-64 channels)
# it is a strawman scratch baseline (issue 11).
DEFAULT_WIDTHS = {"resnet20": 0.5}


def default_width(name: str) -> float:
    """The width multiplier a reference config uses for model `name` (1.0 unless listed)."""
    return DEFAULT_WIDTHS.get(name, 1.0)


def register_model(name: str, builder: Callable[..., nn.Module]) -> None:
    """Adds a backbone builder `(**kwargs) -> backbone` (e.g. from another models module).

    The backbone must follow the `Classifier` contract: `block_names()`, top-level submodules
    `stem, block1..blockN`, `__call__(x, train, inference_blocks)` -> float32 features [B, D].
    """
    if name in _REGISTRY or name in _CLASSIFIERS:
        raise ValueError(f"Model {name!r} is already registered")
    _REGISTRY[name] = builder


def list_models() -> list[str]:
    """Registered model names (sorted)."""
    return sorted([*_REGISTRY, *_CLASSIFIERS])


def _check_kwargs(name: str, builder: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [
        k
        for k, p in params.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"Model {name!r} got unknown kwargs {unknown}; valid kwargs: {', '.join(valid)}"
        )


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """`Classifier(backbone=<name>(**kwargs), num_classes)` (a `BertClassifier` for text
    models); ValueError on unknown name/kwarg."""
    if name in _CLASSIFIERS:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        return _CLASSIFIERS[name](int(num_classes), **kwargs)
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; valid models: {', '.join(list_models())}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    builder = _REGISTRY[name]
    _check_kwargs(name, builder, kwargs)
    return Classifier(backbone=builder(**kwargs), num_classes=int(num_classes))


def param_count(tree: Any) -> int:
    """Number of scalars in a pytree of arrays or `jax.ShapeDtypeStruct`s (from eval_shape)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
