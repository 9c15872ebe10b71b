"""The study grid: a study config (`configs/studies/NAME.py`) and the cells it expands into.

Each cell is one `jtl train` run in its own sub-directory: a base config (the study's
`cell_config` with the target's and the scratch model's arguments) plus config-field overrides:
the cell's strategy, size, budget, seed and source, then the study's, target's, strategy's,
variant's and budget's overrides, in that order. Its config is loaded once (`Cell.config`).
"""

from __future__ import annotations

import dataclasses
import functools
import shlex
from collections.abc import Sequence
from pathlib import Path

import ml_collections as mlc

from jtl import config as config_lib
from jtl.study import sweep as sweep_lib
from jtl.study.budget import budget_overrides, convergence_defaults, validate_budget
from jtl.transfer import strategies

SOURCE_ARG_KINDS = ("train", "import", "checkpoint")


class StudyError(ValueError):
    """A study config that cannot be run as written; the message names the field and the fix."""


# ----------------------------------------------------------------------------- config


def study_defaults() -> mlc.ConfigDict:
    """Every field a study config may set; study files start from this."""
    s = mlc.ConfigDict()
    s.name = "study"
    s.title = ""
    s.cell_config = "configs/transfer.py"
    # name -> ConfigDict(kind="train", config=SPEC) | (kind="import", model=M, file=PATH or
    # "package") | (kind="checkpoint", path=DIR). "none" (scratch) is implicit.
    s.sources = mlc.ConfigDict()
    s.targets = mlc.ConfigDict()  # name -> cell-config argument string, e.g. "target=digits"
    s.strategies = ("scratch", "finetune_full")
    # Scratch arms: label -> cell-config arguments, e.g. {"resnet20": "", "cnn": "model=cnn_small"}
    # ("" label = the cell config's default model, shown as plain "scratch").
    s.scratch_models = mlc.ConfigDict({"": ""})
    s.sizes = ("10", "100", "full")  # examples per class, "NN%" of the train split, or "full"
    s.sizes_by_target = mlc.ConfigDict()  # target -> sizes (e.g. a target with 75 per class)
    s.seeds = (0, 1, 2)
    s.steps = 200
    s.steps_by_size = mlc.ConfigDict()  # size label -> steps (overrides `steps`)
    s.scratch_schedule_mult = 1.0
    s.strategy_overrides = mlc.ConfigDict()  # strategy -> ("strategy_args.freeze_blocks=2", ...)
    # Named variants of a strategy, each its own arm (e.g. Yosinski et al.'s AnB at n = 1..4):
    # label -> ConfigDict(strategy=NAME, overrides=("strategy_args.transfer_blocks=1", ...)).
    s.arm_variants = mlc.ConfigDict()
    s.overrides = ()  # config overrides for every cell
    s.target_overrides = mlc.ConfigDict()  # target -> config overrides for its cells
    s.kfold = mlc.ConfigDict({"folds": 3, "max_per_class": 100})  # folds < 2: off
    s.early_stopping_patience = 0  # equal-step budgets only: stop early on validation
    # "equal_steps" (the `steps` budget above) or "converged": every cell trains until
    # validation accuracy stalls (`convergence`: patience, min_delta, max_epochs[_by_size] cap,
    # scratch x scratch_schedule_mult, eval_every_epochs or eval_every_steps); see
    # jtl/study/budget.py. The report gives no verdict from a cell that hit its cap.
    s.budget = "equal_steps"
    s.convergence = convergence_defaults()
    # Equal tuning budget: values per axis (lr, weight_decay); their product is every SGD arm's
    # grid, chosen on validation only (jtl/study/sweep.py). Linear probes are not swept (they
    # pick their L2 on validation internally). sweep_by_strategy: strategy -> its own grid,
    # with the same number of trials.
    s.sweep = sweep_lib.sweep_defaults()
    s.sweep_by_strategy = mlc.ConfigDict()
    # 0: every seed runs the whole grid. N > 0: only the first N seeds do; each later seed trains
    # once, at the values with the best mean validation accuracy over those N seeds' grids (same
    # target, arm and size). Every arm still gets the same grid; the sweep costs N/len(seeds).
    s.sweep_tune_seeds = 0
    # Strategies whose sweep trials (every value of the grid, same seed) also make a greedy soup
    # (jtl.run.soup), reported as its own arm `soup_STRATEGY`: the soup costs no extra training.
    s.soups = ()
    s.advise_sample = 500  # target examples scored per (source, target); 0 = no advisor
    return s


def load_study(spec: str) -> mlc.ConfigDict:
    """`configs/studies/NAME.py[:arg]` -> a validated study config."""
    path, _, arg = spec.partition(":")
    file = _resolve(path)
    module = config_lib.load_module(file)
    study = module.get_config(arg) if arg else module.get_config()
    validate(study)
    return study


def _resolve(path: str) -> Path:
    """A config path as given, in the checkout, or in the installed configs (config_lib)."""
    return config_lib.resolve_config_path(path)


