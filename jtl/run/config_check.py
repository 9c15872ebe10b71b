"""The whole run config checked before anything is built: one line per mistake, exit code 2.

Why: a value the trainer cannot use (batch_size=0, eval_every=0, total_steps=1.5, lr=-1, an
unknown model) otherwise surfaces minutes later, after data loading and compilation, as a
library error ("need at least one array to stack", ZeroDivisionError) that says nothing of the
key the user typed. Each rule names the key, the bad value and what is allowed. Names come from
the registries (models, optimizers, strategies, input scales, data-set transforms), so a new
entry there is accepted here without an edit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import ml_collections as mlc

from jtl.runtime.errors import ConfigError


def _int(lo: int) -> tuple[Callable[[Any], bool], str]:
    return (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo,
        f"an integer >= {lo}",
    )


def _float(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> tuple:
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    return ok, f"a number in {left}{lo:g}, {hi:g}{right}"


NON_NEGATIVE = _float(0.0, math.inf, hi_open=True)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": _int(0),
    "data_seed": _int(0),
    "batch_size": _int(1),
    "eval_batch_size": _int(1),
    "total_steps": _int(1),
    "eval_every": _int(0),  # 0: eval_every_fraction (checked below)
    "log_every": _int(1),
    "checkpoint_every": _int(0),  # 0: checkpoint_every_fraction
    "eval_every_fraction": _float(0.0, 1.0),
    "checkpoint_every_fraction": _float(0.0, 1.0),
    "warmup_fraction": _float(0.0, 1.0),
    "keep_checkpoints": _int(1),
    "train_per_class": _int(0),
    "num_folds": _int(0),
    "fold": _int(0),
    "image_size": _int(1),
    "seq_len": _int(0),
    "val_fraction": _float(0.0, 1.0, hi_open=True),
    "train_fraction": _float(0.0, 1.0, lo_open=True),
    "early_stopping_patience": _int(0),
    "min_delta": NON_NEGATIVE,
    "max_epochs": NON_NEGATIVE,
    "eval_every_epochs": NON_NEGATIVE,
    "min_steps": _int(0),
    "min_eval_every": _int(0),
    "stop_min_steps": _int(0),
    "stop_min_fraction": _float(0.0, 1.0),
    "optim.lr": NON_NEGATIVE,  # 0: no update (e.g. a random-init control source)
    "optim.weight_decay": NON_NEGATIVE,
    "optim.warmup_steps": _int(0),
    "optim.clip_norm": NON_NEGATIVE,
    "channels": ((lambda v: v in (1, 3)), "1 or 3"),
    "nonfinite": ((lambda v: v in ("stop", "skip")), "stop or skip"),
    "nonfinite_max_skipped": _float(0.0, 1.0),
}


def _get(config: mlc.ConfigDict, key: str) -> tuple[bool, Any]:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, mlc.ConfigDict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _names(config: mlc.ConfigDict) -> list[str]:
    """Problems with names: model, optimizer, strategy, input scale, data-set transforms."""
    from jtl.data import transforms
    from jtl.data.augment import INPUT_SCALES
    from jtl.models import list_models
    from jtl.optim.optimizers import OPTIMIZERS
    from jtl.transfer.strategies import REGISTRY

    problems = []
    checks = (
        ("model (model.name)", config.model.name, list_models()),
        ("optimizer (optim.name)", config.optim.name, OPTIMIZERS),
        ("strategy", config.strategy, list(REGISTRY)),
        ("input_scale", config.get("input_scale", "auto"), ["auto", *INPUT_SCALES]),
    )
    for what, value, allowed in checks:
        if value not in allowed:
            problems.append(f"unknown {what} {value!r}; valid: {', '.join(map(str, allowed))}")
    shifts = config.get("eval_shifts", ())
    if not isinstance(shifts, tuple | list):
        return [*problems, f"eval_shifts={shifts!r}: give a tuple of data set names"]
    for key, names in (("dataset", [config.dataset]), ("eval_shifts", shifts)):
        for name in names:
            if not isinstance(name, str) or not name.strip():
                problems.append(f"{key}={name!r}: give a data set name (jtl data list)")
                continue
            try:
                transforms.split_name(name)
            except ConfigError as e:
                problems.append(f"{key}: {e}")
    return problems


def problems(config: mlc.ConfigDict) -> list[str]:
    """Every problem of `config`, one line each (empty: the config can run)."""
    out = []
    for key, (ok, allowed) in RULES.items():
        present, value = _get(config, key)
        if present and not ok(value):
            out.append(f"{key}={value!r}: must be {allowed}")
    for key in ("model", "optim", "init", "strategy_args"):
        if key in config and not isinstance(config[key], mlc.ConfigDict):
            out.append(f"{key}={config[key]!r}: must be a group of fields (--config.{key}.X=V)")
    for key in ("model.name", "optim.name", "strategy", "dataset"):
        present, value = _get(config, key)
        if present and not isinstance(value, str):
            out.append(f"{key}={value!r}: must be a name (a string)")
    if out:
        return out
    for key in ("eval_every", "checkpoint_every"):
        if config.get(key) == 0 and not config.get(f"{key}_fraction"):
            out.append(f"{key}=0: must be >= 1 step, or 0 with {key}_fraction in (0, 1]")
    present, folds = _get(config, "num_folds")
    if present and folds == 1:
        out.append("num_folds=1: use 0 (off) or at least 2 folds")
    fold = config.get("fold")
    if present and folds >= 2 and isinstance(fold, int) and not 0 <= fold < folds:
        out.append(f"fold={fold!r}: must be in [0, num_folds={folds})")
    if not out:  # names last: a type error above can make them meaningless
        out += _names(config)
    return out


def check(config: mlc.ConfigDict) -> None:
    """Raises one `ConfigError` listing every problem (its text is one line)."""
    found = problems(config)
    if found:
        raise ConfigError(
            "invalid config: " + "; ".join(found),
            "fix the value with --config.KEY=VALUE (jtl train --help)",
        )
