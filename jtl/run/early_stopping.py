"""Converged budgets: stop on stalled validation accuracy, cap the run, keep the best weights.

A run trained "to convergence" evaluates on validation every `eval_every` steps (or every
`eval_every_epochs` epochs of its training subset) and stops once `early_stopping_patience`
evaluations in a row brought no improvement of more than `min_delta`, but not before
`stop_min_steps` nor before `stop_min_fraction` of the cap (the LR schedule must have decayed:
high-LR validation noise is not a plateau); `max_epochs` (epochs of the training subset) caps
it. It reports the best evaluated weights. A run that hits the cap while still improving is
recorded as `converged: false`: its numbers are a lower bound, and the study report states no
verdict from them.

Resume stays exact: the stop state (best step and accuracy, evaluations without improvement)
lives in checkpoint metadata and the best weights in `best_weights/STEP.npz`, written with every
checkpoint, so a killed run resumed from its latest checkpoint ends identical to an
uninterrupted one.
"""

from __future__ import annotations

import io
import math
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from absl import logging
from etils import epath
from flax import traverse_util

BEST_DIR = "best_weights"


def steps_per_epoch(train_examples: int, batch_size: int) -> float:
    return max(int(train_examples), 1) / int(batch_size)


def resolve_budget(config: mlc.ConfigDict, train_examples: int) -> mlc.ConfigDict:
    """`config` with epoch-based fields turned into steps for this training subset.

    `max_epochs > 0` sets `total_steps` (the cap, and the length of the LR schedule) to
    ceil(max_epochs x steps per epoch), at least `min_steps`; `eval_every_epochs > 0` sets
    `eval_every`, at least `min_eval_every` steps; `stop_min_fraction > 0` raises
    `stop_min_steps` to that fraction of the cap (and is then 0, so a resolved config records
    steps only). Returns `config` itself when none is set, so equal-step runs are untouched.
    """
    fraction = float(config.get("stop_min_fraction", 0.0))
    if not (config.max_epochs > 0 or config.eval_every_epochs > 0 or fraction > 0):
        return config
    spe = steps_per_epoch(train_examples, config.batch_size)
    out = mlc.ConfigDict(config.to_dict())
    if config.max_epochs > 0:
        out.total_steps = max(
            1, int(config.get("min_steps", 0)), math.ceil(config.max_epochs * spe)
        )
        # A tiny subset's cap can be shorter than the configured warmup: warm up over the cap.
        out.optim.warmup_steps = min(int(config.optim.warmup_steps), out.total_steps)
    if config.eval_every_epochs > 0:
        out.eval_every = max(1, int(config.get("min_eval_every", 0)))
        out.eval_every = max(out.eval_every, round(config.eval_every_epochs * spe))
    if fraction > 0:
        floor = math.ceil(fraction * out.total_steps - 1e-9)
        out.stop_min_steps = max(int(config.get("stop_min_steps", 0)), floor)
        out.stop_min_fraction = 0.0
    logging.info(
        "Budget: %d steps (%.3g epochs of %d examples), validation every %d steps",
        out.total_steps,
        out.total_steps / spe,
        train_examples,
        out.eval_every,
    )
    return out