def validate(study: mlc.ConfigDict) -> None:
    if not study.targets:
        raise StudyError("study.targets is empty: add e.g. targets.digits = 'target=digits'")
    if not study.seeds:
        raise StudyError("study.seeds is empty: give at least one seed, e.g. (0,)")
    for name, src in study.sources.items():
        if name == "none":
            raise StudyError("source name 'none' is reserved for scratch; rename the source")
        if src.get("kind") not in SOURCE_ARG_KINDS:
            raise StudyError(
                f"sources.{name}.kind={src.get('kind')!r}: use one of {SOURCE_ARG_KINDS}"
            )
    transfer = [s for s in study.strategies if not strategies.is_baseline(s)]
    transfer += list(study.arm_variants)
    for label, v in study.arm_variants.items():
        if not v.get("strategy") or strategies.is_baseline(v.strategy):
            raise StudyError(
                f"arm_variants.{label}: give strategy=NAME (a transfer strategy) and overrides"
            )
        if label in study.strategies:
            raise StudyError(f"arm_variants.{label}: the label is also a strategy; rename it")
    if transfer and not study.sources:
        raise StudyError(
            f"strategies {transfer} need a pretrained source: add study.sources.NAME, or keep "
            f"only {strategies.baseline()!r}"
        )
    for size in study.sizes:
        _size_overrides(size)
    for field in ("sizes_by_target", "target_overrides"):
        unknown = set(study[field]) - set(study.targets)
        if unknown:
            raise StudyError(f"{field} names {sorted(unknown)}, not in targets")
    sizes = set(map(str, study.sizes)) | {str(s) for v in study.sizes_by_target.values() for s in v}
    unknown = set(study.steps_by_size) - sizes
    if unknown:
        raise StudyError(f"steps_by_size has sizes {sorted(unknown)} not in sizes {study.sizes}")
    for name in study.get("soups") or ():
        if name not in study.strategies or not sweep_lib.grid(study, name):
            raise StudyError(
                f"soups names {name!r}: give strategies of this study that are swept (a soup "
                "averages one sweep's trials)"
            )
        if study.sweep_tune_seeds:
            raise StudyError(
                "soups need every seed to run the whole grid: set sweep_tune_seeds = 0"
            )
    for problem in (validate_budget(study), sweep_lib.validate_sweep(study)):
        if problem:
            raise StudyError(problem)


# ----------------------------------------------------------------------------- grid


def _size_overrides(size: str) -> tuple[list[str], int | None]:
    """Size label -> (config overrides, examples per class or None)."""
    size = str(size)
    if size == "full":
        return ["train_per_class=0", "train_fraction=1.0"], None
    if size.endswith("%"):
        frac = float(size[:-1]) / 100
        if not 0 < frac <= 1:
            raise StudyError(f"size {size!r}: a percentage must be in (0, 100]")
        return ["train_per_class=0", f"train_fraction={frac}"], None
    if size.isdigit() and int(size) > 0:
        return [f"train_per_class={int(size)}", "train_fraction=1.0"], int(size)
    raise StudyError(f"size {size!r}: use examples per class ('10'), a percentage ('25%'), 'full'")


