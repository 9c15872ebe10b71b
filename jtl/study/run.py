"""Running a study: the fine-tune-vs-scratch grid, run cell by cell, resumable, then one report.

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
stalls, capped by `convergence.max_epochs` (jtl/study/budget.py). `sweep` gives every arm the
same hyperparameter grid, chosen on validation only (jtl/study/sweep.py). Sizes of at most
`kfold.max_per_class` examples per class use k-fold cross-validation inside the labelled
budget: replicate r trains with seed `seeds[r]` on all folds but `r % k` and validates on that
one, so the spread covers data splits and seeds, and the test set never takes part in model
selection.

A cell is a base config plus config-field overrides (jtl/study/grid.py): the base is the
study's `cell_config` with a target's and a scratch model's argument strings; the cell sets
`strategy`, `train_per_class` / `train_fraction`, `total_steps`, `seed` and `init.checkpoint`.
So a cell config states its evaluation, checkpoint and warm-up cadences as fractions of
`total_steps` (jtl/config/cadence.py; configs/transfer.py).
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections as mlc
from absl import logging

from jtl import config as config_lib
from jtl.evaluation import run_summary
from jtl.runtime.paths import write_text_atomic
from jtl.runtime.preemption import EXIT_CODE as PREEMPTED_EXIT
from jtl.runtime.preemption import Preempted, Preemption
from jtl.study import sweep as sweep_lib
from jtl.study import workers as workers_lib
from jtl.study.budget import current_attempt
from jtl.study.finished import is_finished
from jtl.study.grid import Cell, StudyError, StudyPlan, source_dir, study_defaults
from jtl.study.results import advise_scores, collect, diverged_cells, diverged_step


def run_train(config: mlc.ConfigDict, workdir: Path) -> dict[str, Any]:
    """Trains unless finished; returns the summary."""
    if is_finished(workdir, config):
        return dict(run_summary.read(workdir) or {})
    from jtl.run.train import train

    return train(config, workdir)


def prepare_sources(study: mlc.ConfigDict, root: Path) -> dict[str, Path]:
    """Trains / imports every source once (skipped when already there)."""
    out = {}
    for name, src in study.sources.items():
        directory = source_dir(root, name, study)
        if src.kind == "train":
            spec = str(config_lib.resolve_config_path(src.config.partition(":")[0]))
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


def _run_in_process(cell: Cell, root: Path) -> None:
    from jtl.runtime.errors import DivergedError

    config = cell.config()
    config.progress = False
    try:
        run_train(config, cell.workdir(root))
    except DivergedError as e:  # a result, not a failure: summary.json records it
        logging.warning("cell %s diverged: %s", cell.id, e)


class _Progress:
    """One line per finished cell, with an ETA at the rate so far: a study of hours must show
    that it moves. One per `run_cells`, so the later seeds' cells continue the count; serial
    and parallel runs print the same kind of line (serial ones add the cell's seconds)."""

    def __init__(self, total: int) -> None:
        self.total, self.finished, self.t0 = total, 0, time.time()

    def line(self, cell_id: str, status: str) -> None:
        self.finished += 1
        minutes = (time.time() - self.t0) / 60
        eta = minutes / self.finished * (self.total - self.finished)
        print(
            f"[study] {self.finished}/{self.total} {cell_id} {status} "
            f"(ETA {int(eta // 60)}h{int(eta % 60):02d} at the rate so far)",
            flush=True,
        )


def _run_parallel(
    cells: Sequence[Cell],
    root: Path,
    workers: int,
    clock: StudyClock | None,
    progress: _Progress,
) -> list[tuple[Cell, str]]:
    """Runs cells' `jtl train` commands on `workers` persistent worker processes, one XLA
    device each (jtl.study.workers); on SIGTERM, forwards it, waits, raises Preempted.

    The clock ticks as each cell ends, so a study killed outright (SIGKILL, a lost machine)
    still has its time up to the last finished cell in timing.json."""
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    if "--xla_force_host_platform_device_count" not in env["XLA_FLAGS"]:
        env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=1"
    failed: list[tuple[Cell, str]] = []

    def done(cell: Cell, rc: int) -> bool:
        ok = rc != PREEMPTED_EXIT and (not rc or diverged_step(cell.workdir(root)) is not None)
        if clock is not None:
            clock.tick(cells_done=int(ok))  # a diverged cell is a result, as in run_cells
        if rc == PREEMPTED_EXIT:  # checkpointed; stop launching, a re-run resumes
            failed.append((cell, f"preempted (exit {PREEMPTED_EXIT}); re-run to resume"))
            return False
        if not ok:
            why = "its worker died" if rc == workers_lib.DIED else f"exit {rc}"
            failed.append((cell, f"{why}, see {cell.workdir(root)}/train.log"))
        progress.line(cell.id, "done" if ok else "FAILED")
        return True

    jobs = []
    for cell in cells:
        workdir = cell.workdir(root)
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [*cell.command(root, jtl=""), "--config.progress=False"]  # `jtl train ...`
        jobs.append((cell, argv, workdir / "train.log"))
    with Preemption() as preempt, workers_lib.WorkerPool(workers, env, root / "workers") as pool:
        pool.run(jobs, done, lambda: preempt.requested)
        if preempt.requested:
            what = "the running cells checkpointed"
            raise Preempted(None, preempt.signal_name or "SIGTERM", what)
    return failed


class StudyClock:
    """Wall time spent on a study, summed over invocations and saved as it goes.

    `timing.json` is rewritten after every finished cell, so a killed or resumed study still
    reports the time it took in total (`runs` lists each invocation's start and seconds).
    """

    def __init__(self, root: Path) -> None:
        self.path = root / "timing.json"
        self.data: dict[str, Any] = {}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
                if not isinstance(self.data, dict):
                    raise ValueError(f"a JSON {type(self.data).__name__}, not an object")
            except (OSError, ValueError) as e:  # only the total is lost, never the study
                bad = self.path.with_name(self.path.name + ".bad")
                logging.warning("%s unreadable (%s): kept as %s; the wall time restarts from 0",
                                self.path, e, bad.name)  # fmt: skip
                self.data = {}
                try:
                    self.path.replace(bad)
                except OSError:  # unreadable and immovable: the next save overwrites it
                    pass
        self.data.setdefault("wall_time_s", 0.0)
        self.data.setdefault("runs", [])
        self.run: dict[str, Any] | None = None
        self.last = time.time()

    @property
    def wall_time_s(self) -> float:
        return float(self.data["wall_time_s"])

    def start(self) -> None:
        """Counts from now (call when work starts: sources, cells), under this code version."""
        from jtl.runtime.code_version import code_version

        code = code_version()
        if (before := self.code_versions()) and before != [code]:
            logging.warning(
                "this study ran under %s before and runs under %s now: its rows will mix code "
                "versions (run it from a worktree pinned at one commit: launch/study.sh)",
                ", ".join(before), code,
            )  # fmt: skip
        self.last = time.time()
        self.run = {
            "start": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": 0.0,
            "cells_run": 0,
            "code": code,
        }
        self.data["runs"].append(self.run)

    def code_versions(self) -> list[str]:
        """The code versions its invocations ran under, oldest first ('unrecorded' before
        versions were recorded)."""
        seen = [r.get("code", "unrecorded") for r in self.data["runs"]]
        return list(dict.fromkeys(seen))

    def tick(self, cells_done: int = 0) -> None:
        """Adds the time since the last tick and saves."""
        if self.run is None:
            return
        now = time.time()
        self.data["wall_time_s"] += now - self.last
        self.run["seconds"] += now - self.last
        self.run["cells_run"] += cells_done
        self.last = now
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(self.data, indent=1) + "\n")
        except OSError as e:  # a full disk must not stop the cells; the next tick retries
            logging.warning("could not save %s: %s", self.path, e)


