"""summary.json, the contract between a run and everything that reads it.

Why a schema: the trainer, the linear probe, strategies with a final evaluation (WiSE-FT),
the guard (a diverged run), study collection, sweeps and the report all touch the same file.
`RunSummary` names every field and its type; `write` refuses a summary with a missing
required field, a wrong type or an undeclared field, so a new field is declared here first
and every reader can rely on what it finds. `read` is the one way back in.

`test_accuracy` is the strategy's answer: for WiSE-FT the ensemble picked on validation (the
trained weights' own numbers are then `trained_test_accuracy` / `trained_val_accuracy`); for a
sweep trial run with `eval_test=False` it is None until the study evaluates the chosen trial.
"""

from __future__ import annotations

import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypedDict

from jtl.runtime.errors import UserError

Number = int | float


class RunSummary(TypedDict, total=False):
    # identity of the run
    dataset: str
    data_transforms: list[str]  # the data-set name's transforms (jtl.data.transforms), in order
    model: str
    strategy: str
    seed: int
    train_examples: int
    train_examples_per_class: dict[str, int]
    num_classes: int
    devices: int
    processes: int
    skipped_images: int  # unreadable images skipped (`skip_bad_images`)
    input_scale: str  # uint8 -> input scale fed (jtl.data.augment.INPUT_SCALES)
    code_version: str  # the code that ran it (jtl.runtime.code_version)
    init: str  # what the pretrained load took and left (jtl.weights.checkpoint.LoadReport)
    # results (None: not evaluated, or the run diverged)
    test_accuracy: float | None
    test_loss: float | None
    val_accuracy: float | None
    val_loss: float | None
    # calibration (jtl.evaluation.calibration): NLL, Brier, ECE (15 equal-width bins), raw and
    # at the temperature fitted on validation (`_ts`); reliability bins per split
    temperature: float
    val_nll: float
    val_brier: float
    val_ece: float
    val_nll_ts: float
    val_brier_ts: float
    val_ece_ts: float
    val_reliability: dict[str, list]
    test_nll: float
    test_brier: float
    test_ece: float
    test_nll_ts: float
    test_brier_ts: float
    test_ece_ts: float
    test_reliability: dict[str, list]
    # eval_shifts: data set -> accuracy, loss, examples, nll / brier / ece (raw and `_ts`)
    shifts: dict[str, dict[str, Any]]
    # `jtl soup`: kind, member runs, their validation accuracy, greedy tries, barriers
    soup: dict[str, Any]
    trained_test_accuracy: float | None
    trained_val_accuracy: float | None
    # budget and convergence (jtl.run.early_stopping)
    steps: int  # the configured budget (`total_steps`, the cap under a converged budget)
    steps_run: int
    images_seen: int
    budget: str  # "steps", "converged" or "closed_form" (a probe solved to its optimum)
    converged: bool
    best_step: int | None
    epochs_run: float
    max_steps: int
    max_epochs: float | None
    min_delta: float
    patience: int
    early_stopping: dict[str, Any]
    # cost (jtl.evaluation.costs)
    trainable_params: int
    frozen_params: int
    flops_per_step: float | None
    opt_state_bytes: int | None
    checkpoint_bytes: int | None
    peak_host_memory_bytes: int | None
    train_time_s: Number
    wall_time_s: Number
    # faults (jtl.run.guard)
    resumed_from_step: int
    diverged: bool
    diverged_step: int
    nonfinite: str
    nonfinite_policy: str
    last_finite_checkpoint: int | None
    skipped_steps: int
    # linear probe (and LP-FT's probe, prefixed `lp_`)
    probe: str
    probe_hyper: float | None
    probe_val_accuracy: dict[str, float]
    probe_test_accuracy: dict[str, float]
    feature_time_s: float
    probe_fit_time_s: float
    feature_dim: int
    lp_probe: str
    lp_probe_hyper: float | None
    lp_probe_val_accuracy: dict[str, float]
    lp_feature_time_s: float
    lp_probe_fit_time_s: float
    lp_feature_dim: int
    lp_val_accuracy: float
    lp_batch_stats: str  # "target": the probe saw AdaBN statistics
    # strategy details
    unfreeze_every: int
    wise_ft: list[dict[str, float]]
    wise_best_alpha: float
    lora_rank: int
    lora_alpha: float
    lora_kernels: int
    adapter_blocks: list[str]
    adapter_reduction: int
    norm_layers: int


# Every run has these; a diverged one has them too (with None results).
REQUIRED = (
    "dataset",
    "model",
    "strategy",
    "seed",
    "train_examples",
    "num_classes",
    "test_accuracy",
    "val_accuracy",
    "steps_run",
    "diverged",
    "wall_time_s",
)
FIELDS: dict[str, Any] = typing.get_type_hints(RunSummary)


class SummaryError(UserError):
    """A summary.json that does not follow `RunSummary` (a jtl bug, or a foreign file)."""


def _matches(value: Any, kind: Any) -> bool:
    if kind is Any:
        return True
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if origin is not None:
        return isinstance(value, origin)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check(summary: dict[str, Any]) -> RunSummary:
    """`summary` if it follows the schema; else a `SummaryError` naming every problem."""
    problems = [f"missing {k}" for k in REQUIRED if k not in summary]
    for key, value in summary.items():
        if key not in FIELDS:
            problems.append(
                f"undeclared field {key} (declare it in jtl.evaluation.run_summary.RunSummary)"
            )
        elif not _matches(value, FIELDS[key]):
            problems.append(f"{key}={value!r} is not {FIELDS[key]}")
    if problems:
        raise SummaryError(f"summary.json does not follow its schema: {'; '.join(problems)}")
    return typing.cast(RunSummary, summary)


def dumps(summary: dict[str, Any]) -> str:
    """The checked summary as summary.json's text: strict JSON (numpy scalars become Python
    numbers; NaN and infinities, e.g. the loss of a run that skipped non-finite steps, become
    null), so every JSON reader takes it."""
    plain = _finite_or_null(json.loads(json.dumps(summary, default=_plain)))
    return json.dumps(check(plain), indent=2, allow_nan=False) + "\n"


def _finite_or_null(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_null(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite_or_null(v) for v in x]
    return x


def _plain(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"summary value {x!r} ({type(x).__name__}) is not JSON")


# Fields later versions added, with the value they had before (older workdirs still read).
_ADDED = {"diverged": lambda s: False, "steps_run": lambda s: s.get("steps", 0)}


def read(path: str | Path) -> RunSummary | None:
    """A run's summary (checked), or None when the run has not finished."""
    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    for key, value in _ADDED.items():
        if key not in summary:
            summary[key] = value(summary)
    return check(summary)
