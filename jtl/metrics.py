"""Metrics sinks: `metrics.jsonl` (the contract later tools read) and TensorBoard events.

Only process 0 writes, so a multi-host job produces one file, not N interleaved ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
from absl import logging


def _clean(value: Any) -> Any:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else str(value)


class MetricWriter:
    """Appends one JSON object per record to `metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str | Path, tensorboard: bool = True) -> None:
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if self.enabled and tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboardX is a dependency
                logging.warning("tensorboardX not installed: no TensorBoard events written")

    def write(self, step: int, split: str, **scalars: Any) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: _clean(v) for k, v in scalars.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, float):
                    self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def truncate_after(self, step: int) -> None:
        """On resume, drop records newer than the checkpoint so curves are not duplicated."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in kept if json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
