"""Equal tuning budget per arm: a small hyperparameter grid, chosen on validation only.

`study.sweep` (or `study.sweep_by_strategy.STRATEGY`) lists values per axis (`lr`,
`weight_decay`); their product is every arm's grid, and every swept arm must get the same
number of trials. Each trial is an ordinary cell with its own workdir
(`cells/TARGET/ARM/SIZE/seedS[_foldF]/lr0.1_wd0.0005`): resumable, skipped when finished.

Trials run with `eval_test=False`, so training a trial never reads the test split. Once every
trial of a cell has finished, `finalize` picks the trial with the best validation accuracy (the
k-fold validation fold at tiny sizes; ties go to the first trial in grid order), and only then
evaluates that one trial on test, from its final checkpoint (which holds its best evaluated
weights), writing `selected.json` beside the trials. The report reads the chosen values, each
arm's spread of validation accuracy across its grid, and the tuning cost (all trials).

`study.sweep_tune_seeds = N` tunes on the first N seeds only: a later seed's cell trains once,
at the values with the best mean validation accuracy over those seeds' grids (`resolve`, just
before it runs). Every arm still gets the same grid; the report marks those rows `tuned_on`.

Linear-probe arms are not swept: SGD hyperparameters mean nothing to them, and they already
choose their L2 strength on validation from their own grid (jtl/transfer/probe.py); they count
as one run whose internal validation grid is their tuning budget, and the report says so. LP-FT's
fine-tuning stage is swept like any other SGD arm, and so is WiSE-FT's: a trial picks alpha on
validation only and keeps its w0 (`wise_start.npz`); the chosen trial's whole curve is evaluated
on test and the shifts after selection, like its test accuracy.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections as mlc
from absl import logging

from jtl import config as config_lib
from jtl.evaluation import run_summary
from jtl.study.budget import current_attempt, other_attempts
from jtl.study.finished import is_foreign
from jtl.transfer import strategies

# sweep axis -> the cell-config key it sets
AXES = {"lr": "optim.lr", "weight_decay": "optim.weight_decay"}
SELECTED = "selected.json"


def sweep_defaults() -> mlc.ConfigDict:
    """The `study.sweep` block: values per axis; empty tuples = no sweep."""
    return mlc.ConfigDict({axis: () for axis in AXES})


def grid(study: mlc.ConfigDict, strategy: str) -> list[dict[str, float]]:
    """The trials of one arm as {axis: value} dicts, in grid order; [] when not swept."""
    if not strategies.get(strategy).sgd:  # a closed-form fit: nothing to tune
        return []
    spec = study.sweep_by_strategy.get(strategy, study.sweep)
    axes = [(axis, tuple(spec.get(axis) or ())) for axis in AXES]
    axes = [(axis, values) for axis, values in axes if values]
    if not axes:
        return []
    names = [a for a, _ in axes]
    return [dict(zip(names, v, strict=True)) for v in itertools.product(*(v for _, v in axes))]


def trial_label(values: dict[str, float]) -> str:
    short = {"lr": "lr", "weight_decay": "wd"}
    return "_".join(f"{short[k]}{v:g}" for k, v in values.items())


def validate_sweep(study: mlc.ConfigDict) -> str | None:
    """An error message when arms would not get the same number of trials, else None."""
    for name, spec in [("sweep", study.sweep), *study.sweep_by_strategy.items()]:
        unknown = set(spec) - set(AXES)
        if unknown:
            return f"{name} has axes {sorted(unknown)}; sweepable: {sorted(AXES)}"
    unknown = set(study.sweep_by_strategy) - set(study.strategies)
    if unknown:
        return f"sweep_by_strategy names {sorted(unknown)}, not in strategies"
    counts = {s: len(grid(study, s)) for s in study.strategies if strategies.get(s).sgd}
    tune = study.get("sweep_tune_seeds", 0)
    if not isinstance(tune, int) or not 0 <= tune <= len(study.seeds):
        n = len(study.seeds)
        return f"sweep_tune_seeds={tune!r}: use 0 (every seed tunes) up to len(seeds)={n}"
    if any(counts.values()):
        if len(set(counts.values())) > 1:
            return f"every swept arm needs the same number of trials, got {counts}"
    return None


def trial_cells(study: mlc.ConfigDict, cell: Any) -> list[Any]:
    """`cell` itself when its arm is not swept or it reuses earlier seeds' choice (`tuned_by`),
    else one cell per trial of the grid."""
    trials = grid(study, cell.strategy)
    if not trials or cell.tuned_by:
        return [cell]
    out = []
    for values in trials:
        label = trial_label(values)
        sets = [f"{AXES[k]}={v!r}" for k, v in values.items()]
        out.append(
            dataclasses.replace(
                cell,
                id=f"{cell.id}/{label}",
                trial=label,
                overrides=(*cell.overrides, *sets, "eval_test=False"),
            )
        )
    return out


def group_id(cell: Any) -> str:
    """The cell id a trial belongs to (its own id when it is not a trial)."""
    return cell.id.rsplit("/", 1)[0] if cell.trial else cell.id


def groups(cells: Sequence[Any]) -> dict[str, list[Any]]:
    """Trials per swept cell, in grid order."""
    out: dict[str, list[Any]] = defaultdict(list)
    for c in cells:
        if c.trial:
            out[group_id(c)].append(c)
    return dict(out)


def tuned_choice(cell: Any, cells: Sequence[Any], root: Path) -> str | None:
    """The trial label a `tuned_by` cell trains at: best mean validation accuracy over the
    tuning seeds' grids (a value that diverged on any of them loses; ties go to the first in grid
    order). None while any of their trials is unfinished, or when every value diverged.
    """
    by_group = groups(cells)
    if any(gid not in by_group for gid in cell.tuned_by):
        return None
    scores: dict[str, list[float]] = defaultdict(list)
    for gid in cell.tuned_by:
        for trial in by_group[gid]:
            # A trial re-run at a doubled cap counts with its last attempt (none yet: wait).
            summary = run_summary.read(current_attempt(trial, root).workdir(root))
            if summary is None:
                return None
            scores[trial.trial].append(trial_val_accuracy(summary))
    means = {label: sum(v) / len(v) for label, v in scores.items()}
    best = max(means.values())
    return next(label for label, m in means.items() if m == best) if best > -math.inf else None


def _saved_choice(cell: Any, root: Path) -> dict[str, float] | None:
    """The grid values a later seed's run started with (its config.json), if it started."""
    cfg = _read(cell.workdir(root) / "config.json")
    if cfg is None:
        return None
    return {axis: float(cfg[key.split(".")[0]][key.split(".")[1]]) for axis, key in AXES.items()}


