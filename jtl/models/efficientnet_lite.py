"""EfficientNet-Lite0 as a jtl backbone, numerically matching the original TF/PyTorch model.

Architecture (Tan & Le 2019, "lite" variant for edge devices): 3x3/2 stem conv (32 channels),
16 MBConv blocks, 1x1 head conv to 1280 channels, global average pool. The lite variants differ
from EfficientNet-B0 by: no squeeze-excite, ReLU6 instead of swish, and a stem/head width that
stays fixed (32/1280) under the width multiplier. Convolutions use TF "SAME" padding, which is
*asymmetric* for stride 2 (the extra row/column goes bottom/right); it is computed explicitly
(`tf_same_pads`) and applied with `jnp.pad`, so the model matches TF/PyTorch ports for every input
size. BatchNorm: epsilon 1e-3, momentum 0.99 (TF convention, same meaning in flax).

Top-level submodules, in depth order (jtl's "freeze the first k blocks" unit):
`stem` (conv + BN + ReLU6), `block1` ... `block16` (one MBConv each), and `block17` = the 1x1
head conv to 1280 + BN + ReLU6 (kept as its own block so it can be frozen/re-initialized
separately from the last MBConv). The backbone returns pooled float32 features [B, 1280];
`Classifier` adds the 1280 -> num_classes `head`. Dropout (0.2 before the classifier) and
drop-connect are training-only regularizers of the original and are not part of this module.

Input: float32 NHWC, already scaled. The pretrained Lite0 weights expect `(x_uint8 - 127) / 128`
(TF's MEAN_RGB=127, STDDEV_RGB=128), *not* jtl's data-pipeline convention `(x - 127.5) / 127.5`;
the difference is small (< 0.5%) but `jtl.weights.image_recipes.preprocess_lite0` gives the
exact original input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.models.conv import conv_general_dilated

he_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
IMAGE_SIZE = 224
MEAN_RGB = 127.0
STDDEV_RGB = 128.0

# (repeats, kernel, stride, expand_ratio, in, out) per stage: EfficientNet-B0's block args.
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_WIDTH = 32
HEAD_WIDTH = 1280


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) for one spatial dim: out = ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def same_conv(
    x: jax.Array,
    features: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    dtype: Any = jnp.float32,
    name: str | None = None,
) -> jax.Array:
    """Conv (no bias) after explicit TF "SAME" padding; `groups=features` makes it depthwise.

    Call inside a compact module: the `nn.Conv` is adopted by it, so params stay
    `.../<name>/kernel` without an extra nesting level.
    """
    if kernel > 1 or stride > 1:
        ph = tf_same_pads(x.shape[1], kernel, stride)
        pw = tf_same_pads(x.shape[2], kernel, stride)
        if any(ph + pw):
            x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding="VALID",
        feature_group_count=groups,
        use_bias=False,
        kernel_init=he_init,
        dtype=dtype,
        conv_general_dilated=conv_general_dilated,  # CPU: matmul weight grads, shift-sum depthwise
        name=name,
    )(x)


def _bn(train: bool, dtype: Any, name: str, momentum: float = BN_MOMENTUM) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=momentum,
        epsilon=BN_EPSILON,
        dtype=dtype,
        name=name,
    )


class ConvBN(nn.Module):
    """SAME conv + BatchNorm (+ ReLU6): the stem and the head-conv block."""

    features: int
    kernel: int
    stride: int = 1
    dtype: Any = jnp.float32
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = same_conv(x, self.features, self.kernel, self.stride, dtype=self.dtype, name="conv")
        return jax.nn.relu6(_bn(train, self.dtype, "bn", self.bn_momentum)(x))


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand + BN + ReLU6] -> kxk depthwise + BN + ReLU6 -> 1x1 project
    + BN, plus identity skip when stride 1 and in == out (no drop-connect at inference)."""

    in_features: int
    out_features: int
    kernel: int
    stride: int
    expand_ratio: int
    dtype: Any = jnp.float32
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        inputs = x
        mid = self.in_features * self.expand_ratio
        if self.expand_ratio != 1:
            x = same_conv(x, mid, 1, dtype=self.dtype, name="expand_conv")
            x = jax.nn.relu6(_bn(train, self.dtype, "expand_bn", self.bn_momentum)(x))
        x = same_conv(
            x, mid, self.kernel, self.stride, groups=mid, dtype=self.dtype, name="dw_conv"
        )
        x = jax.nn.relu6(_bn(train, self.dtype, "dw_bn", self.bn_momentum)(x))
        x = same_conv(x, self.out_features, 1, dtype=self.dtype, name="project_conv")
        x = _bn(train, self.dtype, "project_bn", self.bn_momentum)(x)
        if self.stride == 1 and self.in_features == self.out_features:
            x = x + inputs
        return x


def lite0_block_specs() -> list[tuple[int, int, int, int, int]]:
    """One `(in, out, kernel, stride, expand_ratio)` per MBConv block, in depth order."""
    specs = []
    for repeats, k, s, e, cin, cout in LITE0_STAGES:
        for r in range(repeats):
            specs.append((cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
    return specs


class EfficientNetLite(nn.Module):
    """Backbone: `stem`, `block1..block16` (MBConv), `block17` (head conv) -> pooled [B, 1280].

    `inference_blocks` names top-level blocks run in inference mode even when `train=True`.
    `bn_momentum` (TF's 0.99 by default) keeps that much of the old running statistics per
    step: after 100 steps 37% of the initial ones remain, so short CPU schedules (and scratch
    runs, whose initial statistics are meaningless) want ~0.9.
    """

    dtype: Any = jnp.float32
    bn_momentum: float = BN_MOMENTUM

    @nn.nowrap
    def block_names(self) -> list[str]:
        """Top-level submodule names in depth order."""
        n = len(lite0_block_specs()) + 1
        return ["stem"] + [f"block{i + 1}" for i in range(n)]

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, inference_blocks: Sequence[str] = ()
    ) -> jax.Array:
        mode = lambda name: train and name not in inference_blocks
        m = self.bn_momentum
        x = ConvBN(STEM_WIDTH, 3, 2, dtype=self.dtype, bn_momentum=m, name="stem")(x, mode("stem"))
        specs = lite0_block_specs()
        for i, (cin, cout, k, s, e) in enumerate(specs, start=1):
            x = MBConv(cin, cout, k, s, e, self.dtype, m, name=f"block{i}")(x, mode(f"block{i}"))
        last = f"block{len(specs) + 1}"
        x = ConvBN(HEAD_WIDTH, 1, dtype=self.dtype, bn_momentum=m, name=last)(x, mode(last))
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def efficientnet_lite0(
    dtype: Any = jnp.float32, bn_momentum: float = BN_MOMENTUM
) -> EfficientNetLite:
    """EfficientNet-Lite0 backbone (4.69M params with a 1000-class head); see module docstring."""
    return EfficientNetLite(dtype=dtype, bn_momentum=float(bn_momentum))
