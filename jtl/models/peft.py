"""Parameter-efficient fine-tuning mechanics: LoRA factors, bottleneck adapters, norm discovery.

No model code is forked. A PEFT run's params tree is the base model's tree plus one extra
subtree per method, and `PeftModel.apply` turns it back into what the base model expects:

- `lora/<path of a kernel>/{a, b}`: a *parameter transform*. Before `model.apply` every
  targeted kernel W becomes W + (alpha / r) * reshape(a @ b), with a: (fan_in, r) and
  b: (r, fan_out), b zero-initialised. A conv kernel (kh, kw, Cin, Cout) is the matrix
  (kh*kw*Cin, Cout), so the update is a (kh, kw, Cin -> r) conv followed by a 1x1 (r -> Cout)
  conv: the factorisation Hugging Face peft's `Conv2d` LoRA uses, valid for any stride,
  padding or depthwise grouping because it only changes the kernel's values.
  Why a transform and not `nn.intercept_methods` around each layer: it works for every
  kernel in every jtl model (flax `Dense`, `Conv`, `StdConv`, the CPU conv path of
  `jtl.models.conv`, depthwise convs) with one function and no knowledge of how a layer calls
  its kernel; merged and unmerged models are the same computation by construction (B = 0 gives
  bit-identical logits); and on CPU the merge is r*fan_in*fan_out FLOPs per kernel, negligible
  next to the convolutions. The price: the backward pass forms the full weight gradient of
  each *targeted* kernel (it is needed for dL/da and dL/db) - so untargeted frozen layers keep
  their backward weight-gradient removed by XLA, targeted ones do not. Trainable parameters
  and optimizer state are what LoRA saves here, not backward FLOPs.
- `adapter/<block>/{down, up}/{kernel, bias}`: bottleneck adapters added after whole blocks
  (y + up(relu(down(y))), up zero-initialised, over the last axis: channels for conv blocks,
  hidden size for BERT layers). A block is a flax submodule, so these *are* inserted with
  `nn.intercept_methods`: the interceptor adds the adapter to the block's `__call__` output.

The base weights stay in their usual place (`backbone/...`, `head/...`) and are frozen by
ordinary optimizer rules (`set_to_zero`), so they hold no optimizer state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jtl.models import norm as norm_lib
from jtl.runtime.errors import ConfigError, UserError

LORA = "lora"
ADAPTER = "adapter"
PEFT_KEYS = (LORA, ADAPTER)
NORM_TYPES = (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, norm_lib.GroupNorm)


def _path(key: tuple[str, ...]) -> str:
    return "/".join(str(k) for k in key)


def lora_targets(params: dict, patterns: Sequence[str]) -> list[tuple[str, ...]]:
    """Kernel paths (2-D Dense or 4-D conv) that fully match one of `patterns`.

    A pattern that matches no kernel is an error (a typo must not silently train nothing).
    """
    flat = traverse_util.flatten_dict(params)
    kernels = [k for k, v in flat.items() if k[0] not in PEFT_KEYS and len(v.shape) in (2, 4)]
    out: list[tuple[str, ...]] = []
    for pat in patterns:
        rx = re.compile(pat)
        hit = [k for k in kernels if rx.fullmatch(_path(k))]
        if not hit:
            examples = ", ".join(_path(k) for k in kernels[:6])
            raise ConfigError(
                f"strategy_args.lora_targets pattern {pat!r} matches no 2-D or 4-D kernel",
                f"kernels look like: {examples}",
            )
        out.extend(k for k in hit if k not in out)
    return out


def init_lora(params: dict, targets: Iterable[tuple[str, ...]], rank: int, rng: jax.Array) -> dict:
    """LoRA factors for each target: a ~ N(0, 1/fan_in) (kaiming-like), b = 0 (no change yet)."""
    if rank < 1:
        raise ConfigError(f"strategy_args.lora_rank={rank} must be >= 1")
    flat = traverse_util.flatten_dict(params)
    out: dict[tuple[str, ...], jax.Array] = {}
    for i, key in enumerate(targets):
        w = flat[key]
        fan_in, fan_out = int(np.prod(w.shape[:-1])), int(w.shape[-1])
        a = jax.random.normal(jax.random.fold_in(rng, i), (fan_in, rank), jnp.float32)
        out[key + ("a",)] = a / np.sqrt(fan_in)
        out[key + ("b",)] = jnp.zeros((rank, fan_out), jnp.float32)
    return traverse_util.unflatten_dict(out)


def lora_scale(strategy_args: Any) -> float:
    """LoRA's alpha / r from a run's `strategy_args` (a ConfigDict or its saved dict)."""
    return float(strategy_args["lora_alpha"]) / int(strategy_args["lora_rank"])


def merge_lora(params: dict, scale: float) -> dict:
    """The base params with W + scale * reshape(a @ b) in place of each targeted W.

    Params without a `lora` subtree are returned unchanged (so merging twice is harmless).
    """
    if LORA not in params:
        return params
    base = {k: v for k, v in params.items() if k != LORA}
    flat = traverse_util.flatten_dict(base)
    factors = traverse_util.flatten_dict(params[LORA])
    for key, a in factors.items():
        if key[-1] != "a":
            continue
        kernel = key[:-1]
        w = flat[kernel]
        delta = (a @ factors[kernel + ("b",)]).reshape(w.shape).astype(w.dtype)
        flat[kernel] = w + scale * delta
    return traverse_util.unflatten_dict(flat)


def adapter_dims(model: Any, variables: dict, x: Any, blocks: Sequence[str]) -> dict[str, int]:
    """Feature width (last axis) of each named block's output, from an abstract forward pass."""
    dims: dict[str, int] = {}
    wanted = {("backbone", b) for b in blocks}

    def record(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        out = next_fun(*args, **kwargs)
        path = tuple(context.module.path)
        if context.method_name == "__call__" and path in wanted:
            dims[path[1]] = int(out.shape[-1])
        return out

    def run(v: dict) -> Any:
        with nn.intercept_methods(record):
            return model.apply(v, x, train=False)

    jax.eval_shape(run, variables)
    missing = [b for b in blocks if b not in dims]
    if missing:
        raise ConfigError(
            f"strategy_args.adapter_blocks: {', '.join(missing)} not called by the model",
            f"use names from block_names(): {', '.join(model.block_names())}",
        )
    return dims


def init_adapters(dims: dict[str, int], reduction: int, rng: jax.Array) -> dict:
    """Per block: down (C -> max(1, C // reduction), lecun normal) and up (zeros): identity."""
    if reduction < 1:
        raise ConfigError(f"strategy_args.adapter_reduction={reduction} must be >= 1")
    out: dict[str, Any] = {}
    for i, (block, c) in enumerate(sorted(dims.items())):
        d = max(1, c // reduction)
        down = nn.initializers.lecun_normal()(jax.random.fold_in(rng, i), (c, d), jnp.float32)
        out[block] = {
            "down": {"kernel": down, "bias": jnp.zeros((d,), jnp.float32)},
            "up": {"kernel": jnp.zeros((d, c), jnp.float32), "bias": jnp.zeros((c,), jnp.float32)},
        }
    return out


def _adapter(p: dict, y: jax.Array) -> jax.Array:
    h = nn.relu(y @ p["down"]["kernel"].astype(y.dtype) + p["down"]["bias"].astype(y.dtype))
    return y + h @ p["up"]["kernel"].astype(y.dtype) + p["up"]["bias"].astype(y.dtype)


def norm_module_paths(model: Any, variables: dict, x: Any) -> list[str]:
    """`/`-joined paths of every normalisation module that owns parameters (BN, LN, GN)."""
    found: list[str] = []

    def record(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        m = context.module
        if isinstance(m, NORM_TYPES) and context.method_name == "__call__":
            p = _path(tuple(m.path))
            if p not in found:
                found.append(p)
        return next_fun(*args, **kwargs)

    def run(v: dict) -> Any:
        with nn.intercept_methods(record):
            return model.apply(v, x, train=False)

    jax.eval_shape(run, variables)
    flat = traverse_util.flatten_dict(variables["params"])
    owners = {_path(k[:-1]) for k in flat}
    return [p for p in found if p in owners]


class PeftModel:
    """The base classifier applied to a params tree that also holds `lora` / `adapter` subtrees.

    Quacks like the flax module for what the trainer uses (`apply`, `block_names`, attribute
    access); `apply` merges LoRA factors into the kernels and inserts adapters around blocks.
    """

    def __init__(self, base: Any, lora_scale: float = 0.0) -> None:
        self.base = base
        self.lora_scale = float(lora_scale)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def block_names(self) -> list[str]:
        return list(self.base.block_names())

    def base_variables(self, variables: dict) -> dict:
        """Plain variables for the base model: LoRA merged, adapters dropped."""
        params = merge_lora(variables["params"], self.lora_scale)
        params = {k: v for k, v in params.items() if k != ADAPTER}
        return {**variables, "params": params}

    def apply(self, variables: dict, *args: Any, **kwargs: Any) -> Any:
        adapters = variables["params"].get(ADAPTER)
        plain = self.base_variables(variables)
        if not adapters:
            return self.base.apply(plain, *args, **kwargs)

        def add_adapter(next_fun: Any, a: Any, kw: Any, context: Any) -> Any:
            out = next_fun(*a, **kw)
            path = tuple(context.module.path)
            if (
                context.method_name == "__call__"
                and len(path) == 2
                and path[0] == "backbone"
                and path[1] in adapters
            ):
                out = _adapter(adapters[path[1]], out)
            return out

        with nn.intercept_methods(add_adapter):
            return self.base.apply(plain, *args, **kwargs)


def merged_variables(config: dict[str, Any], variables: dict[str, Any]) -> dict[str, Any]:
    """The base model's variables for a trained PEFT run (LoRA merged; adapters refused)."""
    params = dict(variables["params"])
    if ADAPTER in params:
        raise UserError(
            "cannot merge an adapter run: adapters add layers the base model does not have",
            "retrain with --config.strategy=lora for a mergeable model",
        )
    if LORA in params:
        scale = lora_scale(config["strategy_args"])
        params = jax.tree.map(np.asarray, merge_lora(params, scale))
    return {**variables, "params": params}
