"""ResNets (post-activation, v1.5) as backbones: `stem, block1, ..., blockN` -> pooled features.

One residual block per top-level submodule, numbered in depth order across stages, so "freeze the
first k blocks" and layer-wise LR decay can address them as `backbone/blockK/...`.

Conventions (torchvision-compatible shapes, so weights could be ported):
- He init (`variance_scaling(2, fan_out, normal)`) for every conv;
- stride on the 3x3 conv of bottlenecks (v1.5), 1x1 conv + norm projection shortcuts when the
  shape changes (option B, also for the CIFAR nets: resnet20 has 0.27M parameters either way);
- symmetric explicit padding (PyTorch-style) rather than TF "SAME";
- `dtype` is the compute dtype; parameters stay float32; pooled features are float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.models.norm import BLOCK_NORMS, check_norm, make_norm

he_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

STEMS = ("imagenet", "cifar")


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    p = (k - 1) // 2
    return ((p, p), (p, p))


class Stem(nn.Module):
    """`"imagenet"`: 7x7/2 conv + norm + ReLU + 3x3/2 max-pool; `"cifar"`: 3x3/1 conv + norm + ReLU.

    Why both: the ImageNet stem divides resolution by 4, which leaves almost nothing of a 32x32 or
    28x28 image; the CIFAR stem keeps full resolution for small inputs.
    """

    features: int
    kind: str = "imagenet"
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv, norm = make_norm(self.norm, self.dtype)
        k, s = (7, 2) if self.kind == "imagenet" else (3, 1)
        x = conv(self.features, (k, k), (s, s), _pad(k), kernel_init=he_init, name="conv")(x)
        x = nn.relu(norm(train, name="norm")(x))
        if self.kind == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return x


class BasicBlock(nn.Module):
    """Two 3x3 convs; output has `features` channels."""

    features: int
    strides: int = 1
    norm: str = "batch"
    dtype: Any = jnp.float32
    zero_init_residual: bool = False

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv, norm = make_norm(self.norm, self.dtype)
        s = (self.strides, self.strides)
        y = conv(self.features, (3, 3), s, padding=_pad(3), kernel_init=he_init, name="conv1")(x)
        y = nn.relu(norm(train, name="norm1")(y))
        y = conv(self.features, (3, 3), padding=_pad(3), kernel_init=he_init, name="conv2")(y)
        y = norm(train, zero_init=self.zero_init_residual, name="norm2")(y)
        return nn.relu(y + _shortcut(self, x, self.features, train))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand to `4 * features` channels."""

    features: int
    strides: int = 1
    norm: str = "batch"
    dtype: Any = jnp.float32
    zero_init_residual: bool = False

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv, norm = make_norm(self.norm, self.dtype)
        s = (self.strides, self.strides)
        out = self.features * self.expansion
        y = conv(self.features, (1, 1), kernel_init=he_init, name="conv1")(x)
        y = nn.relu(norm(train, name="norm1")(y))
        y = conv(self.features, (3, 3), s, padding=_pad(3), kernel_init=he_init, name="conv2")(y)
        y = nn.relu(norm(train, name="norm2")(y))
        y = conv(out, (1, 1), kernel_init=he_init, name="conv3")(y)
        y = norm(train, zero_init=self.zero_init_residual, name="norm3")(y)
        return nn.relu(y + _shortcut(self, x, out, train))


