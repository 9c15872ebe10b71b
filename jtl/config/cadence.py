"""Cadences as fractions of the step budget, resolved to steps before a run is recorded.

Why: a study sets a cell's budget as an override (`total_steps=N`) of a base config. An
evaluation, checkpoint or warm-up cadence written in steps would be the base config's own
budget's, so a base config states them as fractions of `total_steps` instead:
- `eval_every_fraction`: used when `eval_every` is 0 (0.25: validate four times a run);
- `checkpoint_every_fraction`: used when `checkpoint_every` is 0 (1.0: at the end);
- `warmup_fraction` > 0: the warm-up is that fraction of the run, at most
  `optim.warmup_steps` when that is > 0.

A fraction is resolved once, against the run's `total_steps` (an epoch cap, `max_epochs`,
changes the budget later and caps the warm-up at its own length). The resolved config holds
steps and fractions of 0, so what a workdir records, and what a resume or a study compares, is
the same for a config written either way.
"""

from __future__ import annotations

import math

import ml_collections as mlc

from jtl.runtime.errors import ConfigError

FRACTIONS = ("eval_every_fraction", "checkpoint_every_fraction", "warmup_fraction")


def _part(total: int, fraction: float) -> int:
    """floor(total x fraction), exact for fractions such as 0.1 (0.1 x 30 is 3.0000000000000004)."""
    return math.floor(total * fraction + 1e-9)


def _fraction(config: mlc.ConfigDict, key: str) -> float:
    value = config.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{key}={value!r}: must be a number in [0, 1] (of total_steps)")
    return float(value)


def resolve_cadences(config: mlc.ConfigDict) -> mlc.ConfigDict:
    """`config` with its cadence fractions turned into steps (itself when it sets none)."""
    fractions = {k: _fraction(config, k) for k in FRACTIONS}
    if not any(fractions.values()):
        return config
    total = config.total_steps
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ConfigError(f"total_steps={total!r}: must be an integer >= 1")
    out = config.copy_and_resolve_references()
    for key in ("eval_every", "checkpoint_every"):
        if out[key] == 0 and fractions[f"{key}_fraction"] > 0:
            out[key] = max(1, _part(total, fractions[f"{key}_fraction"]))
    if fractions["warmup_fraction"] > 0:
        warmup = _part(total, fractions["warmup_fraction"])
        cap = int(out.optim.warmup_steps)
        out.optim.warmup_steps = min(warmup, cap) if cap > 0 else warmup
    for key in FRACTIONS:
        out[key] = 0.0
    return out
