r"""The transferability benchmark: many (source, target, size) triples, converged and tuned.

Why: `jtl advise` must predict "fine-tune or scratch?" before training, and a predictor is only
as good as the measured outcomes it is fitted and validated on. Similarity is dialled with
data-set transforms (jtl.data.transforms), so near and far pairs are controlled, not found.

Sources (compact CNN, cnn_small width 0.5, batch 128, crop(2); `configs/mnist_pretrain.py`):
  mnist          MNIST, 1500 steps
  mnist04        MNIST classes 0-4 (Yosinski et al.'s split: the target mnist59 has 5-9)
  mnist_bs7      MNIST with 7x7-pixel blocks shuffled (a 4x4 grid), Neyshabur et al. 2020
  mnist_bs4      ... 4x4-pixel blocks (a 7x7 grid)
  mnist_bs1      ... pixel-permuted (block size 1)
  mnist_short    MNIST, 15 steps: its BatchNorm statistics unsettled, at chance (a 2nd control)
  mnist_under    MNIST, under-trained: 60 steps (71.9 % test accuracy)
  fashion        Fashion-MNIST, 1500 steps
  random         the random-init control: one step at learning rate 0
Targets (28x28 grey, the digits and lfw_subset upsampled):
  digits, digits|invert, digits|block_shuffle(2); mnist59 (MNIST 5-9), mnist59|noise(0.4),
  mnist59|block_shuffle(4); fashion_mnist, fashion04 (classes 0-4), fashion_mnist|lowres(7);
  lfw_subset (faces vs non-faces, 75 per class: sizes 10 and full).
Arms: scratch (the same cnn_small; shared by every source), linear probe (cached features, L2
chosen on validation), finetune_full (backbone LR x0.1) and lp_ft; 2 seeds, sizes 10 and 100
per class (3-fold CV inside the labelled budget), 9 x 10 x 2 = 180 (source, target, size)
triples. Protocol: mnist_source's converged, tuned one (`jtl.study.budget.converged`): every
cell trains until validation stalls (scratch x2 the cap), every SGD arm is tuned over the same
learning-rate grid on seed 0 and seed 1 trains once at its choice. Patience cannot stop a cell
before 3/4 of its cap (`stop_frac=0.75`, the default since 2026-12-04: before it, the scratch
arm stopped on high-LR validation noise, 7 points low on Fashion-MNIST at 100/class), and
validation-accuracy ties go to the lower validation loss. A cell that hits its cap still
improving is re-run once with the cap doubled (`convergence.cap_doublings = 1`, since session 8:
at a 30-epoch cap 101 of 243 finetune_full trials at 100/class had not converged).

Run (resumable: re-run the same command; `launch/study.sh --background -- ARGS` runs it from
a git worktree pinned at the current commit, and resumes it there; under it, give `source_dir=`
an absolute path). What docs/results.md ran: the main part, the ImageNet probe part, the
ImageNet fine-tuning arms at 10/class, then the fit:
    jtl study --config configs/studies/transfer_bench.py --workdir runs/bench --parallel 2
    jtl study --config configs/studies/transfer_bench.py:part=imagenet --workdir runs/bench_inet \
        --parallel 2
    jtl study --config configs/studies/transfer_bench.py:part=imagenet,arms=lp_ft,sizes=10,\
source_dir=$PWD/runs/bench_inet/sources --workdir runs/bench_inet_lpft10 --parallel 2
    jtl study --config configs/studies/transfer_bench.py:part=imagenet,arms=finetune_full,\
sizes=10,source_dir=$PWD/runs/bench_inet/sources --workdir runs/bench_inet_ff10 --parallel 2
    jtl advisor fit --study runs/bench --study runs/bench_inet --study runs/bench_inet_lpft10 \
        --study runs/bench_inet_ff10 --out jtl/advisor/fitted.json --report runs/advisor
A part can be cut into phases, each its own resumable workdir: `arms=a+b`, `sources=a+b` and
`sizes=10` (or 100) run a subset of the grid, `source_dir=` reuses trained sources, and
`jtl advisor fit --table DIR` adds an earlier fit's measured rows (DIR/validation.json) to the
studies given, for phases whose runs are gone.

`part=imagenet`: the ImageNet EfficientNet-Lite0 source (real weights, 32 px RGB) on the same
targets, the linear probe by default: its fine-tuning costs ~60 s a run at 10/class on this
CPU, and more at 100/class, so `arms=lp_ft` (or finetune_full) is a phase of its own, with
`source_dir=` the probe part's sources (absolute). Its gains are taken against the main part's
scratch rows (the same target, size and seeds).
`small=1`: 2 sources x 2 targets x 1 size, for a smoke test.

Expected (2026-12-04, sessions 9-10, 2-core CPU; docs/results.md "Transferability
benchmark"): 3.10 h in all: the main part 145.8 min (1,880 runs and 198 re-runs of runs that hit
their cap still improving, `cap_doublings`), the ImageNet probe part 2.7 min, its lp_ft and
finetune_full at 10/class 20.8 and 16.6 min. Scratch: digits 88.6 / 98.0 %, fashion_mnist
62.8 / 79.4 %, lfw 92.0 / 99.0 % (10/class / 100 or full). Mean gain over scratch at 10 / 100
per class: lp_ft -0.9 / +0.7, finetune_full -2.3 / -1.2, the linear probe -6.7 / -7.2 points.
Leave-one-target-out, deciding "probe or scratch?" the fitted advisor loses 0.44 points against
always-scratch's 1.07 (-0.63 [-1.14, -0.13]); with every arm (190 triples) 1.63 against
always-scratch's 2.08 (-0.45 [-0.87, -0.06]), LogME alone 1.32; the weighted tau of its source
ranking is 0.47 (seed 0 against seed 1: 0.58).
"""