def resolve(cell: Any, cells: Sequence[Any], root: Path) -> Any:
    """`cell` with its tuning seeds' chosen values set, once their grids finished (else as is).

    Why: a later seed's learning rate is known only after the first seeds' trials ran, so its
    config (and so its fingerprint) is completed here, just before it is checked or run. The
    choice is made once: a cell whose run already started keeps the values it started with.
    """
    if not cell.tuned_by or cell.chosen:
        return cell
    label = tuned_choice(cell, cells, root)
    if label is None:
        return cell
    trial = next(t for t in cells if t.trial == label and group_id(t) == cell.tuned_by[0])
    values = grid_values(trial)
    saved = _saved_choice(cell, root)
    if saved is not None:
        values = {axis: saved[axis] for axis in values}
        label = trial_label(values)
    sets = [f"{AXES[k]}={v!r}" for k, v in values.items()]
    return dataclasses.replace(cell, overrides=(*cell.overrides, *sets), chosen=label)


def why_unresolved(cell: Any, cells: Sequence[Any], root: Path) -> str:
    """Why a later seed has no chosen values yet (run_cells reports it as the cell's failure)."""
    by_group = groups(cells)
    trials = [current_attempt(t, root) for gid in cell.tuned_by for t in by_group.get(gid, ())]
    if trials and all(run_summary.read(t.workdir(root)) is not None for t in trials):
        return f"every value of its tuning seeds' grid diverged ({', '.join(cell.tuned_by)})"
    return (
        f"its tuning seeds' trials ({', '.join(cell.tuned_by)}) have not all finished "
        "(sweep_tune_seeds): run those first"
    )


