"""`cnn_small`: a ~0.1M-parameter plain CNN, cheap enough for CPU tests and MNIST-sized studies.

Same structure rules as the ResNets: top-level submodules `stem, block1, ..., blockN`, one per
conv block (conv 3x3 + norm + ReLU, optionally followed by a 2x2 max-pool), then global average
pooling -> float32 features [B, D].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.models.norm import check_norm, make_norm
from jtl.models.resnet import he_init, scaled


class ConvBlock(nn.Module):
    """conv 3x3 + norm + ReLU (+ 2x2 max-pool)."""

    features: int
    pool: bool = False
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv, norm = make_norm(self.norm, self.dtype)
        x = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=he_init, name="conv")(
            x
        )
        x = nn.relu(norm(train, name="norm")(x))
        if self.pool:
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return x


class SmallCNN(nn.Module):
    """Backbone: `stem` + `block1..blockN` conv blocks (N = len(widths) - 1), then average pool.

    `pools[i]` says whether conv block i (0 = stem) ends with a 2x2 max-pool.
    `inference_blocks`: see `ResNet`.
    """

    widths: Sequence[int] = (32, 48, 64, 96)
    pools: Sequence[bool] = (False, True, False, False)
    norm: str = "batch"
    width: float = 1.0
    dtype: Any = jnp.float32

    @nn.nowrap
    def block_names(self) -> list[str]:
        """Top-level submodule names in depth order."""
        return ["stem"] + [f"block{i}" for i in range(1, len(self.widths))]

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, inference_blocks: Sequence[str] = ()
    ) -> jax.Array:
        for name, w, pool in zip(self.block_names(), self.widths, self.pools, strict=True):
            x = ConvBlock(scaled(w, self.width), pool, self.norm, self.dtype, name=name)(
                x, train and name not in inference_blocks
            )
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def cnn_small(
    norm: str = "batch",
    width: float = 1.0,
    dtype: Any = jnp.float32,
    widths: Sequence[int] | None = None,
    pools: Sequence[bool] | None = None,
) -> SmallCNN:
    """4 conv blocks 32-48-pool-64-96 + global average pool: ~98K backbone parameters (RGB in).

    Why this shape: one pooling step keeps 14x14 maps for 28x28 inputs, and widths are chosen to
    land at ~0.1M parameters, small enough for CPU runs yet able to fit MNIST-like tasks.
    """
    kw: dict[str, Any] = {}
    if widths is not None:
        kw["widths"] = tuple(int(w) for w in widths)
    if pools is not None:
        kw["pools"] = tuple(bool(p) for p in pools)
    if len(kw.get("widths", SmallCNN.widths)) != len(kw.get("pools", SmallCNN.pools)):
        raise ValueError(f"cnn_small: widths and pools differ in length: {kw}")
    return SmallCNN(norm=check_norm(norm), width=width, dtype=dtype, **kw)
