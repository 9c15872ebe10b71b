"""Normalization chosen by name, so the model definitions stay norm-agnostic.

`make_norm(name, dtype)` returns `(conv, norm)`:

- `conv(features, kernel_size, ...)` builds the convolution that goes with the norm
  (`StdConv` for `"group_ws"`; a bias only when there is no norm to absorb it; on CPU its weight
  gradient runs as matmuls, see `jtl.models.conv`);
- `norm(train, zero_init=False, name=None)` builds the normalization layer (`zero_init` sets the
  scale to zero, used for the last norm of a residual branch).

Names: `"batch"` (BatchNorm, running stats in the `batch_stats` collection), `"group"`
(GroupNorm), `"group_ws"` (GroupNorm + weight-standardized convs, as in BiT / big_vision) and
`"none"` (identity; only sensible for shallow nets such as `cnn_small`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.models.conv import conv_general_dilated

NORMS = ("batch", "group", "group_ws", "none")
# Residual nets need a norm (He init + no norm diverges with depth): "none" is for cnn_small only.
BLOCK_NORMS = ("batch", "group", "group_ws")

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
GN_EPSILON = 1e-5
WS_EPSILON = 1e-5
MAX_GROUPS = 32
MIN_GROUP_SIZE = 2

NormFn = Callable[..., nn.Module]
ConvFn = Callable[..., nn.Module]


def num_groups(channels: int, max_groups: int = MAX_GROUPS, min_size: int = MIN_GROUP_SIZE) -> int:
    """Largest divisor of `channels` that is <= `max_groups` and leaves >= `min_size` per group.

    Why: Wu & He's 32 groups for every ImageNet ResNet layer (64+ channels) is reproduced exactly,
    while narrow CIFAR nets (16 channels) still get a valid split (8 groups of 2) rather than an
    error. Falls back to 1 group (LayerNorm over channels) when no divisor qualifies.
    """
    for g in range(min(max_groups, channels // min_size), 0, -1):
        if channels % g == 0:
            return g
    return 1


def weight_standardize(w: jax.Array, axis: tuple[int, ...], eps: float = WS_EPSILON) -> jax.Array:
    """Zero mean, unit variance over `axis` (big_vision's `weight_standardize`)."""
    w = w - jnp.mean(w, axis=axis, keepdims=True)
    return w / jnp.sqrt(jnp.mean(jnp.square(w), axis=axis, keepdims=True) + eps)


class StdConv(nn.Conv):
    """Conv whose kernel is standardized over (H, W, in) per output channel.

    Why: weight standardization makes GroupNorm nets train as well as BatchNorm ones without
    batch statistics (BiT), which matters for small fine-tuning batches. The stored parameter is
    the raw kernel; standardization happens in float32 on every call.
    """

    def param(self, name: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        p = super().param(name, *args, **kwargs)
        if name == "kernel":
            p = weight_standardize(p, axis=tuple(range(p.ndim - 1)))
        return p


class GroupNorm(nn.Module):
    """GroupNorm whose group count follows the channel count (see `num_groups`).

    Why not `nn.GroupNorm`: the group count must be picked from the input width at call time
    without adding a nesting level to the params tree (params stay `.../norm1/{scale,bias}`).
    Statistics are computed in float32 whatever the compute dtype.
    """

    epsilon: float = GN_EPSILON
    dtype: Any = jnp.float32
    scale_init: Callable[..., jax.Array] = nn.initializers.ones
    max_groups: int = MAX_GROUPS
    min_group_size: int = MIN_GROUP_SIZE

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        g = num_groups(c, self.max_groups, self.min_group_size)
        scale = self.param("scale", self.scale_init, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        xf = x.astype(jnp.float32).reshape(*x.shape[:-1], g, c // g)
        axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)  # spatial dims + channels within a group
        mean = jnp.mean(xf, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=axes, keepdims=True)
        y = ((xf - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        return (y * scale + bias).astype(self.dtype)


class Identity(nn.Module):
    """No normalization (`norm="none"`)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def check_norm(kind: str, allowed: tuple[str, ...] = NORMS) -> str:
    """Fail early (at model construction, not first call) on a misspelled norm name."""
    if kind not in allowed:
        raise ValueError(f"Unknown norm {kind!r}; valid norms: {', '.join(allowed)}")
    return kind


def make_norm(kind: str, dtype: Any = jnp.float32) -> tuple[ConvFn, NormFn]:
    """`(conv, norm)` builders for norm `kind`; unknown kinds raise ValueError listing NORMS.

    `dtype` may be a string ("bfloat16") as it comes from a config.
    """
    check_norm(kind)
    dtype = jnp.dtype(dtype)
    conv_cls = StdConv if kind == "group_ws" else nn.Conv
    conv = functools.partial(
        conv_cls, use_bias=kind == "none", dtype=dtype, conv_general_dilated=conv_general_dilated
    )

    def norm(train: bool, *, zero_init: bool = False, name: str | None = None) -> nn.Module:
        scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
        if kind == "batch":
            return nn.BatchNorm(
                use_running_average=not train,
                momentum=BN_MOMENTUM,
                epsilon=BN_EPSILON,
                dtype=dtype,
                scale_init=scale_init,
                name=name,
            )
        if kind in ("group", "group_ws"):
            return GroupNorm(dtype=dtype, scale_init=scale_init, name=name)
        return Identity(name=name)

    return conv, norm
