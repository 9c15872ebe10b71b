"""Preemption: SIGTERM (how cloud VMs announce it) or SIGINT ends a run cleanly and resumably.

Why: a preempted TPU/GPU VM gets SIGTERM and some seconds before it dies. Without a handler the
process exits 143 at once and the re-run resumes from the last periodic checkpoint, losing up to
`checkpoint_every` steps. With `Preemption` active, the trainer finishes the step in flight,
writes a checkpoint at that step, and raises `Preempted`; `jtl` prints one line and exits with
`EXIT_CODE` (75, EX_TEMPFAIL: "try again"), which the study runner and `launch/` scripts treat
as "re-run the same command".
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

EXIT_CODE = 75  # EX_TEMPFAIL: preempted, checkpoint saved, re-run to resume
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):  # noqa: N818 - it is an outcome, not an error of the user's
    """A run stopped on request after saving a checkpoint at `step`."""

    def __init__(self, step: int | None, signal_name: str = "SIGTERM", what: str = "") -> None:
        where = f"at step {step}, checkpoint saved" if step is not None else what
        super().__init__(f"preempted ({signal_name}) {where}; re-run the same command to resume")
        self.step = step


class Preemption:
    """While active, SIGTERM / SIGINT only set `requested` (a second SIGINT still interrupts).

    Installed only in the main thread (Python delivers signals there); elsewhere it is inert and
    the default handlers stay.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def agreed(requested: bool) -> bool:
    """Whether any process was asked to stop (every process must save the same step)."""
    import jax

    if jax.process_count() == 1:
        return requested
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([requested]))))