def _stop_if_preempted(failed: Sequence[tuple[Cell, str]]) -> None:
    """A cell process that exited 75 was preempted: the study stops too (and exits 75)."""
    hit = [c for c, why in failed if why.startswith("preempted")]
    if hit:
        raise Preempted(None, "SIGTERM", f"in {len(hit)} cell(s), checkpoints saved")


def _run_with_doublings(
    cells: Sequence[Cell],
    root: Path,
    workers: int,
    clock: StudyClock | None,
    progress: _Progress,
) -> list[tuple[Cell, str]]:
    """Runs cells in parallel, then the re-runs (cap doubled) of those that hit their cap
    still improving, until none is left (jtl.study.budget.current_attempt); stops on a
    preemption. Later seeds choose from the trials' last attempts, so this ends first."""
    failed: list[tuple[Cell, str]] = []
    while cells:
        failed += _run_parallel(cells, root, workers, clock, progress)
        _stop_if_preempted(failed)
        cells = [a for c in cells if (a := current_attempt(c, root)).attempt > c.attempt]
        progress.total += len(cells)
    return failed


def run_cells(
    cells: Sequence[Cell], root: Path, parallel: int = 1, clock: StudyClock | None = None
) -> tuple[int, list[tuple[Cell, str]]]:
    """Runs unfinished cells; returns (cells run, failures). A failure never stops the rest."""
    grid = sweep_lib.resolve_all(cells, root)
    todo = [c for c in grid if not is_finished(c.workdir(root), c.config())]
    logging.info("%d of %d cells to run", len(todo), len(cells))
    if parallel > 1:
        # Later seeds that reuse the first seeds' choice (sweep_tune_seeds) wait for their grids.
        first = [c for c in todo if not (c.tuned_by and not c.chosen)]
        progress = _Progress(len(todo))
        failed = _run_with_doublings(first, root, parallel, clock, progress)
        later = [sweep_lib.resolve(c, grid, root) for c in todo if c not in first]
        unresolved = [c for c in later if not c.chosen]
        failed += [(c, sweep_lib.why_unresolved(c, grid, root)) for c in unresolved]
        # Chosen only now (after the trials' re-runs at a doubled cap), some finished in an
        # earlier invocation, or need their own re-run: only those run.
        later = [current_attempt(c, root) for c in later if c.chosen]
        later = [c for c in later if not is_finished(c.workdir(root), c.config())]
        progress.total = progress.finished + len(later)  # unresolved ones are failures
        failed += _run_with_doublings(later, root, parallel, clock, progress)
        return len(todo), failed
    failed, progress = [], _Progress(len(todo))
    for cell in todo:
        t = time.time()
        try:
            cell = sweep_lib.resolve(cell, grid, root)  # its tuning seeds ran earlier in `todo`
            if cell.tuned_by and not cell.chosen:
                raise StudyError(sweep_lib.why_unresolved(cell, grid, root))
            _run_in_process(cell, root)
            while (again := current_attempt(cell, root)).attempt > cell.attempt:  # hit its cap
                logging.info("cell %s hit its cap still improving: cap doubled", cell.id)
                cell = again
                _run_in_process(cell, root)
        except Preempted:  # the cell saved a checkpoint: stop the study; a re-run resumes
            if clock is not None:
                clock.tick()
            raise
        except Exception as e:  # noqa: BLE001 - report the cell, go on with the grid
            logging.exception("cell %s failed", cell.id)
            failed.append((cell, f"{type(e).__name__}: {e}"))
            progress.line(cell.id, "FAILED")
            if clock is not None:
                clock.tick()  # a failed cell's time was spent too
            continue
        progress.line(cell.id, f"done in {time.time() - t:.0f}s")
        if clock is not None:
            clock.tick(cells_done=1)
    return len(todo), failed


