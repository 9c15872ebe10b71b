r"""Yosinski et al. 2014 at this scale: transfer the first n blocks, frozen (AnB) or fine-tuned
(AnB+), for n = 1 to the depth, on a near pair and a far pair.

Source A: cnn_small (width 0.5: stem, block1, block2) trained on MNIST digits 0-4
(`mnist|classes(0-4)`, configs/mnist_pretrain.py). Targets B: MNIST digits 5-9 (near: the
paper's split task) and Fashion-MNIST classes 0-4 (far). Arms: `layer_transfer` with
`transfer_blocks = n` and `transfer_frozen` True (AnB, the rest re-initialized and trained) or
False (AnB+), n = 1, 2, 3, plus scratch (the same network, "B" baseline); 100 per class,
2 seeds, mnist_source's converged, tuned protocol (every arm tuned over the same LR grid on
seed 0). Paper: AnB drops at middle n (fragile co-adaptation) and with distance; AnB+ stays at
or above the baseline.

Run (reusing the benchmark's source: `source_dir=DIR` holds the trained mnist04 run):
    S=source_dir=runs/bench_probe/sources/mnist04
    jtl study --config configs/studies/layer_transfer.py:$S --workdir runs/yosinski
    jtl study --config configs/studies/layer_transfer.py --workdir runs/yosinski  # trains A

Expected: docs/results.md "Yosinski et al. at this scale" (command, machine, wall time).
"""

import ml_collections as mlc

from jtl.config import parse_arg
from jtl.study import study_defaults
from jtl.study.budget import SMALL_IMAGE_PROTOCOL, converged

DEPTH = 3  # cnn_small's blocks: stem, block1, block2


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    a = parse_arg(arg, seeds=2, source_dir="", per_class="100")
    s = study_defaults()
    s.name = "layer_transfer"
    s.title = "Yosinski et al.: first n blocks transferred, frozen (AnB) or fine-tuned (AnB+)"
    s.cell_config = "configs/transfer.py"
    pretrain = (
        "configs/mnist_pretrain.py:model=cnn_small,width=0.5,augment=crop(2),steps=1500,"
        "dataset=mnist|classes(0-4)"
    )
    s.sources = mlc.ConfigDict({"mnist04": {"kind": "train", "config": pretrain}})
    if a.source_dir:
        s.sources.mnist04 = mlc.ConfigDict({"kind": "checkpoint", "path": a.source_dir})
    s.targets = mlc.ConfigDict(
        {"mnist59": "target=mnist|classes(5-9)", "fashion04": "target=fashion_mnist|classes(0-4)"}
    )
    s.target_overrides = mlc.ConfigDict({t: ("val_fraction=0.02",) for t in s.targets})
    s.strategies = ("scratch",)
    s.arm_variants = mlc.ConfigDict(
        {
            f"A{n}B{'+' if not frozen else ''}": {
                "strategy": "layer_transfer",
                "overrides": (
                    f"strategy_args.transfer_blocks={n}",
                    f"strategy_args.transfer_frozen={frozen}",
                ),
            }
            for n in range(1, DEPTH + 1)
            for frozen in (True, False)
        }
    )
    s.sizes = tuple(str(a.per_class).split("+"))
    s.seeds = tuple(range(a.seeds))
    s.overrides = ("model.name=cnn_small", "model.kwargs.width=0.5", "log_every=50")
    s.advise_sample = 0
    converged(s, **SMALL_IMAGE_PROTOCOL, stop_min_steps=100)
    return s