def _shortcut(block: BasicBlock | Bottleneck, x: jax.Array, out: int, train: bool) -> jax.Array:
    """Identity, or 1x1 strided conv + norm when the shape changes (called inside a block)."""
    if block.strides == 1 and x.shape[-1] == out:
        return x
    conv, norm = make_norm(block.norm, block.dtype)
    s = (block.strides, block.strides)
    x = conv(out, (1, 1), s, kernel_init=he_init, name="proj_conv")(x)
    return norm(train, name="proj_norm")(x)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """Backbone: `stem`, `block1..blockN` (N = sum(stage_sizes)), global average pool -> [B, D].

    `inference_blocks` names top-level blocks to run in inference mode even when `train=True`
    (frozen blocks keep their BatchNorm running statistics fixed).
    """

    stage_sizes: Sequence[int]
    stage_widths: Sequence[int]
    block: str = "basic"
    stem: str = "imagenet"
    stem_width: int = 64
    norm: str = "batch"
    width: float = 1.0
    dtype: Any = jnp.float32
    zero_init_residual: bool = False

    @nn.nowrap
    def block_names(self) -> list[str]:
        """Top-level submodule names in depth order."""
        return ["stem"] + [f"block{i + 1}" for i in range(sum(self.stage_sizes))]

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, inference_blocks: Sequence[str] = ()
    ) -> jax.Array:
        if self.stem not in STEMS:
            raise ValueError(f"Unknown stem {self.stem!r}; valid stems: {', '.join(STEMS)}")
        if self.block not in BLOCKS:
            raise ValueError(f"Unknown block {self.block!r}; valid: {', '.join(BLOCKS)}")
        mode = lambda name: train and name not in inference_blocks
        x = Stem(
            scaled(self.stem_width, self.width), self.stem, self.norm, self.dtype, name="stem"
        )(x, mode("stem"))
        i = 0
        for stage, (n, w) in enumerate(zip(self.stage_sizes, self.stage_widths, strict=True)):
            for j in range(n):
                i += 1
                x = BLOCKS[self.block](
                    scaled(w, self.width),
                    strides=2 if stage > 0 and j == 0 else 1,
                    norm=self.norm,
                    dtype=self.dtype,
                    zero_init_residual=self.zero_init_residual,
                    name=f"block{i}",
                )(x, mode(f"block{i}"))
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def cifar_resnet(
    depth: int,
    norm: str = "batch",
    width: float = 1.0,
    dtype: Any = jnp.float32,
    zero_init_residual: bool = False,
) -> ResNet:
    """He et al.'s CIFAR ResNet-`depth` (depth = 6n + 2): 3 stages x n basic blocks, 16/32/64."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 56, ...), got {depth}")
    check_norm(norm, BLOCK_NORMS)
    n = (depth - 2) // 6
    return ResNet(
        stage_sizes=(n, n, n),
        stage_widths=(16, 32, 64),
        block="basic",
        stem="cifar",
        stem_width=16,
        norm=norm,
        width=width,
        dtype=dtype,
        zero_init_residual=zero_init_residual,
    )


def resnet20(
    norm: str = "batch",
    width: float = 1.0,
    dtype: Any = jnp.float32,
    zero_init_residual: bool = False,
) -> ResNet:
    """CIFAR ResNet-20 (stem + 9 basic blocks, ~0.27M parameters)."""
    return cifar_resnet(20, norm, width, dtype, zero_init_residual)


def imagenet_resnet(
    depth: int,
    norm: str = "batch",
    width: float = 1.0,
    stem: str = "imagenet",
    dtype: Any = jnp.float32,
    zero_init_residual: bool = False,
) -> ResNet:
    """ImageNet ResNet-`depth` (18, 34, 50, 101, 152); `stem="cifar"` for small images."""
    configs = {
        18: ((2, 2, 2, 2), "basic"),
        34: ((3, 4, 6, 3), "basic"),
        50: ((3, 4, 6, 3), "bottleneck"),
        101: ((3, 4, 23, 3), "bottleneck"),
        152: ((3, 8, 36, 3), "bottleneck"),
    }
    if depth not in configs:
        raise ValueError(f"ImageNet ResNet depth must be one of {sorted(configs)}, got {depth}")
    if stem not in STEMS:
        raise ValueError(f"Unknown stem {stem!r}; valid stems: {', '.join(STEMS)}")
    check_norm(norm, BLOCK_NORMS)
    sizes, block = configs[depth]
    return ResNet(
        stage_sizes=sizes,
        stage_widths=(64, 128, 256, 512),
        block=block,
        stem=stem,
        stem_width=64,
        norm=norm,
        width=width,
        dtype=dtype,
        zero_init_residual=zero_init_residual,
    )


def resnet18(
    norm: str = "batch",
    width: float = 1.0,
    stem: str = "imagenet",
    dtype: Any = jnp.float32,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2); stem + block1..block8; ~11.2M backbone parameters."""
    return imagenet_resnet(18, norm, width, stem, dtype, zero_init_residual)


def resnet50(
    norm: str = "batch",
    width: float = 1.0,
    stem: str = "imagenet",
    dtype: Any = jnp.float32,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-50: bottlenecks (3, 4, 6, 3); stem + block1..block16; ~23.5M backbone parameters."""
    return imagenet_resnet(50, norm, width, stem, dtype, zero_init_residual)