def size_label(size: str) -> str:
    return f"{size}/class" if str(size).isdigit() else str(size)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training run of the grid; `id` is also its sub-directory under `cells/`."""

    id: str
    target: str
    source: str
    strategy: str
    model: str
    arm: str
    size: str
    seed: int
    fold: int
    spec: str
    overrides: tuple[str, ...]
    trial: str = ""  # sweep trial label (e.g. "lr0.1"); "" = not a trial
    # A later seed of a swept arm under `sweep_tune_seeds`: the ids of the cells whose grids
    # choose its values, and (once they finished: jtl.study.sweep.resolve) the chosen label.
    tuned_by: tuple[str, ...] = ()
    chosen: str = ""
    # Converged budgets: how often a run that hit its cap still improving may be re-run with
    # the cap doubled (the study's `convergence.cap_doublings`), which attempt this is, and how
    # many trailing `overrides` its doublings added (jtl.study.budget.current_attempt).
    cap_doublings: int = 0
    attempt: int = 0
    attempt_overrides: int = 0

    def workdir(self, root: Path) -> Path:
        """`cells/ID`; a re-run at a doubled cap lives beside it, in `cells/ID@cap2x`."""
        suffix = f"@cap{2**self.attempt}x" if self.attempt else ""
        return Path(root) / "cells" / f"{self.id}{suffix}"

    def command(self, root: Path, jtl: str = "jtl") -> list[str]:
        """The `jtl train` command that runs this cell (the same on a laptop or a cluster)."""
        return [
            *shlex.split(jtl),
            "train",
            "--config",
            self.spec,
            "--workdir",
            str(self.workdir(root)),
            *[f"--config.{o}" for o in self.overrides],
        ]

    @functools.cached_property
    def _config(self) -> mlc.ConfigDict:
        return config_lib.load_config(self.spec, self.overrides)

    def config(self) -> mlc.ConfigDict:
        """The cell's resolved config, loaded once per cell (each call returns a copy, so a
        caller that edits it changes nothing for the others)."""
        return self._config.copy_and_resolve_references()


def source_dir(root: Path, name: str, study: mlc.ConfigDict) -> Path:
    src = study.sources[name]
    if src.kind == "checkpoint":
        return Path(src.path).absolute()
    return Path(root).absolute() / "sources" / name


def _arms(study: mlc.ConfigDict) -> list[tuple[str, str, str, str, str, tuple[str, ...]]]:
    """(source, strategy, model label, extra args, variant label, variant overrides) per line
    of the report."""
    arms = []
    for strategy in study.strategies:
        if strategies.is_baseline(strategy):
            for label, args in study.scratch_models.items():
                arms.append(("none", strategy, label, args, "", ()))
        else:
            for source in study.sources:
                arms.append((source, strategy, "", "", "", ()))
    for label, v in study.arm_variants.items():
        for source in study.sources:
            arms.append((source, v.strategy, "", "", label, tuple(v.overrides)))
    return arms


def expand(study: mlc.ConfigDict, root: str | Path) -> list[Cell]:
    """The grid as cells, in a run order that finishes whole sizes first (early partial report)."""
    root = Path(root).absolute()
    cell_config = _resolve(study.cell_config)
    arms = _arms(study)
    multi_source = len(study.sources) > 1
    folds = int(study.kfold.folds)
    doublings = int(study.convergence.get("cap_doublings", 0)) if study.budget == "converged" else 0
    cells = []
    by_target = [s for sizes in study.sizes_by_target.values() for s in sizes]
    all_sizes = list(dict.fromkeys(str(s) for s in [*study.sizes, *by_target]))
    for size in all_sizes:
        size_overrides, per_class = _size_overrides(size)
        kfold = folds >= 2 and per_class is not None and per_class <= study.kfold.max_per_class
        base_steps = int(study.steps_by_size.get(str(size), study.steps))
        for target, target_args in study.targets.items():
            if str(size) not in map(str, study.sizes_by_target.get(target, study.sizes)):
                continue
            for source, strategy, model, model_args, variant, variant_overrides in arms:
                arm = variant or strategy
                if strategies.is_baseline(strategy) and model:
                    arm = f"{strategy}/{model}"
                elif multi_source:
                    arm = f"{arm}@{source}"
                steps = base_steps
                if strategies.is_baseline(strategy):
                    steps = max(1, round(base_steps * study.scratch_schedule_mult))
                tune_seeds = int(study.sweep_tune_seeds) if sweep_lib.grid(study, strategy) else 0
                tuner_ids: list[str] = []
                # The base config: the cell config with the target's and the model's arguments.
                base_args = ",".join(a for a in (target_args, model_args) if a)
                spec = f"{cell_config}:{base_args}" if base_args else str(cell_config)
                for r, seed in enumerate(study.seeds):
                    fold = r % folds if kfold else -1
                    overrides = [f"strategy={strategy}", *size_overrides, f"total_steps={steps}"]
                    overrides.append(f"seed={seed}")
                    if source != "none":
                        overrides.append(f"init.checkpoint={source_dir(root, source, study)}")
                    overrides += list(study.overrides)
                    overrides += list(study.target_overrides.get(target, ()))
                    overrides += list(study.strategy_overrides.get(strategy, ()))
                    overrides += list(variant_overrides)
                    if kfold:
                        overrides += [f"num_folds={folds}", f"fold={fold}"]
                    overrides += budget_overrides(study, strategy, str(size))
                    arm_dir = arm.replace("/", "-").replace("@", "-")
                    rep = f"seed{seed}" + (f"_fold{fold}" if kfold else "")
                    cell = Cell(
                        id=f"{target}/{arm_dir}/{str(size).replace('%', 'pct')}/{rep}",
                        target=target,
                        source=source,
                        strategy=strategy,
                        model=model,
                        arm=arm,
                        size=size_label(size),
                        seed=int(seed),
                        fold=fold,
                        spec=spec,
                        overrides=tuple(overrides),
                        cap_doublings=doublings,
                    )
                    if tune_seeds and r >= tune_seeds:
                        cell = dataclasses.replace(cell, tuned_by=tuple(tuner_ids[:tune_seeds]))
                    tuner_ids.append(cell.id)
                    cells += sweep_lib.trial_cells(study, cell)
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise StudyError("two cells share a directory: make target and model labels distinct")
    return cells


def batch_sizes(cells: Sequence[Cell]) -> set[int]:
    """Every train and eval batch size of the cells (the CPU device count must divide them)."""
    configs = [c.config() for c in cells]
    return {b for c in configs for b in (c.batch_size, c.eval_batch_size)}


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """A study config and its cells, expanded once: the CLI sizes the CPU devices from the
    cells' batch sizes before jax starts, then `run_study` runs the same cells."""

    spec: str
    study: mlc.ConfigDict
    cells: tuple[Cell, ...]

    def batch_sizes(self) -> set[int]:
        return batch_sizes(self.cells)


def plan_study(spec: str, workdir: str | Path) -> StudyPlan:
    """`configs/studies/NAME.py[:arg]` and the study's workdir -> its plan."""
    study = load_study(spec)
    return StudyPlan(spec, study, tuple(expand(study, workdir)))
