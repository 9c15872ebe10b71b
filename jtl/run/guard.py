"""Non-finite guard and off-terminal progress for the trainer.

A non-finite loss or gradient norm means the run has diverged. Policies (`config.nonfinite`):

- `"stop"` (default): the run stops at the first bad step, no checkpoint is written after it
  (the last finite one stays the latest), `summary.json` says `diverged: true` with the step,
  and `train` raises `DivergedError` (the CLI exits non-zero).
- `"skip"`: inside the jitted step, a bad step leaves params, batch statistics and optimizer
  state unchanged (`jnp.where` on the new state, no host sync) and is counted; the run goes
  on and `summary.json` reports `skipped_steps`.

The check reads only the loss and the gradient norm of the *trainable* partition (the metric
the step computes anyway), so frozen gradients stay dead and XLA still drops their backward.
The host looks at the per-step flags only where the trainer already syncs: every `log_every`
steps, before an evaluation and before a checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtl.runtime.errors import ConfigError

POLICIES = ("stop", "skip")


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ConfigError(f"nonfinite={policy!r} is not a policy; valid: {', '.join(POLICIES)}")
    return policy


def finite_flag(loss: jax.Array, grad_norm: jax.Array) -> jax.Array:
    """True where the step is usable: both the loss and the trainable gradient norm finite."""
    return jnp.isfinite(loss) & jnp.isfinite(grad_norm)


def keep_if_finite(finite: jax.Array, new: Any, old: Any) -> Any:
    """`new` where the step was finite, else `old`, leaf by leaf (a select; no host sync)."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def bad_steps(flags: Sequence[Any], first_step: int) -> list[int]:
    """Step numbers (as logged: `first_step` is the step of `flags[0]`) whose flag is False."""
    if not flags:
        return []
    host = np.asarray(jax.device_get(list(flags)), bool).reshape(-1)
    return [int(first_step + i) for i in np.flatnonzero(~host)]


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def all_finite(state: dict[str, Any]) -> bool:
    """Whether every float in the params and batch statistics is finite (checked before a
    checkpoint is written: one reduction, at the checkpoint's own sync)."""
    return bool(_all_finite({"params": state["params"], "batch_stats": state.get("batch_stats")}))


MIN_STEPS_FOR_SKIP_LIMIT = 10


def too_many_skipped(skipped: int, steps: int, max_fraction: float) -> bool:
    """nonfinite="skip" gives up (diverged) once more than `max_fraction` of the steps were
    skipped, counted from step 10 on (one bad step among the first few is no verdict)."""
    return steps >= MIN_STEPS_FOR_SKIP_LIMIT and skipped > max_fraction * steps


def what_was_nonfinite(metrics: dict[str, Any]) -> str:
    host = {k: float(np.asarray(jax.device_get(v))) for k, v in metrics.items()}
    parts = [
        k for k in ("loss", "grad_norm", "weights") if k in host and not math.isfinite(host[k])
    ]
    return " and ".join(parts) or "loss"


def diverged_summary(
    base: dict[str, Any], step: int, what: str, last_checkpoint: int | None, policy: str
) -> dict[str, Any]:
    """summary.json of a diverged run: no accuracy to average in, only where it went wrong."""
    return {
        **base,
        "diverged": True,
        "diverged_step": int(step),
        "nonfinite": what,
        "nonfinite_policy": policy,
        "last_finite_checkpoint": last_checkpoint,
        "test_accuracy": None,
        "test_loss": None,
        "val_accuracy": None,
        "val_loss": None,
        "steps_run": int(step),
    }


class ProgressLine:
    """Without a TTY (nohup, log files, cluster jobs): one line per `log_every` steps."""

    def __init__(self, total: int, start: int) -> None:
        self.total, self.start_step = total, start
        self.t0 = time.time()
        self.last_t, self.last_step = self.t0, start

    def line(self, step: int, loss: float, accuracy: float) -> str:
        now = time.time()
        rate = (step - self.last_step) / max(now - self.last_t, 1e-9)
        overall = (step - self.start_step) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / overall if overall > 0 else float("inf")
        self.last_t, self.last_step = now, step
        return (
            f"step {step}/{self.total}: loss {loss:.4f}, accuracy {accuracy:.4f}, "
            f"{rate:.2f} steps/s, ETA {format_eta(eta)}"
        )


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
