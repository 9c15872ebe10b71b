"""A study's training budget: equal optimizer steps per arm, or every arm trained to convergence.

`budget = "equal_steps"`: every arm gets `steps` (or `steps_by_size`) optimizer steps, scratch
`scratch_schedule_mult` times more; verdicts from such a study are labelled "equal-step budget,
not converged" in the report, whatever the curves look like.

`budget = "converged"`: every cell validates every `convergence.eval_every_epochs` epochs (per
size: `eval_every_epochs_by_size`; or every `eval_every_steps` steps) and stops once `patience`
evaluations brought no improvement of more than `min_delta`, reporting its best evaluated
weights. `max_epochs` (per size: `max_epochs_by_size`) caps it, in epochs of the cell's
training subset; scratch gets `scratch_schedule_mult` times the cap (He et al.'s longer
schedule). With `max_epochs = 0` the cap is the step budget. A cell that hits its cap while
still improving records `converged: false` and the report says "inconclusive" instead of a
verdict, unless `cap_doublings` allows a re-run: such a cell is then trained again from its
initial weights with the cap (and its step floor) doubled, up to `cap_doublings` times, and the
last attempt is the cell's result (`current_attempt`). Why re-run instead of continuing: the
cap is also the length of the cosine LR schedule, so a continued run would not be the run a
longer cap gives. The earlier attempts' cost counts as the cell's tuning cost.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import ml_collections as mlc

from jtl.evaluation import run_summary
from jtl.study.finished import is_finished
from jtl.transfer import strategies

BUDGETS = ("equal_steps", "converged")


def convergence_defaults() -> mlc.ConfigDict:
    """The `study.convergence` block (read only when `study.budget == "converged"`)."""
    return mlc.ConfigDict(
        {
            "patience": 5,  # evaluations without improvement before stopping
            "min_delta": 0.0,  # an improvement must exceed this (validation accuracy, fraction)
            "max_epochs": 30.0,  # the cap, in epochs of the training subset; 0 = the step budget
            "max_epochs_by_size": mlc.ConfigDict(),  # size label -> cap (tiny sizes need more)
            "eval_every_epochs": 1.0,  # validation frequency in epochs ...
            "eval_every_epochs_by_size": mlc.ConfigDict(),  # size label -> epochs (tiny sizes)
            "eval_every_steps": 0,  # ... or in steps (> 0 wins)
            # Floors in steps (0 = none): a tiny "full" set (e.g. 134 images) has 1-3 steps per
            # epoch, so epoch caps and epoch-based patience alone stop it after a few steps.
            "min_steps": 0,
            "min_eval_every_steps": 0,
            # Patience cannot stop a cell before this step (0 = any; scratch x its schedule
            # multiplier): early, high-LR validation noise is not a plateau.
            "stop_min_steps": 0,
            # ... nor before this fraction of the cell's cap (0 = off): the cosine LR must have
            # decayed, else a high-LR cell stops on validation noise (jtl/config/schema.py).
            "stop_min_fraction": 0.0,
            "checkpoint_every": 500,  # steps; a killed cell resumes from here
            # A cell that hits its cap still improving is re-run with the cap doubled, up to
            # this many times (0 = never: it stays "not converged"); see current_attempt.
            "cap_doublings": 0,
        }
    )


# mnist_source's converged protocol for small grey images (its study docstring says why): caps
# in epochs per size (10/class is ~67 images, one step per epoch), the validation interval per
# size, the learning-rate grid, and floors in steps. The benchmark and the layer-transfer
# study use it too, so their verdicts rest on the same protocol.
SMALL_IMAGE_PROTOCOL: dict = {
    "max_epochs": 30.0,
    "max_epochs_by_size": {"10": 150.0, "100": 30.0, "1000": 16.0},
    "eval_every_epochs_by_size": {"10": 10.0, "100": 2.0},
    "lr_grid": (0.01, 0.03, 0.1),
    "min_steps": 200,
    "min_eval_every_steps": 10,
    # At a 30-epoch cap 101 of the benchmark's 243 finetune_full trials at 100/class ended
    # still improving; of its 192 capped runs, re-run at twice the cap, 186 then converged.
    "cap_doublings": 1,
}


def converged(
    study: mlc.ConfigDict,
    *,
    max_epochs: float,
    max_epochs_by_size: dict[str, float],
    eval_every_epochs_by_size: dict[str, float],
    lr_grid: tuple[float, ...],
    min_steps: int = 0,
    min_eval_every_steps: int = 0,
    stop_min_steps: int = 0,
    stop_min_fraction: float = 0.0,
    cap_doublings: int = 0,
) -> None:
    """Puts a study on the reference converged, tuned protocol (the study configs' one recipe).

    Patience 4 validations with a 0.2-point min_delta, scratch x2 (He et al.), validation every
    epoch unless `eval_every_epochs_by_size` says otherwise, every SGD arm tuned over `lr_grid`
    on the first seed (later seeds train once at its choice). The caps and floors are the
    study's own: they depend on how many steps an epoch of its sizes is.
    """
    study.budget = "converged"
    study.scratch_schedule_mult = 2.0
    c = study.convergence
    c.patience, c.min_delta = 4, 0.002
    c.max_epochs = max_epochs
    c.max_epochs_by_size = mlc.ConfigDict(max_epochs_by_size)
    c.eval_every_epochs = 1.0
    c.eval_every_epochs_by_size = mlc.ConfigDict(eval_every_epochs_by_size)
    c.min_steps, c.min_eval_every_steps = min_steps, min_eval_every_steps
    c.stop_min_steps = stop_min_steps
    c.stop_min_fraction = stop_min_fraction
    c.checkpoint_every = 500
    c.cap_doublings = cap_doublings
    study.sweep.lr = lr_grid
    study.sweep_tune_seeds = 1 if len(study.seeds) > 1 else 0


def validate_budget(study: mlc.ConfigDict) -> str | None:
    """An error message for a budget the runner cannot apply, else None."""
    if study.budget not in BUDGETS:
        return f"budget={study.budget!r}: use one of {BUDGETS}"
    if study.budget != "converged":
        return None
    c = study.convergence
    if int(c.patience) < 1:
        return "convergence.patience must be >= 1 (evaluations without improvement)"
    if float(c.max_epochs) < 0 or any(float(v) <= 0 for v in c.max_epochs_by_size.values()):
        return "convergence.max_epochs (and max_epochs_by_size) must be > 0 epochs (0: step cap)"
    if float(c.eval_every_epochs) <= 0 and int(c.eval_every_steps) <= 0:
        return "convergence: set eval_every_epochs > 0 or eval_every_steps > 0"
    if study.early_stopping_patience:
        return "early_stopping_patience is for equal-step budgets; converged uses convergence.*"
    doublings = c.get("cap_doublings", 0)
    if not isinstance(doublings, int) or doublings < 0:
        return f"convergence.cap_doublings={doublings!r}: use 0 (never re-run) or more"
    return None


def budget_overrides(study: mlc.ConfigDict, strategy: str, size: str) -> list[str]:
    """Config overrides that put one cell on the study's budget (empty for equal steps)."""
    if study.budget != "converged":
        if study.early_stopping_patience:
            return [f"early_stopping_patience={study.early_stopping_patience}"]
        return []
    c = study.convergence
    # He et al.'s longer schedule: scratch's cap and step floors are scaled alike.
    mult = float(study.scratch_schedule_mult) if strategies.is_baseline(strategy) else 1.0
    cap = float(c.max_epochs_by_size.get(str(size), c.max_epochs)) * mult
    out = [
        f"early_stopping_patience={int(c.patience)}",
        f"min_delta={float(c.min_delta)}",
        f"checkpoint_every={int(c.checkpoint_every)}",
    ]
    if cap > 0:
        out.append(f"max_epochs={cap}")
        if int(c.min_steps) > 0:
            out.append(f"min_steps={int(int(c.min_steps) * mult)}")
    if int(c.stop_min_steps) > 0:
        out.append(f"stop_min_steps={int(int(c.stop_min_steps) * mult)}")
    if float(c.get("stop_min_fraction", 0.0)) > 0:  # of the cell's own cap: scratch's is x mult
        out.append(f"stop_min_fraction={float(c.stop_min_fraction)}")
    if int(c.min_eval_every_steps) > 0:
        out.append(f"min_eval_every={int(c.min_eval_every_steps)}")
    if int(c.eval_every_steps) > 0:
        out.append(f"eval_every={int(c.eval_every_steps)}")
    else:
        every = float(c.eval_every_epochs_by_size.get(str(size), c.eval_every_epochs))
        out.append(f"eval_every_epochs={every}")
    return out


# ----------------------------------------------------------------------------- cap doublings


def hit_cap(summary: dict[str, Any] | None) -> bool:
    """A finished run of a converged budget that stopped at its cap, not on patience."""
    return bool(
        summary
        and summary.get("budget") == "converged"
        and not summary.get("converged")
        and not summary.get("diverged")
    )


def doubled(cell: Any) -> Any:
    """The cell's next attempt: its cap in epochs (or steps) and its step floor doubled."""
    config = cell.config()
    if float(config.max_epochs) > 0:
        sets = [f"max_epochs={2 * float(config.max_epochs)}"]
        if int(config.min_steps) > 0:
            sets.append(f"min_steps={2 * int(config.min_steps)}")
    else:
        sets = [f"total_steps={2 * int(config.total_steps)}"]
    return dataclasses.replace(
        cell,
        attempt=cell.attempt + 1,
        attempt_overrides=cell.attempt_overrides + len(sets),
        overrides=(*cell.overrides, *sets),
    )


def current_attempt(cell: Any, root: Path) -> Any:
    """The attempt of `cell` that is (or will be) its result: the first one that did not hit its
    cap, else its last allowed one (`cell.cap_doublings`). Runs nothing: a finished attempt at
    its cap yields the next one, which the study runs like any unfinished cell. A longer
    attempt that diverged does not replace a capped one: that stays the result (not converged,
    so no verdict, but numbers). The same answer whichever attempt of the cell is given."""
    cell = first_attempt(cell)
    while cell.attempt < cell.cap_doublings:
        workdir = cell.workdir(root)
        if not (is_finished(workdir, cell.config()) and hit_cap(run_summary.read(workdir))):
            break
        longer = doubled(cell)
        summary = run_summary.read(longer.workdir(root))
        if (
            summary
            and summary.get("diverged")
            and is_finished(longer.workdir(root), longer.config())
        ):
            break
        cell = longer
    return cell


def first_attempt(cell: Any) -> Any:
    """Attempt 0 of `cell`: without the overrides its doublings appended."""
    if not cell.attempt:
        return cell
    base = cell.overrides[: len(cell.overrides) - cell.attempt_overrides]
    return dataclasses.replace(cell, attempt=0, attempt_overrides=0, overrides=base)


def other_attempts(cell: Any, root: Path) -> list[dict[str, Any]]:
    """Summaries of the other attempts of `cell` that ran: the earlier ones, and a longer one
    that diverged and so did not replace it. Their cost is part of the cell's tuning."""
    step, out = first_attempt(cell), []
    while True:
        if step.attempt != cell.attempt and (summary := run_summary.read(step.workdir(root))):
            out.append(summary)
        if step.attempt >= cell.cap_doublings:
            return out
        step = doubled(step)
