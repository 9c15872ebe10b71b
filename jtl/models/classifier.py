"""`Classifier` = backbone + zero-initialized linear head: the unit every strategy works on.

Exactly two top-level submodules, `backbone` and `head`, so the params tree is
`params/backbone/{stem,block1,...}/...` and `params/head/{kernel,bias}`: transfer code can
replace the head, freeze backbone blocks by name, or load only `backbone/` from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class Classifier(nn.Module):
    """`backbone(x) -> float32 features [B, D]`, then `head` -> float32 logits [B, num_classes].

    The head is zero-initialized: a fresh head for a new target starts at uniform predictions
    and does not inject random features into the first fine-tuning gradients.
    `backbone` must expose `block_names()` and accept `(x, train, inference_blocks)`.
    """

    backbone: nn.Module
    num_classes: int

    def setup(self) -> None:
        # `backbone` is adopted as a submodule under its field name; the head is built here.
        self.head = nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.zeros,
            dtype=jnp.float32,
        )

    def features(
        self, x: jax.Array, train: bool = False, inference_blocks: Sequence[str] = ()
    ) -> jax.Array:
        """Pooled backbone features [B, D] in float32 (linear probes, feature caches)."""
        return self.backbone(x, train=train, inference_blocks=tuple(inference_blocks)).astype(
            jnp.float32
        )

    def __call__(
        self, x: jax.Array, train: bool = False, inference_blocks: Sequence[str] = ()
    ) -> jax.Array:
        """Logits [B, num_classes] in float32.

        `inference_blocks`: backbone blocks run in inference mode even when `train=True` (their
        BatchNorm statistics neither normalize by the batch nor update).
        """
        return self.head(self.features(x, train, inference_blocks))

    @nn.nowrap
    def block_names(self) -> list[str]:
        """The backbone's top-level submodule names in depth order (`stem`, `block1`, ...)."""
        return list(self.backbone.block_names())
