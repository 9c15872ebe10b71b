"""`cnn_small`: a ~0.1M-parameter plain CNN, cheap enough for CPU tests and MNIST-sized studies.

It is the scratch baseline of the reference studies, so it must be a strong small CNN, not a
strawman: see `cnn_small` for the measured reasons behind its shape and init (issue 11,
docs/results.md "Why jtl's SGD arms trailed PyTorch").

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
from jtl.models.pooling import max_pool
from jtl.models.resnet import he_init, scaled

# Kernel initializers by name. "torch" is PyTorch's default for Conv2d/Linear
# (kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))): a ~3x smaller weight variance than He's.
INITS = {
    "he": he_init,
    "torch": nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
}


class ConvBlock(nn.Module):
    """conv 3x3 + norm + ReLU (+ 2x2 max-pool)."""

    features: int
    pool: bool = False
    norm: str = "batch"
    dtype: Any = jnp.float32
    init: str = "he"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv, norm = make_norm(self.norm, self.dtype)
        kernel_init = INITS[self.init]
        x = conv(
            self.features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=kernel_init, name="conv"
        )(x)
        x = nn.relu(norm(train, name="norm")(x))
        if self.pool:
            x = max_pool(x, (2, 2), strides=(2, 2))
        return x


class SmallCNN(nn.Module):
    """Backbone: `stem` + `block1..blockN` conv blocks (N = len(widths) - 1), then average pool.

    `pools[i]` says whether conv block i (0 = stem) ends with a 2x2 max-pool.
    `inference_blocks`: see `ResNet`.
    """

    widths: Sequence[int] = (32, 64, 128)
    pools: Sequence[bool] = (True, True, False)
    norm: str = "batch"
    width: float = 1.0
    dtype: Any = jnp.float32
    init: str = "torch"

    @nn.nowrap
    def block_names(self) -> list[str]:
        """Top-level submodule names in depth order."""
        return ["stem"] + [f"block{i}" for i in range(1, len(self.widths))]

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, inference_blocks: Sequence[str] = ()
    ) -> jax.Array:
        for name, w, pool in zip(self.block_names(), self.widths, self.pools, strict=True):
            x = ConvBlock(scaled(w, self.width), pool, self.norm, self.dtype, self.init, name=name)(
                x, train and name not in inference_blocks
            )
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def cnn_small(
    norm: str = "batch",
    width: float = 1.0,
    dtype: Any = jnp.float32,
    widths: Sequence[int] | None = None,
    pools: Sequence[bool] | None = None,
    init: str = "torch",
) -> SmallCNN:
    """3 conv blocks 32-pool-64-pool-128 + global average pool: ~93K backbone parameters (RGB in).

    Why this shape and init (measured with bench/twin_pytorch.py, docs/results.md):
    - Two 2x2 pools (28 -> 14 -> 7) give the last conv an 18-pixel receptive field and cost
      ~7.4M multiply-adds per 28x28 image. The previous default, 32-48-pool-64-96 with one pool
      (14x14 maps to the end, ~14-pixel receptive field, ~27M multiply-adds), trained 2 points
      worse on Fashion-MNIST in the PyTorch twin at 3.7x the compute; at width 0.5, as the
      configs ran it, it trailed this net by 2.3 points in jtl.
    - `init="torch"` (PyTorch's default, U(+-1/sqrt(fan_in))) instead of He fan_out normal: under
      BatchNorm a conv's scale does not change the function, only the effective learning rate
      (the relative step of a scale-invariant weight goes as lr / |w|^2). He's 2/fan_out variance
      is ~3x PyTorch's for the 64- and 128-wide layers, so at the same lr the net moved ~3x more
      slowly and under-fitted short budgets (issue 11: Fashion train accuracy = test accuracy).
    - `widths`, `pools` and `init="he"` rebuild the older variants for comparisons.
    """
    kw: dict[str, Any] = {}
    if widths is not None:
        kw["widths"] = tuple(int(w) for w in widths)
    if pools is not None:
        kw["pools"] = tuple(bool(p) for p in pools)
    if len(kw.get("widths", SmallCNN.widths)) != len(kw.get("pools", SmallCNN.pools)):
        raise ValueError(f"cnn_small: widths and pools differ in length: {kw}")
    if init not in INITS:
        raise ValueError(f"cnn_small: unknown init {init!r}; valid: {', '.join(INITS)}")
    return SmallCNN(norm=check_norm(norm), width=width, dtype=dtype, init=init, **kw)
