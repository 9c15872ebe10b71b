"""Studies: the fine-tune-vs-scratch grid, run cell by cell, resumable, then one report.

A study config (`configs/studies/NAME.py`) names sources (pretrained checkpoints: trained
here, imported, or given), targets, strategies, scratch models, training-set sizes and seeds.
`expand` turns it into cells; each cell is a normal `jtl train` run (`Cell.command`) in its own
sub-directory, so a cell can equally run in this process, in a local worker (`--parallel N`)
or as one cluster job (`--cell I`, see launch/). A finished cell (summary.json of the same
config) is skipped, a killed one resumes from its checkpoint, and re-running a finished study
only rebuilds the report.

Fair budgets: every strategy gets the same optimizer steps at a size (`steps`, or
`steps_by_size`), scratch gets `scratch_schedule_mult` times more (He et al. needed longer
schedules to catch up); or, with `budget = "converged"`, every cell trains until validation
stalls, capped by `convergence.max_epochs` (jtl/study_budget.py). `sweep` gives every arm the
same hyperparameter grid, chosen on validation only (jtl/study_sweep.py). Sizes of at most
`kfold.max_per_class` examples per class use k-fold cross-validation inside the labelled
budget: replicate r trains with seed `seeds[r]` on all folds but `r % k` and validates on that
one, so the spread covers data splits and seeds, and the test set never takes part in model
selection.

The cell-config contract: every `cell_config` accepts the arguments `target, strategy,
per_class, fraction, init, steps, seed` (see configs/transfer.py); anything else goes through
`overrides` (config keys) or a target's / scratch model's argument string.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections as mlc
from absl import logging

from jtl import config as config_lib
from jtl import costs, run_summary
from jtl import study_sweep as sweep_lib
from jtl.study_budget import budget_overrides, convergence_defaults, validate_budget

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
    s.overrides = ()  # config overrides for every cell
    s.target_overrides = mlc.ConfigDict()  # target -> config overrides for its cells
    s.kfold = mlc.ConfigDict({"folds": 3, "max_per_class": 100})  # folds < 2: off
    s.early_stopping_patience = 0  # equal-step budgets only: stop early on validation
    # "equal_steps" (the `steps` budget above) or "converged": every cell trains until
    # validation accuracy stalls (`convergence`: patience, min_delta, max_epochs[_by_size] cap,
    # scratch x scratch_schedule_mult, eval_every_epochs or eval_every_steps); see
    # jtl/study_budget.py. The report gives no verdict from a cell that hit its cap.
    s.budget = "equal_steps"
    s.convergence = convergence_defaults()
    # Equal tuning budget: values per axis (lr, weight_decay); their product is every SGD arm's
    # grid, chosen on validation only (jtl/study_sweep.py). Linear probes are not swept (they
    # pick their L2 on validation internally). sweep_by_strategy: strategy -> its own grid,
    # with the same number of trials.
    s.sweep = sweep_lib.sweep_defaults()
    s.sweep_by_strategy = mlc.ConfigDict()
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
    transfer = [s for s in study.strategies if s != "scratch"]
    if transfer and not study.sources:
        raise StudyError(
            f"strategies {transfer} need a pretrained source: add study.sources.NAME, or keep "
            "only 'scratch'"
        )
    for size in study.sizes:
        _size_args(size)
    for field in ("sizes_by_target", "target_overrides"):
        unknown = set(study[field]) - set(study.targets)
        if unknown:
            raise StudyError(f"{field} names {sorted(unknown)}, not in targets")
    sizes = set(map(str, study.sizes)) | {str(s) for v in study.sizes_by_target.values() for s in v}
    unknown = set(study.steps_by_size) - sizes
    if unknown:
        raise StudyError(f"steps_by_size has sizes {sorted(unknown)} not in sizes {study.sizes}")
    for problem in (validate_budget(study), sweep_lib.validate_sweep(study)):
        if problem:
            raise StudyError(problem)


# ----------------------------------------------------------------------------- grid


def _size_args(size: str) -> tuple[str, int | None]:
    """Size label -> (cell-config arguments, examples per class or None)."""
    size = str(size)
    if size == "full":
        return "fraction=1.0", None
    if size.endswith("%"):
        frac = float(size[:-1]) / 100
        if not 0 < frac <= 1:
            raise StudyError(f"size {size!r}: a percentage must be in (0, 100]")
        return f"fraction={frac}", None
    if size.isdigit() and int(size) > 0:
        return f"per_class={int(size)}", int(size)
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

    def workdir(self, root: Path) -> Path:
        return Path(root) / "cells" / self.id

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

    def config(self) -> mlc.ConfigDict:
        return config_lib.load_config(self.spec, self.overrides)


def source_dir(root: Path, name: str, study: mlc.ConfigDict) -> Path:
    src = study.sources[name]
    if src.kind == "checkpoint":
        return Path(src.path).absolute()
    return Path(root).absolute() / "sources" / name


def _arms(study: mlc.ConfigDict) -> list[tuple[str, str, str, str]]:
    """(source, strategy, model label, extra args) per line of the report."""
    arms = []
    for strategy in study.strategies:
        if strategy == "scratch":
            for label, args in study.scratch_models.items():
                arms.append(("none", "scratch", label, args))
        else:
            for source in study.sources:
                arms.append((source, strategy, "", ""))
    return arms


def expand(study: mlc.ConfigDict, root: str | Path) -> list[Cell]:
    """The grid as cells, in a run order that finishes whole sizes first (early partial report)."""
    root = Path(root).absolute()
    cell_config = _resolve(study.cell_config)
    arms = _arms(study)
    multi_source = len(study.sources) > 1
    folds = int(study.kfold.folds)
    cells = []
    by_target = [s for sizes in study.sizes_by_target.values() for s in sizes]
    all_sizes = list(dict.fromkeys(str(s) for s in [*study.sizes, *by_target]))
    for size in all_sizes:
        size_args, per_class = _size_args(size)
        kfold = folds >= 2 and per_class is not None and per_class <= study.kfold.max_per_class
        base_steps = int(study.steps_by_size.get(str(size), study.steps))
        for target, target_args in study.targets.items():
            if str(size) not in map(str, study.sizes_by_target.get(target, study.sizes)):
                continue
            for source, strategy, model, model_args in arms:
                arm = strategy
                if strategy == "scratch" and model:
                    arm = f"scratch/{model}"
                elif multi_source:
                    arm = f"{strategy}@{source}"
                steps = base_steps
                if strategy == "scratch":
                    steps = max(1, round(base_steps * study.scratch_schedule_mult))
                for r, seed in enumerate(study.seeds):
                    fold = r % folds if kfold else -1
                    args = [target_args, f"strategy={strategy}", size_args, f"steps={steps}"]
                    args.append(f"seed={seed}")
                    if source != "none":
                        args.append(f"init={source_dir(root, source, study)}")
                    args.append(model_args)
                    overrides = list(study.overrides)
                    overrides += list(study.target_overrides.get(target, ()))
                    overrides += list(study.strategy_overrides.get(strategy, ()))
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
                        spec=f"{cell_config}:" + ",".join(a for a in args if a),
                        overrides=tuple(overrides),
                    )
                    cells += sweep_lib.trial_cells(study, cell)
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise StudyError("two cells share a directory: make target and model labels distinct")
    return cells


# ----------------------------------------------------------------------------- running


def is_finished(workdir: Path, config: mlc.ConfigDict) -> bool:
    """A finished run of exactly this config lives in `workdir` (then it is not re-run)."""
    summary, cfg = workdir / "summary.json", workdir / "config.json"
    if not (summary.exists() and cfg.exists()):
        return False
    return not config_lib.config_diff(json.loads(cfg.read_text()), config)


def run_train(config: mlc.ConfigDict, workdir: Path) -> dict[str, Any]:
    """Trains unless finished; returns the summary."""
    if is_finished(workdir, config):
        return dict(run_summary.read(workdir) or {})
    from jtl.train import train

    return train(config, workdir)


def prepare_sources(study: mlc.ConfigDict, root: Path) -> dict[str, Path]:
    """Trains / imports every source once (skipped when already there)."""
    out = {}
    for name, src in study.sources.items():
        directory = source_dir(root, name, study)
        if src.kind == "train":
            spec = str(_resolve(src.config.partition(":")[0]))
            arg = src.config.partition(":")[2]
            config = config_lib.load_config(f"{spec}:{arg}" if arg else spec, ["progress=False"])
            summary = run_train(config, directory)
            if summary.get("diverged"):  # finished, but nothing to transfer from
                raise StudyError(
                    f"source {name!r} diverged at step {summary.get('diverged_step')} "
                    f"(see {directory}/summary.json); fix its config (e.g. a lower LR) and "
                    "move that workdir aside"
                )
            logging.info("source %s: test accuracy %.4f", name, summary["test_accuracy"])
        elif src.kind == "import":
            if not (directory / "import.json").exists():
                from jtl.interop.importer import import_checkpoint, package_weights

                file = package_weights(src.model) if src.file == "package" else src.file
                import_checkpoint(file, src.model, directory)
        elif not directory.exists():
            raise StudyError(f"sources.{name}.path={src.path!r} does not exist")
        out[name] = directory
    return out


def advise_scores(study: mlc.ConfigDict, root: Path, cells: Sequence[Cell]) -> list[dict]:
    """Transferability scores per (source, target), cached in `advise/`, for the report."""
    if not study.advise_sample or not study.sources:
        return []
    from jtl.advise import advise

    out = []
    for source in study.sources:
        for target in study.targets:
            cache = root / "advise" / f"{source}__{target}.json"
            if cache.exists():
                out.append(json.loads(cache.read_text()))
                continue
            config = next(c for c in cells if c.target == target).config()
            try:
                result = advise(
                    source_dir(root, source, study),
                    config.dataset,
                    sample=study.advise_sample,
                    image_size=config.image_size,
                )
            except Exception as e:  # noqa: BLE001 - a model advise cannot score is reported
                logging.warning("advise %s -> %s failed: %s", source, target, e)
                continue
            record = {
                "source": source,
                "target": target,
                **{k: float(v) for k, v in result["pretrained"].items()},
                "random_init": result["random_init"],
                "recommendation": result["recommendation"],
                "reasons": result["reasons"],
            }
            record["hscore"] = record.get("h_score", float("nan"))
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(record, indent=2) + "\n")
            out.append(record)
    return out


def _run_in_process(cell: Cell, root: Path) -> None:
    from jtl.errors import DivergedError

    config = config_lib.load_config(cell.spec, [*cell.overrides, "progress=False"])
    try:
        run_train(config, cell.workdir(root))
    except DivergedError as e:  # a result, not a failure: summary.json records it
        logging.warning("cell %s diverged: %s", cell.id, e)


def diverged_step(workdir: Path) -> int | None:
    """The step a finished cell diverged at (summary.json `diverged`), else None."""
    s = run_summary.read(workdir)
    if s is None:
        return None
    return int(s.get("diverged_step") or 0) if s.get("diverged") else None


def diverged_cells(cells: Sequence[Cell], root: Path) -> list[str]:
    """`cell id: diverged at step N` for every diverged cell (the report lists them)."""
    out = []
    for cell in cells:
        step = diverged_step(cell.workdir(root))
        if step is not None:
            out.append(f"{cell.id}: diverged at step {step}")
    return out


def _run_parallel(cells: Sequence[Cell], root: Path, workers: int) -> list[tuple[Cell, str]]:
    """Runs cells as `jtl train` subprocesses, `workers` at a time, one XLA device each."""
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    if "--xla_force_host_platform_device_count" not in env["XLA_FLAGS"]:
        env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=1"
    jtl = f"{shlex.quote(sys.executable)} -m jtl.cli"
    queue = list(cells)
    running: list[tuple[Cell, subprocess.Popen, Any]] = []
    failed = []
    while queue or running:
        while queue and len(running) < workers:
            cell = queue.pop(0)
            workdir = cell.workdir(root)
            workdir.mkdir(parents=True, exist_ok=True)
            log = (workdir / "train.log").open("a")
            cmd = [*cell.command(root, jtl), "--config.progress=False"]
            running.append((cell, subprocess.Popen(cmd, stdout=log, stderr=log, env=env), log))
        time.sleep(0.5)
        for item in list(running):
            cell, proc, log = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            if proc.returncode and diverged_step(cell.workdir(root)) is None:
                failed.append((cell, f"exit {proc.returncode}, see {cell.workdir(root)}/train.log"))
            else:
                logging.info("cell done: %s", cell.id)
    return failed


class StudyClock:
    """Wall time spent on a study, summed over invocations and saved as it goes.

    `timing.json` is rewritten after every finished cell, so a killed or resumed study still
    reports the time it took in total (`runs` lists each invocation's start and seconds).
    """

    def __init__(self, root: Path) -> None:
        self.path = root / "timing.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data.setdefault("wall_time_s", 0.0)
        self.data.setdefault("runs", [])
        self.run: dict[str, Any] | None = None
        self.last = time.time()

    @property
    def wall_time_s(self) -> float:
        return float(self.data["wall_time_s"])

    def start(self) -> None:
        """Counts from now (call when work starts: sources, cells)."""
        self.last = time.time()
        self.run = {"start": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": 0.0, "cells_run": 0}
        self.data["runs"].append(self.run)

    def tick(self, cells_done: int = 0) -> None:
        """Adds the time since the last tick and saves."""
        if self.run is None:
            return
        now = time.time()
        self.data["wall_time_s"] += now - self.last
        self.run["seconds"] += now - self.last
        self.run["cells_run"] += cells_done
        self.last = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1) + "\n")


def run_cells(
    cells: Sequence[Cell], root: Path, parallel: int = 1, clock: StudyClock | None = None
) -> tuple[int, list[tuple[Cell, str]]]:
    """Runs unfinished cells; returns (cells run, failures). A failure never stops the rest."""
    todo = [c for c in cells if not is_finished(c.workdir(root), c.config())]
    logging.info("%d of %d cells to run", len(todo), len(cells))
    if parallel > 1:
        failed = _run_parallel(todo, root, parallel)
        if clock is not None:
            clock.tick(cells_done=len(todo) - len(failed))
        return len(todo), failed
    failed = []
    for i, cell in enumerate(todo):
        t = time.time()
        try:
            _run_in_process(cell, root)
        except Exception as e:  # noqa: BLE001 - report the cell, go on with the grid
            logging.exception("cell %s failed", cell.id)
            failed.append((cell, f"{type(e).__name__}: {e}"))
            if clock is not None:
                clock.tick()  # a failed cell's time was spent too
            continue
        print(f"[study] {i + 1}/{len(todo)} {cell.id} ({time.time() - t:.0f}s)", flush=True)
        if clock is not None:
            clock.tick(cells_done=1)
    return len(todo), failed


# ----------------------------------------------------------------------------- results


def _curve(workdir: Path) -> dict[str, list[list[float]]]:
    from jtl.metrics import read_metrics

    curve: dict[str, list[list[float]]] = {"train": [], "val": []}
    for r in read_metrics(workdir):
        if r.get("split") in curve and "loss" in r:
            curve[r["split"]].append([r["step"], r["loss"], r.get("accuracy")])
    return curve


def collect(cells: Sequence[Cell], root: Path) -> list[dict[str, Any]]:
    """One row per finished cell: its identity, summary numbers, cost, convergence and curves.

    A swept cell gives one row, from the trial chosen on validation (jtl.study_sweep), once
    its whole grid has finished and been selected.
    """
    rows = []
    for cell in cells:
        result = sweep_lib.cell_result(cell, root)
        if result is None:
            continue
        cell_id, s, sweep = result
        if s.get("diverged"):  # no accuracy to average in; see diverged_cells
            continue
        flops = s.get("flops_per_step")
        steps_run = s.get("steps_run", s.get("steps", 0))
        num_classes = s.get("num_classes") or 0
        rows.append(
            {
                "cell": cell_id,
                "target": cell.target,
                "source": cell.source,
                "strategy": cell.strategy,
                "model": cell.model or s.get("model", ""),
                "arm": cell.arm,
                "size": cell.size,
                "train_examples": int(s["train_examples"]),
                "per_class": s["train_examples"] / num_classes if num_classes else None,
                "seed": cell.seed,
                "fold": cell.fold,
                "test_accuracy": float(s["test_accuracy"]),
                "val_accuracy": float(s.get("val_accuracy", float("nan"))),
                "test_loss": float(s.get("test_loss", float("nan"))),
                "val_loss": float(s.get("val_loss", float("nan"))),
                "steps": int(steps_run),
                "wall_time_s": float(s.get("wall_time_s", float("nan"))),
                "images_seen": int(s.get("images_seen", 0)),
                "train_flops": flops * steps_run if flops else None,
                # Cost of the run (jtl.costs); older summaries lack some: None.
                **{k: s.get(k) for k in costs.COST_FIELDS},
                "early_stopped_step": (s.get("early_stopping") or {}).get("stopped_step"),
                # Runs from before converged budgets were equal-step runs.
                "budget": s.get("budget", "equal_steps"),
                "converged": bool(s.get("converged", False)),
                "best_step": s.get("best_step"),
                "epochs_run": s.get("epochs_run"),
                "probe_grid": len(s.get("probe_val_accuracy") or {}) or None,
                **_probe_choice(s),
                **sweep,
                "curve": _curve(cell.workdir(root)),
            }
        )
    return rows


def _probe_choice(summary: dict[str, Any]) -> dict[str, Any]:
    """A linear probe's own validation choice (probe kind and L2), shown with the sweeps."""
    if "probe" not in summary:
        return {}
    return {"chosen": {"probe": summary["probe"], "l2": summary.get("probe_hyper")}}


def write_cells_file(cells: Sequence[Cell], root: Path, study_spec: str) -> Path:
    """cells.txt: one `jtl train` command per line, for cluster array jobs or by hand."""
    lines = [
        f"# {len(cells)} cells of {study_spec}; line i+2 is `jtl study ... --cell {{i}}`",
        *(shlex.join(c.command(root)) for c in cells),
    ]
    path = root / "cells.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def record_study(root: Path, spec: str, study: mlc.ConfigDict) -> None:
    """study.json pins the grid: a workdir never silently mixes two different studies."""
    path = root / "study.json"
    d = config_lib.to_dict(study)
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("study") != d:
            before = old.get("study", {})
            diff = sorted(k for k in set(before) | set(d) if before.get(k) != d.get(k))
            raise StudyError(
                f"{root} holds a different study (differs in: {', '.join(diff)}). Nothing was "
                "changed; use a new --workdir, or the same study config to resume."
            )
        return
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"spec": spec, "study": d}, indent=2) + "\n")