def resolve_all(cells: Sequence[Any], root: Path) -> list[Any]:
    """Every `tuned_by` cell whose tuning seeds finished, resolved (see `resolve`), and every
    cell at its current attempt (a re-run at a doubled cap: jtl.study.budget)."""
    return [current_attempt(resolve(c, cells, root), root) for c in cells]


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _fingerprint(workdir: Path) -> str | None:
    cfg = _read(workdir / "config.json")
    return cfg.get("_fingerprint") if cfg else None


def trial_val_accuracy(summary: dict[str, Any]) -> float:
    """A trial's validation accuracy; -inf for a diverged trial or one without a finite value.

    Why: a learning-rate grid wide enough to find the best value often holds one that diverges;
    such a trial loses the selection instead of breaking it, and is recorded as diverged.
    """
    value = summary.get("val_accuracy")
    if summary.get("diverged") or value is None or not math.isfinite(float(value)):
        return -math.inf
    return float(value)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def select(summaries: Sequence[dict[str, Any]]) -> int | None:
    """Index of the trial with the best validation accuracy; on a tie the lower validation
    loss, then the first in grid order.

    Why the loss: a small validation split saturates (every lfw_subset trial at 100 %), and the
    first grid point then wins whatever it learned. Reads validation numbers only: trials never
    computed a test number to look at. None when every trial diverged (the cell then has no
    result, and the report lists it as diverged).
    """
    vals = [trial_val_accuracy(s) for s in summaries]
    best = max(vals)
    if best == -math.inf:
        return None

    def loss(s: dict[str, Any]) -> float:
        value = s.get("val_loss")
        return float(value) if value is not None and math.isfinite(float(value)) else math.inf

    tied = [i for i, v in enumerate(vals) if v == best]
    return min(tied, key=lambda i: (loss(summaries[i]), i))


def evaluate_test(config: mlc.ConfigDict, workdir: Path) -> dict[str, Any]:
    """Test loss and accuracy of a finished run's reported weights, from its last checkpoint."""
    from jtl.evaluation import calibration
    from jtl.run.train import WeightsEvaluator, evaluate_shifts, kept_arrays
    from jtl.transfer import strategies
    from jtl.weights import slim_checkpoint

    t = time.time()
    evaluate_split = WeightsEvaluator(config)
    # Whatever the run saved: full weights, or a PEFT run's slim checkpoint (its frozen base
    # read back from the base it names, sha256-checked) with its lora / adapter subtrees.
    v, _, _ = slim_checkpoint.read_run_variables(workdir)
    wise: dict[str, Any] = {}
    if strategies.wise_start(workdir) is not None:  # WiSE-FT: its curve, then the chosen alpha
        wise = strategies.wise_curve(workdir, config, v, evaluate_split)
        chosen = wise.pop("reported_variables")
        v = {k: x for k, x in chosen.items() if x}
    keep: list = []
    out = evaluate_split(v, "test", keep)
    # Calibration and shifts with the temperature the run fitted on its validation split.
    trial = run_summary.read(workdir) or {}
    temperature = float(trial.get("temperature") or 1.0)
    shifts = evaluate_shifts(evaluate_split, v, evaluate_split.data, temperature)
    return {
        "test_accuracy": out["accuracy"],
        "test_loss": out["loss"],
        "test_examples": out["examples"],
        "test_eval_time_s": time.time() - t,
        **calibration.split_fields("test", *kept_arrays(keep), temperature),
        **({"test_shifts": shifts} if shifts else {}),
        **(
            {"test_wise_ft": wise["wise_ft"], "test_wise_best_alpha": wise["wise_best_alpha"]}
            if wise
            else {}
        ),  # fmt: skip
    }


def _train_flops(s: dict[str, Any]) -> float | None:
    flops = s.get("flops_per_step")
    return flops * s.get("steps_run", s.get("steps", 0)) if flops else None