class EarlyStopping:
    """Tracks the best validation accuracy; `update` says when `patience` evals brought none."""

    def __init__(
        self,
        patience: int,
        resumed_meta: dict[str, Any] | None = None,
        min_delta: float = 0.0,
        workdir: epath.Path | None = None,
        min_step: int = 0,
        ties_on_loss: bool = False,
    ) -> None:
        self.patience = int(patience)
        self.min_step = int(min_step)  # no stop before this step (evaluations still count)
        self.min_delta = float(min_delta)
        self.ties_on_loss = bool(ties_on_loss)
        self.workdir = workdir
        meta = (resumed_meta or {}).get("early_stopping", {})
        self.stopped_step: int | None = meta.get("stopped_step")
        self.best_step: int | None = meta.get("best_step")
        best = meta.get("best_accuracy")
        self.best_accuracy: float = float("-inf") if best is None else float(best)
        self.best_loss: float | None = meta.get("best_loss")
        self._bad = int(meta.get("bad_evals", 0))
        self._best: dict[str, Any] | None = None
        self._saved_step: int | None = None
        if self.enabled and self.best_step is not None and workdir is not None:
            self._best = _load_best(workdir, self.best_step)
            self._saved_step = self.best_step if self._best is not None else None

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    @property
    def stopped(self) -> bool:
        return self.stopped_step is not None

    def update(
        self, step: int, accuracy: float, state: dict[str, Any], loss: float | None = None
    ) -> bool:
        """Records one evaluation; True when training should stop now.

        With `ties_on_loss`, an evaluation at exactly the best accuracy with a lower validation
        loss becomes the reported weights (patience still counts it as a stall). Why: a small
        validation split saturates (16 lfw_subset images: 100 % from step 100 of 400), and the
        first weights to reach it are the least trained of the tied ones (scratch reported
        98 % test at step 100, 100 % trained on; the tied evaluation with the lowest loss).
        """
        if not self.enabled:
            return False
        if accuracy > self.best_accuracy + self.min_delta:
            self.best_accuracy, self._bad = accuracy, 0
            self._keep(step, loss, state)
            return False
        if (
            self.ties_on_loss
            and accuracy == self.best_accuracy
            and loss is not None
            and self.best_loss is not None
            and loss < self.best_loss
        ):
            self._keep(step, loss, state)
        self._bad += 1
        if self._bad >= self.patience and step >= self.min_step:
            self.stopped_step = step
            return True
        return False

    def _keep(self, step: int, loss: float | None, state: dict[str, Any]) -> None:
        """These weights become the reported ones (host copies: the state moves on)."""
        self.best_step, self.best_loss = step, loss
        self._best = jax.device_get({k: state[k] for k in ("params", "batch_stats")})

    def best_into(self, state: dict[str, Any], put: Any) -> dict[str, Any]:
        """`state` with the best evaluated weights (when this process saw them) put back."""
        if not self.enabled or self._best is None:
            if self.enabled and self.best_step is not None:
                logging.warning(
                    "best weights of step %s not found (run resumed from a checkpoint written "
                    "before best weights were saved): reporting the last weights",
                    self.best_step,
                )
            return state
        return {**state, **{k: put(v) for k, v in self._best.items()}}

    def persist(self) -> None:
        """Writes the best weights next to a checkpoint (process 0), so a resume can restore them.

        Call before saving the checkpoint whose metadata names `best_step`. Files are named by
        step and never overwritten, so a checkpoint always finds the file its metadata names.
        """
        if (
            not self.enabled
            or self.workdir is None
            or self._best is None
            or self._saved_step == self.best_step
            or jax.process_index() != 0
        ):
            return
        directory = self.workdir / BEST_DIR
        directory.mkdir(parents=True, exist_ok=True)
        flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, self._best), sep="/")
        buf = io.BytesIO()
        np.savez(buf, **flat)
        tmp = directory / f".{self.best_step}.npz.tmp"
        tmp.write_bytes(buf.getvalue())
        tmp.rename(directory / f"{self.best_step}.npz")
        self._saved_step = self.best_step

    def prune(self) -> None:
        """At the end of a run: keeps only the best weights that were reported."""
        if self.workdir is None or jax.process_index() != 0:
            return
        directory = self.workdir / BEST_DIR
        if not directory.exists():
            return
        for f in directory.iterdir():
            if f.name != f"{self.best_step}.npz":
                f.unlink()

    def meta(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        best = self.best_accuracy if self.best_step is not None else None
        return {
            "early_stopping": {
                "stopped_step": self.stopped_step,
                "best_step": self.best_step,
                "best_accuracy": best,
                "best_loss": self.best_loss,
                "bad_evals": self._bad,
            }
        }

    def summary(self, config: mlc.ConfigDict, steps_run: int, train_examples: int) -> dict:
        """summary.json fields: the budget kind, whether the run converged, best step, epochs."""
        spe = steps_per_epoch(train_examples, config.batch_size)
        return {
            "budget": "converged" if self.enabled else "equal_steps",
            # Equal-step runs stop at their budget whatever the curve does: never "converged".
            "converged": bool(self.enabled and self.stopped),
            "best_step": int(self.best_step if self.best_step is not None else steps_run),
            "epochs_run": steps_run / spe,
            "max_steps": int(config.total_steps),
            "max_epochs": float(config.total_steps / spe),
            "min_delta": self.min_delta,
            "patience": self.patience,
        }


def _load_best(workdir: epath.Path, step: int) -> dict[str, Any] | None:
    path = workdir / BEST_DIR / f"{step}.npz"
    if not path.exists():
        return None
    with np.load(io.BytesIO(path.read_bytes())) as z:
        tree = traverse_util.unflatten_dict({k: z[k] for k in z.files}, sep="/")
    return {"params": tree.get("params", {}), "batch_stats": tree.get("batch_stats", {})}