import ml_collections as mlc

from jtl.config import parse_arg
from jtl.study import study_defaults
from jtl.study.budget import SMALL_IMAGE_PROTOCOL, converged

MODEL = ("model.name=cnn_small", "model.kwargs.width=0.5")
PRETRAIN = "configs/mnist_pretrain.py:model=cnn_small,width=0.5,augment=crop(2)"
SOURCES = {
    "mnist": "steps=1500",
    "mnist04": "steps=1500,dataset=mnist|classes(0-4)",
    "mnist_bs7": "steps=1500,dataset=mnist|block_shuffle(7)",
    "mnist_bs4": "steps=1500,dataset=mnist|block_shuffle(4)",
    "mnist_bs1": "steps=1500,dataset=mnist|block_shuffle(1)",
    "mnist_short": "steps=15",
    "mnist_under": "steps=60",
    "fashion": "steps=1500,dataset=fashion_mnist",
    "random": "steps=1,lr=0.0",
}
TARGETS = {
    "digits": "digits",
    "digits_inv": "digits|invert",
    "digits_bs2": "digits|block_shuffle(2)",
    "mnist59": "mnist|classes(5-9)",
    "mnist59_noise": "mnist|classes(5-9)|noise(0.4)",
    "mnist59_bs4": "mnist|classes(5-9)|block_shuffle(4)",
    "fashion": "fashion_mnist",
    "fashion04": "fashion_mnist|classes(0-4)",
    "fashion_low": "fashion_mnist|lowres(7)",
    "lfw": "lfw_subset",
}


ARMS = ("linear_probe", "finetune_full", "lp_ft")
SIZES = ("10", "100")  # per class; lfw_subset has 75 per class, so its "100" is "full"