def write_cells_file(cells: Sequence[Cell], root: Path, study_spec: str) -> Path:
    """cells.txt: one command per line, for cluster array jobs or by hand.

    A cell's line is its `jtl train` command; a later seed whose learning rate its tuning seeds
    choose (not yet known), and a cell that may be re-run at a doubled cap, get
    `jtl study ... --cell I`, which resolves it and re-runs it when it hits its cap.
    """

    def line(i: int, c: Cell) -> str:
        if (c.tuned_by and not c.chosen) or c.attempt < c.cap_doublings:
            study = ["jtl", "study", "--config", study_spec, "--workdir", str(root)]
            return shlex.join([*study, "--cell", str(i)])
        return shlex.join(c.command(root))

    lines = [
        f"# {len(cells)} cells of {study_spec}; line i+2 is `jtl study ... --cell {{i}}`",
        *(line(i, c) for i, c in enumerate(cells)),
    ]
    path = root / "cells.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def record_study(root: Path, spec: str, study: mlc.ConfigDict, amend: bool = True) -> None:
    """study.json pins the grid: a workdir never silently mixes two different studies.

    `amend=False` (`--only report`): an amendable change is refused too, since the report would
    describe runs (re-runs at a doubled cap) that have not run."""
    path = root / "study.json"
    d = config_lib.to_dict(study)
    if path.exists():
        old = json.loads(path.read_text())
        defaults = config_lib.to_dict(study_defaults())
        diff = config_lib.recorded_diff(old.get("study", {}), d, defaults)
        amendable = bool(diff) and _amendable(diff, old.get("study", {}), d)
        if amendable and amend:
            _amend(path, old, d, diff, defaults)
        elif amendable:
            raise StudyError(
                f"{root} was run with other {', '.join(diff)}; --only report cannot take the "
                "change (run the study without --only to re-run its capped cells first)"
            )
        elif diff:
            raise StudyError(
                f"{root} holds a different study (differs in: {', '.join(diff)}). Nothing was "
                "changed; use a new --workdir, or the same study config to resume."
            )
        return
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"spec": spec, "study": d}, indent=2) + "\n")