# ----------------------------------------------------------------------------- main


def machine_description() -> str:
    import platform

    import jax

    devices = jax.devices()
    kind = devices[0].device_kind if devices else "?"
    return (
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, "
        f"{len(devices)} {devices[0].platform if devices else '?'} device(s) ({kind}), "
        f"jax {jax.__version__}"
    )


def run_study(
    spec: str,
    workdir: str | Path,
    parallel: int = 1,
    cell_index: int | None = None,
    only: str = "all",
    command: str = "",
) -> dict[str, Any]:
    """Runs (or resumes) a study and writes its report; returns the report's paths and status.

    `only`: "all", "sources", "cells" (sources must exist), "report" (from finished cells).
    `cell_index`: run just that cell (a cluster array job), then stop without a report.
    """
    root = Path(workdir).absolute()
    study = load_study(spec)
    record_study(root, spec, study)
    cells = expand(study, root)
    write_cells_file(cells, root, spec)
    if cell_index is not None:
        if not 0 <= cell_index < len(cells):
            raise StudyError(f"--cell {cell_index}: this study has cells 0..{len(cells) - 1}")
        prepare_sources(study, root)
        _, failed = run_cells([cells[cell_index]], root)
        return {"cells": 1, "failed": [(c.id, why) for c, why in failed]}
    failed: list[tuple[Cell, str]] = []
    clock = StudyClock(root)
    todo = only != "report" and any(not is_finished(c.workdir(root), c.config()) for c in cells)
    if todo:
        clock.start()
    if only in ("all", "sources"):
        prepare_sources(study, root)
        clock.tick()
    if only in ("all", "cells"):
        _, failed = run_cells(cells, root, parallel, clock)
    if only == "sources":
        return {"cells": 0, "failed": []}
    advise = advise_scores(study, root, cells)
    sweep_lib.finalize(cells, root)  # choose each swept cell's trial on validation, then test it
    clock.tick()
    rows = collect(cells, root)
    from jtl.report import build_report

    meta = {
        "name": study.name,
        "title": study.title or study.name,
        "command": command or f"jtl study --config {spec} --workdir {workdir}",
        "machine": machine_description(),
        "wall_time_s": clock.wall_time_s,
        "wall_time_runs": len(clock.data["runs"]),
        "cells": len(cells),
        "finished_cells": len(rows),
        "failed_cells": [f"{c.id}: {why}" for c, why in failed],
        "diverged_cells": diverged_cells(cells, root),
        "advise": advise,
        "budget": study.budget,
        "convergence": config_lib.to_dict(study.convergence) if study.budget == "converged" else {},
        "sweep": {s: sweep_lib.grid(study, s) for s in study.strategies},
    }
    paths = build_report(meta, rows, root)
    return {
        "cells": len(cells),
        "finished": len(rows),
        "failed": meta["failed_cells"],
        "diverged": meta["diverged_cells"],
        **paths,
    }