def _arms(
    s: mlc.ConfigDict, arms: str, allowed: tuple[str, ...], default: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """The arms of a part: `arms` ('+'-separated from `allowed`) or, for "all", `default`
    (else all of `allowed`); a chosen subset is a phase with its own name and workdir."""
    if arms == "all":
        return default or allowed
    chosen = tuple(arms.split("+"))
    if set(chosen) - set(allowed):
        raise ValueError(f"arms={arms!r}: '+'-separated from {allowed}")
    s.name += "_" + "_".join(chosen)
    return chosen


def _restrict(s: mlc.ConfigDict, sources: str, sizes: str) -> None:
    """A phase of the benchmark: `sources` and `sizes` ('+'-separated subsets, or all)."""
    if sources != "all":
        names = sources.split("+")
        if unknown := set(names) - set(s.sources):
            raise ValueError(f"sources={sources!r}: {sorted(unknown)} not in {list(s.sources)}")
        s.name += "_" + "_".join(names)
        s.sources = mlc.ConfigDict({k: s.sources[k] for k in names})
    if sizes != "all":
        keep = sizes.split("+")
        if set(keep) - set(SIZES):
            raise ValueError(f"sizes={sizes!r}: '+'-separated from {SIZES}")
        s.name += "_" + "_".join(keep)
        s.sizes = tuple(k for k in SIZES if k in keep)
        s.sizes_by_target = mlc.ConfigDict(
            {"lfw": ("10",) * ("10" in keep) + ("full",) * ("100" in keep)}
        )


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    a = parse_arg(
        arg,
        part="main",
        seeds=2,
        small=0,
        arms="all",
        source_dir="",
        sources="all",
        sizes="all",
        stop_frac=0.75,  # patience waits for 3/4 of the cap (0: the earlier phases)
    )
    s = study_defaults()
    s.name = f"transfer_bench_{a.part}" + ("_small" if a.small else "")
    s.title = "Transferability benchmark: near to far sources x targets, converged and tuned"
    s.targets = mlc.ConfigDict({k: f"target={v}" for k, v in TARGETS.items()})
    s.sizes = SIZES
    s.sizes_by_target = mlc.ConfigDict({"lfw": ("10", "full")})
    s.seeds = tuple(range(a.seeds))
    # Evaluation of 1,200 instead of 6,000 Fashion-MNIST / MNIST validation images per check.
    s.target_overrides = mlc.ConfigDict(
        {t: ("val_fraction=0.02",) for t, v in TARGETS.items() if v.startswith(("mnist", "fash"))}
    )
    s.advise_sample = 1000  # capped per size at the labelled examples it has (advise_scores)
    if a.part == "main":
        s.cell_config = "configs/transfer.py"
        s.sources = mlc.ConfigDict(
            {k: {"kind": "train", "config": f"{PRETRAIN},{v}"} for k, v in SOURCES.items()}
        )
        s.strategies = _arms(s, a.arms, ("scratch", *ARMS))
        s.overrides = (*MODEL, "log_every=50")
    elif a.part == "imagenet":
        s.cell_config = "configs/lite0_transfer.py"
        s.sources = mlc.ConfigDict(
            {"imagenet": {"kind": "import", "model": "efficientnet_lite0", "file": "package"}}
        )
        s.targets = mlc.ConfigDict({k: f"{v},size=32" for k, v in s.targets.items()})
        s.strategies = _arms(s, a.arms, ARMS, default=("linear_probe",))
        s.overrides = ("augment=", "log_every=50")
    else:
        raise ValueError(f"part={a.part!r}: use main or imagenet")
    if a.source_dir:  # sources trained or imported by an earlier phase: DIR/NAME
        s.sources = mlc.ConfigDict(
            {k: {"kind": "checkpoint", "path": f"{a.source_dir}/{k}"} for k in s.sources}
        )
        s.advise_sample = 0  # scored once, by the phase that made the sources
    _restrict(s, a.sources, a.sizes)
    if a.small:
        s.sources = mlc.ConfigDict({k: s.sources[k] for k in list(s.sources)[:2]})
        s.targets = mlc.ConfigDict({k: s.targets[k] for k in ("digits", "lfw")})
        s.sizes, s.sizes_by_target = ("10",), mlc.ConfigDict()
        s.target_overrides = mlc.ConfigDict()
    # mnist_source's converged protocol (no 1000/class size here).
    protocol = {**SMALL_IMAGE_PROTOCOL, "max_epochs_by_size": {"10": 150.0, "100": 30.0}}
    converged(s, **protocol, stop_min_steps=100, stop_min_fraction=a.stop_frac)
    return s