def finalize(cells: Sequence[Any], root: Path) -> list[dict[str, Any]]:
    """Chooses and test-evaluates every swept cell whose trials have all finished.

    A cell whose `selected.json` already names the same finished trials (same config
    fingerprints) is left as is, so re-running a finished study changes nothing.
    """
    out = []
    for gid, trials in groups(cells).items():
        summaries = [run_summary.read(c.workdir(root)) for c in trials]
        if any(s is None for s in summaries):
            continue  # the grid is not complete yet: no choice, no test number
        if any(is_foreign(c.workdir(root), c.config()) for c in trials):
            continue  # a trial holds another config's run: nothing to choose from (collect warns)
        fingerprints = [_fingerprint(c.workdir(root)) for c in trials]
        path = Path(root) / "cells" / gid / SELECTED
        old = _read(path)
        if old and [t["fingerprint"] for t in old["trials"]] == fingerprints:
            out.append(old)
            continue
        i = select(summaries)
        if i is None:
            logging.warning("sweep %s: every trial diverged; the cell has no result", gid)
            continue
        chosen = trials[i]
        config = config_lib.load_config(chosen.spec, [*chosen.overrides, "progress=False"])
        test = evaluate_test(config, chosen.workdir(root))  # only now, and only this trial
        # The tuning cost: every trial and its other attempts (earlier, or longer and diverged).
        spent = _cost([*summaries, *(s for c in trials for s in other_attempts(c, root))])
        record = {
            "cell": gid,
            "chosen": chosen.trial,
            "values": grid_values(chosen),
            "selected_on": "val_accuracy",
            "trials": [
                {
                    "trial": c.trial,
                    "values": grid_values(c),
                    "val_accuracy": _finite_or_none(trial_val_accuracy(s)),
                    "diverged": bool(s.get("diverged")),
                    "converged": s.get("converged"),
                    "cap_doublings": c.attempt,
                    "workdir": str(c.workdir(root).relative_to(Path(root).absolute())),
                    "fingerprint": fp,
                }
                for c, s, fp in zip(trials, summaries, fingerprints, strict=True)
            ],
            "test": test,
            "tuning": {
                "trials": len(trials),
                **spent,
                "wall_time_s": spent["wall_time_s"] + test["test_eval_time_s"],
            },
        }
        path.write_text(json.dumps(record, indent=1) + "\n")
        logging.info(
            "sweep %s: chose %s (val %.4f)", gid, chosen.trial, summaries[i]["val_accuracy"]
        )
        out.append(record)
    return out


def soup_dir(root: Path, gid: str, trials: Sequence[Any]) -> Path:
    """Where a swept cell's greedy soup lives: named by its trials' config fingerprints, so a
    changed grid makes a new soup and never overwrites the old one."""
    import hashlib

    prints = "|".join(str(_fingerprint(c.workdir(root))) for c in trials)
    return Path(root) / "cells" / gid / f"soup-{hashlib.sha256(prints.encode()).hexdigest()[:8]}"


def make_soups(cells: Sequence[Any], root: Path, strategies: Sequence[str]) -> list[Path]:
    """A greedy soup of every finished, selected sweep of `strategies` (once; resumable)."""
    from jtl.run import soup

    out = []
    for gid, trials in groups(cells).items():
        sel = _read(Path(root) / "cells" / gid / SELECTED)
        if trials[0].strategy not in strategies or not _selected_from(sel, gid, trials, root):
            continue  # not selected yet, or selected among runs since replaced or re-run
        runs = [c.workdir(root) for c in trials]
        ok = [r for r in runs if not (run_summary.read(r) or {}).get("diverged")]
        where = soup_dir(root, gid, trials)
        if len(ok) >= 2 and not (where / "summary.json").exists():
            logging.info("sweep %s: greedy soup of %d trials", gid, len(ok))
            soup.make_soup(ok, where, "greedy", eval_test=True, log=logging.info)
        out.append(where)
    return out


