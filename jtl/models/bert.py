"""BERT encoder (post-LN, as in all-MiniLM-L6-v2) in flax.linen, laid out for jtl transfer code.

Why this layout: jtl's strategies freeze and decay by top-level backbone block name, so the
encoder's top-level submodules are exactly `stem` (embeddings) and `block1..blockN` (layers);
`BertClassifier` keeps jtl's `backbone`/`head` split, with mean pooling (the sentence-transformers
pooling of all-MiniLM-L6-v2) inside the backbone so features are sentence embeddings [B, H].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "BertClassifier",
    "BertConfig",
    "BertEncoder",
    "bert_classifier",
    "mean_pool",
    "minilm_l6_config",
    "unpack_inputs",
]


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture hyperparameters (the fields of a Hugging Face BERT `config.json`)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12


def minilm_l6_config() -> BertConfig:
    """all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads, FFN 1536, vocab 30522."""
    return BertConfig()


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """sentence-transformers mean pooling: average of non-padding tokens, [B, T, H] -> [B, H].

    The count is clamped at 1e-9 as in sentence-transformers, so an all-padding row gives zeros.
    """
    m = mask.astype(hidden.dtype)[..., None]
    return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)


class BertEmbeddings(nn.Module):
    """Word + absolute position + token type embeddings, then LayerNorm."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        c = self.config
        init = nn.initializers.normal(0.02)
        positions = jnp.arange(input_ids.shape[-1])[None, :]
        x = nn.Embed(c.vocab_size, c.hidden_size, embedding_init=init, name="word")(input_ids)
        x = x + nn.Embed(c.max_positions, c.hidden_size, embedding_init=init, name="position")(
            positions
        )
        x = x + nn.Embed(c.type_vocab_size, c.hidden_size, embedding_init=init, name="token_type")(
            token_type_ids
        )
        return nn.LayerNorm(epsilon=c.layer_norm_eps, name="norm")(x)