# Study fields a finished workdir may take a larger value of: it only adds runs, and every
# finished one keeps its result (more cap doublings re-run cells that hit their cap).
AMENDABLE = ("convergence.cap_doublings",)


def _amendable(diff: Sequence[str], old: dict[str, Any], new: dict[str, Any]) -> bool:
    before, after = config_lib.flatten(old), config_lib.flatten(new)
    return all(k in AMENDABLE and int(after.get(k) or 0) >= int(before.get(k) or 0) for k in diff)


def _amend(
    path: Path,
    old: dict[str, Any],
    new: dict[str, Any],
    diff: Sequence[str],
    defaults: dict[str, Any],
) -> None:
    """Records the larger value in study.json, with what it was and when (`amended`)."""
    before = {**config_lib.flatten(defaults), **config_lib.flatten(old.get("study", {}))}
    after = config_lib.flatten(new)
    changes = {k: [before.get(k), after.get(k)] for k in diff}
    amended = [*old.get("amended", []), {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **changes}]
    write_text_atomic(path, json.dumps({**old, "study": new, "amended": amended}, indent=2) + "\n")
    logging.warning("%s: study amended (%s); finished cells keep their results", path, changes)


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
    plan: StudyPlan,
    workdir: str | Path,
    parallel: int = 1,
    cell_index: int | None = None,
    only: str = "all",
    command: str = "",
) -> dict[str, Any]:
    """Runs (or resumes) a study and writes its report; returns the report's paths and status.

    `plan`: `plan_study(spec, workdir)`, the study expanded once (the caller sizes the CPU
    devices from its batch sizes first).

    `only`: "all", "sources", "cells" (sources must exist), "report" (from finished cells).
    `cell_index`: run just that cell (a cluster array job), then stop without a report.
    """
    root = Path(workdir).absolute()
    spec, study = plan.spec, plan.study
    if only == "report" and not (root / "study.json").exists():
        raise StudyError(
            f"--only report: {root} holds no study to report on (no study.json); run the "
            "study first: the same command without --only report"
        )
    record_study(root, spec, study, amend=only != "report")
    cells = sweep_lib.resolve_all(list(plan.cells), root)
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
    try:  # however it ends (preempted, Ctrl-C, an error), the time spent is saved
        if only in ("all", "sources"):
            prepare_sources(study, root)
            clock.tick()
        if only in ("all", "cells"):
            _, failed = run_cells(cells, root, parallel, clock)
        if only == "sources":
            return {"cells": 0, "failed": []}
        cells = sweep_lib.resolve_all(cells, root)  # later seeds whose tuning seeds ran just now
        advise = advise_scores(study, root, cells)
        sweep_lib.finalize(cells, root)  # choose each swept cell's trial on validation, test it
        sweep_lib.make_soups(cells, root, tuple(study.get("soups") or ()))
    finally:
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
        "code_versions": clock.code_versions(),
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
