"""Metrics sinks: `metrics.jsonl` (the contract later tools read) and TensorBoard events.

Only process 0 writes, so a multi-host job produces one file, not N interleaved ones.

Workdirs may be local or remote (`gs://...`, through `etils.epath`). Locally each record is
appended at once. Object stores cannot append, so on a remote workdir the records are kept in
memory and the whole file is rewritten at most every `flush_every_s` seconds, on `flush()` (the
trainer calls it before each checkpoint, so a resumed run finds every record up to its
checkpoint) and on `close()`. TensorBoard events are written for local workdirs only.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
from absl import logging

from jtl.runtime.paths import as_path, is_remote


def _clean(value: Any) -> Any:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else str(value)


def _parses(line: str) -> bool:
    if not line.strip():
        return False
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without torch where torch is not loaded yet.

    Why: tensorboardX imports torch whenever it is installed (to accept its tensors), which
    costs every `jtl train` process 4.4 s and hundreds of MB on this CPU; jtl writes Python
    floats only. A `None` entry in `sys.modules` makes `import torch` raise ImportError, which
    tensorboardX handles; the entry is removed again, so a later `import torch` works.
    """
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Writes one JSON object per record to `metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(
        self, workdir: str | Path, tensorboard: bool = True, flush_every_s: float = 30.0
    ) -> None:
        self.enabled = jax.process_index() == 0
        workdir = as_path(workdir)
        self.path = workdir / "metrics.jsonl"
        self.remote = is_remote(workdir)
        self.flush_every_s = flush_every_s
        self._lines: list[str] | None = None  # remote: the whole file, rewritten on flush
        self._dirty = False
        self._last_flush = time.monotonic()
        self._tb = None
        if self.enabled and self.remote:
            self._lines = self._read_lines()
        if self.enabled and tensorboard:
            if self.remote:
                logging.info(
                    "Remote workdir %s: TensorBoard events skipped (metrics.jsonl is written)",
                    workdir,
                )
                return
            try:
                self._tb = _summary_writer_class()(str(workdir / "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboardX is a dependency
                logging.warning("tensorboardX not installed: no TensorBoard events written")

    def _read_lines(self) -> list[str]:
        """The file's records; a line torn by a kill mid-append is dropped, not fatal."""
        if not self.path.exists():
            return []
        return [line for line in self.path.read_text().splitlines() if _parses(line)]

    def _rewrite(self) -> None:
        assert self._lines is not None
        self.path.write_text("".join(line + "\n" for line in self._lines))
        self._dirty = False
        self._last_flush = time.monotonic()

    def write(self, step: int, split: str, **scalars: Any) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: _clean(v) for k, v in scalars.items()}}
        line = json.dumps(record)
        if self._lines is None:
            with self.path.open("a") as f:
                f.write(line + "\n")
        else:
            self._lines.append(line)
            self._dirty = True
            if time.monotonic() - self._last_flush >= self.flush_every_s:
                self._rewrite()
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, float):
                    self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def truncate_after(self, step: int) -> None:
        """On resume, drop records newer than the checkpoint so curves are not duplicated."""
        if not self.enabled:
            return
        lines = self._read_lines() if self._lines is None else self._lines
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        if self._lines is not None:
            self._lines = kept
            if len(kept) != len(lines):
                self._rewrite()
        elif self.path.exists():  # atomically: a kill here must not lose the kept records
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)

    def flush(self) -> None:
        if self._lines is not None and self._dirty:
            self._rewrite()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._lines is not None and self._dirty:
            self._rewrite()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    path = as_path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