class BertLayer(nn.Module):
    """Post-LN transformer layer: x = LN(x + attn(x)); x = LN(x + W2 gelu(W1 x)).

    GELU is the exact (erf) form, as Hugging Face's `"gelu"`; the tanh approximation differs by
    ~1e-3 and would break parity with the imported weights.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, attention_mask: jax.Array) -> jax.Array:
        c = self.config
        b, t, h = x.shape
        d = h // c.num_heads
        init = nn.initializers.normal(0.02)

        def heads(name: str) -> jax.Array:
            y = nn.Dense(h, kernel_init=init, name=name)(x)
            return y.reshape(b, t, c.num_heads, d)

        q, k, v = heads("query"), heads("key"), heads("value")
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k) / jnp.sqrt(jnp.asarray(d, x.dtype))
        # Additive mask over keys: padding keys get the dtype's minimum, as in Hugging Face BERT.
        keep = attention_mask.astype(bool)[:, None, None, :]
        scores = jnp.where(keep, scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1)
        ctx = jnp.einsum("bnqk,bknd->bqnd", probs, v).reshape(b, t, h)
        attn = nn.Dense(h, kernel_init=init, name="attn_out")(ctx)
        x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="attn_norm")(x + attn)
        y = nn.Dense(c.intermediate_size, kernel_init=init, name="intermediate")(x)
        y = nn.gelu(y, approximate=False)
        y = nn.Dense(h, kernel_init=init, name="output")(y)
        return nn.LayerNorm(epsilon=c.layer_norm_eps, name="output_norm")(x + y)


class BertEncoder(nn.Module):
    """BERT encoder: `stem` (embeddings) then `block1..blockN` (layers); no pooler.

    `__call__` returns last hidden states [B, T, H]; `embed` the mean-pooled sentence
    embeddings [B, H]. The Hugging Face pooler (tanh dense on [CLS]) is left out because
    sentence-transformers' mean pooling does not use it.
    """

    config: BertConfig = dataclasses.field(default_factory=BertConfig)

    def setup(self) -> None:
        self.stem = BertEmbeddings(self.config)
        # Assigned one by one so the submodule names are `block1..blockN`, not `blocks_0..`.
        for i in range(self.config.num_layers):
            setattr(self, f"block{i + 1}", BertLayer(self.config))

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Last hidden states [B, T, H]; `attention_mask` is 1 for tokens, 0 for padding."""
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.stem(input_ids, token_type_ids)
        for name in self.block_names()[1:]:
            x = getattr(self, name)(x, attention_mask)
        return x

    def embed(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Mean-pooled sentence embeddings [B, H] (not L2-normalized)."""
        return mean_pool(self(input_ids, attention_mask, token_type_ids), attention_mask)

    @nn.nowrap
    def block_names(self) -> list[str]:
        """Top-level submodule names in depth order: `stem`, `block1`, ..., `blockN`."""
        return ["stem"] + [f"block{i + 1}" for i in range(self.config.num_layers)]


TextInputs = Mapping[str, jax.Array] | jax.Array


def unpack_inputs(
    x: TextInputs, attention_mask: jax.Array | None, token_type_ids: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """`(input_ids, attention_mask, token_type_ids)` from a text batch dict or from arrays.

    A dict is what jtl's trainer passes (`{"input_ids", "attention_mask"[, "token_type_ids"]}`,
    see `jtl.data.pipeline.model_inputs`); arrays keep the Hugging Face calling style. Without a
    mask every token counts.
    """
    if isinstance(x, Mapping):
        ids = x["input_ids"]
        attention_mask = x.get("attention_mask", attention_mask)
        token_type_ids = x.get("token_type_ids", token_type_ids)
    else:
        ids = x
    if attention_mask is None:
        attention_mask = jnp.ones_like(ids)
    return ids, attention_mask, token_type_ids


class BertClassifier(nn.Module):
    """`backbone` (encoder + mean pooling -> [B, H]) then zero-init `head` -> logits [B, C].

    The backbone is the `BertEncoder` itself (its mean-pooled `embed`), so params are
    `params/backbone/{stem,block1,...}` and `params/head/{kernel,bias}` like jtl's `Classifier`,
    and it follows the same calling contract: `model(x, train=..., inference_blocks=...)` and
    `model.apply(v, x, method="features")`, with `x` a dict of `input_ids`/`attention_mask`
    (or `input_ids` then `attention_mask` positionally). `train` and `inference_blocks` are
    accepted for the contract and change nothing: the model has no dropout and no BatchNorm
    (fine-tuning without dropout; a deliberate simplification for short CPU runs).
    """

    backbone: BertEncoder
    num_classes: int

    def setup(self) -> None:
        self.head = nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.zeros,
            dtype=jnp.float32,
        )

    def features(
        self,
        x: TextInputs,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        train: bool = False,
        inference_blocks: Sequence[str] = (),
    ) -> jax.Array:
        """Mean-pooled sentence embeddings [B, H] in float32."""
        del train, inference_blocks
        ids, mask, types = unpack_inputs(x, attention_mask, token_type_ids)
        return self.backbone.embed(ids, mask, types).astype(jnp.float32)

    def __call__(
        self,
        x: TextInputs,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        train: bool = False,
        inference_blocks: Sequence[str] = (),
    ) -> jax.Array:
        """Logits [B, num_classes] in float32."""
        return self.head(self.features(x, attention_mask, token_type_ids, train, inference_blocks))

    @nn.nowrap
    def block_names(self) -> list[str]:
        """The backbone's block names in depth order (`stem`, `block1`, ...)."""
        return self.backbone.block_names()


def bert_classifier(num_classes: int, **config: Any) -> BertClassifier:
    """`BertClassifier` over `BertEncoder(BertConfig(**config))`; defaults = all-MiniLM-L6-v2.

    The keyword names are `BertConfig`'s (hidden_size, num_layers, num_heads, ...); an unknown
    one is an error.
    """
    fields = {f.name for f in dataclasses.fields(BertConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"unknown BERT config keys {unknown}; valid: {sorted(fields)}")
    return BertClassifier(BertEncoder(BertConfig(**config)), num_classes=int(num_classes))