def _selected_from(sel: dict[str, Any] | None, gid: str, trials: Sequence[Any], root: Path) -> bool:
    """`selected.json` chose among exactly these trials' current runs (same workdirs, the runs
    it recorded): not a choice made before a trial was re-run at a doubled cap, or replaced."""
    if sel is None:
        return False
    recorded = [Path(root) / t.get("workdir", f"cells/{gid}/{t['trial']}") for t in sel["trials"]]
    current = [c.workdir(root) for c in trials]
    return [p.absolute() for p in recorded] == [p.absolute() for p in current] and all(
        _fingerprint(p) == t["fingerprint"] for p, t in zip(recorded, sel["trials"], strict=True)
    )


def grid_values(cell: Any) -> dict[str, float]:
    """{axis: value} of a trial cell, read back from its overrides."""
    keys = {v: k for k, v in AXES.items()}
    out = {}
    for o in cell.overrides:
        key, _, value = o.partition("=")
        if key in keys:
            out[keys[key]] = float(value)
    return out


def cell_result(
    cell: Any, root: Path, trials: Sequence[Any] | None = None
) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """(row id, summary, sweep fields) of a finished cell, or None.

    A trial counts only when it is its cell's chosen one: the row then carries the trial's
    summary with the test numbers evaluated after selection, the chosen values, the validation
    accuracy of every trial and the tuning cost of the whole grid.
    """
    summary = run_summary.read(cell.workdir(root))
    if summary is None:
        return None
    others = other_attempts(cell, root)
    retried = _attempts_cost(summary, others) if others else {}
    if cell.chosen:  # a later seed at its tuning seeds' choice: its own cost only
        chosen = {"chosen": grid_values(cell), "tuned_on": list(cell.tuned_by)}
        return cell.id, summary, {**chosen, **retried}
    if not cell.trial:
        return cell.id, summary, retried
    gid = group_id(cell)
    sel = _read(Path(root) / "cells" / gid / SELECTED)
    if sel is None or sel["chosen"] != cell.trial:
        return None
    if trials is not None and not _selected_from(sel, gid, trials, root):
        return None  # chosen among other runs (one since re-run at a doubled cap, or replaced)
    if any(  # a trial's run was replaced since the choice: it chose among other runs
        _fingerprint(Path(root) / t.get("workdir", f"cells/{gid}/{t['trial']}")) != t["fingerprint"]
        for t in sel["trials"]
    ):
        return None
    t = sel["test"]
    summary = {**summary, **{k: v for k, v in t.items() if k.startswith("test_")}}
    for key in ("shifts", "wise_ft", "wise_best_alpha"):  # evaluated after selection, like test
        if f"test_{key}" in summary:
            summary[key] = summary.pop(f"test_{key}")
    vals = [tr["val_accuracy"] for tr in sel["trials"] if tr["val_accuracy"] is not None]
    extra = {
        "chosen": sel["values"],
        "sweep_trials": len(sel["trials"]),
        "sweep_val_accuracy": {tr["trial"]: tr["val_accuracy"] for tr in sel["trials"]},
        "sweep_spread": max(vals) - min(vals),
        "tuning_wall_time_s": sel["tuning"]["wall_time_s"],
        "tuning_images_seen": sel["tuning"]["images_seen"],
        "tuning_train_flops": sel["tuning"]["train_flops"],
        "tuning_runs": sel["tuning"].get("runs", len(sel["trials"])),
    }
    return gid, summary, extra


def _attempts_cost(summary: dict[str, Any], earlier: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """An unswept cell re-run at a doubled cap: its cost with its other attempts', reported
    like a sweep's tuning cost (the report's cost table adds it to the arm's)."""
    return {f"tuning_{k}": v for k, v in _cost([summary, *earlier]).items()}


def _cost(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summed cost of runs: what a sweep's grid, or a cell's attempts, spent."""
    flops = [_train_flops(s) for s in summaries]
    return {
        "runs": len(summaries),
        "wall_time_s": sum(float(s.get("wall_time_s") or 0) for s in summaries),
        "images_seen": sum(int(s.get("images_seen") or 0) for s in summaries),
        "train_flops": sum(flops) if all(f is not None for f in flops) else None,
    }
