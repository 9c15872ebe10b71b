"""Learning-rate schedules by name, each with an optional linear warmup in front.

Every schedule is a plain function of the optimizer step so it traces under `jit`. Warmup
ramps linearly to `base_lr`, reaching it at step `warmup_steps - 1` (the first step already
moves: `base_lr / warmup_steps`). `cosine` and `linear` decay over the steps *after* warmup;
`step` decays at fractions of `total_steps` (absolute positions, as in He et al.'s /10 at 50%
and 75% of training), so adding warmup does not move its boundaries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import optax

from jtl.runtime.errors import ConfigError

# name -> keyword arguments the schedule accepts (besides base_lr/total_steps/warmup_steps).
SCHEDULES: dict[str, dict[str, Any]] = {
    "constant": {},
    "cosine": {"end_factor": 0.0},
    "linear": {"end_factor": 0.0},
    "step": {"boundaries": (0.5, 0.75), "factor": 0.1},
}


def _progress(step: Any, start: int, total: int) -> Any:
    """Fraction in [0, 1] of the decay phase [start, total) done at `step`."""
    span = max(total - start, 1)
    return jnp.clip((jnp.asarray(step, jnp.float32) - start) / span, 0.0, 1.0)


def _decay_fn(
    name: str, total_steps: int, warmup_steps: int, kw: dict[str, Any]
) -> Callable[[Any], Any]:
    """The schedule's factor in [0, 1] (times base_lr), warmup not included."""
    if name == "constant":
        return lambda step: jnp.ones((), jnp.float32)
    if name == "cosine":
        end = float(kw["end_factor"])

        def cosine(step: Any) -> Any:
            p = _progress(step, warmup_steps, total_steps)
            return end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(math.pi * p))

        return cosine
    if name == "linear":
        end = float(kw["end_factor"])
        return lambda step: 1.0 - (1.0 - end) * _progress(step, warmup_steps, total_steps)
    if name == "step":
        fracs = kw["boundaries"]
        if isinstance(fracs, int | float) or not all(0.0 < float(f) < 1.0 for f in fracs):
            raise ConfigError(
                f"step schedule: boundaries must be fractions of training in (0, 1), got {fracs!r}"
            )
        bounds = [round(float(f) * total_steps) for f in fracs]
        factor = float(kw["factor"])

        def step_fn(step: Any) -> Any:
            n = sum(jnp.asarray(step >= b, jnp.float32) for b in bounds)
            return jnp.asarray(factor, jnp.float32) ** n

        return step_fn
    raise AssertionError(name)


def make_schedule(
    name: str, base_lr: float, total_steps: int, warmup_steps: int = 0, **kw: Any
) -> optax.Schedule:
    """`step -> learning rate` for schedule `name` (see `SCHEDULES` for names and their kwargs).

    Unknown names or keyword arguments raise ValueError listing the valid ones, so a typo in a
    config fails at start-up instead of silently training with the default.
    """
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    extra = set(kw) - set(SCHEDULES[name])
    if extra:
        valid = ", ".join(SCHEDULES[name]) or "none"
        raise ConfigError(
            f"schedule {name!r} got unknown arguments {sorted(extra)}; it accepts: {valid}"
        )
    total_steps, warmup_steps = int(total_steps), int(warmup_steps)
    if total_steps <= 0:
        raise ConfigError(f"total_steps must be > 0, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ConfigError(
            f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
        )
    decay = _decay_fn(name, total_steps, warmup_steps, {**SCHEDULES[name], **kw})
    base_lr = float(base_lr)

    def schedule(step: Any) -> Any:
        lr = base_lr * decay(step)
        if warmup_steps:
            ramp = jnp.minimum(1.0, (jnp.asarray(step, jnp.float32) + 1.0) / warmup_steps)
            lr = lr * ramp
        return lr

    return schedule


def describe(name: str, warmup_steps: int = 0, **kw: Any) -> str:
    """Short human-readable name of a schedule, e.g. `cosine(end_factor=0.01)+warmup500`."""
    args = ",".join(f"{k}={_fmt(v)}" for k, v in sorted(kw.items()))
    text = f"{name}({args})" if args else name
    return f"{text}+warmup{warmup_steps}" if warmup_steps else text


def _fmt(v: Any) -> str:
    if isinstance(v, Sequence) and not isinstance(v, str):
        return "(" + ",".join(_fmt(x) for x in v) + ")"
    return f"{v:g}" if isinstance(v, float) else str(v)
