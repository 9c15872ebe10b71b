"""Early stopping on validation accuracy, with the best evaluated model kept for the report.

Tiny-data runs overfit within a fixed budget; a study can instead stop a run once validation
accuracy stalls (`early_stopping_patience` evaluations) and report the best evaluated weights.
The stop is recorded in checkpoint metadata so a resumed run does not train past it.
"""

from __future__ import annotations

from typing import Any

import jax


class EarlyStopping:
    """Tracks the best validation accuracy; `update` says when `patience` evals brought none."""

    def __init__(self, patience: int, resumed_meta: dict[str, Any] | None = None) -> None:
        self.patience = int(patience)
        meta = (resumed_meta or {}).get("early_stopping", {})
        self.stopped_step: int | None = meta.get("stopped_step")
        self.best_step: int | None = meta.get("best_step")
        self.best_accuracy: float = meta.get("best_accuracy", float("-inf"))
        self._bad = 0
        self._best: dict[str, Any] | None = None

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    @property
    def stopped(self) -> bool:
        return self.stopped_step is not None

    def update(self, step: int, accuracy: float, state: dict[str, Any]) -> bool:
        """Records one evaluation; True when training should stop now."""
        if not self.enabled:
            return False
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_step, self._bad = accuracy, step, 0
            self._best = jax.device_get({k: state[k] for k in ("params", "batch_stats")})
            return False
        self._bad += 1
        if self._bad >= self.patience:
            self.stopped_step = step
            return True
        return False

    def best_into(self, state: dict[str, Any], put: Any) -> dict[str, Any]:
        """`state` with the best evaluated weights (when this process saw them) put back."""
        if not self.enabled or self._best is None:
            return state
        return {**state, **{k: put(v) for k, v in self._best.items()}}

    def meta(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        best = self.best_accuracy if self.best_step is not None else None
        return {
            "early_stopping": {
                "stopped_step": self.stopped_step,
                "best_step": self.best_step,
                "best_accuracy": best,
            }
        }
