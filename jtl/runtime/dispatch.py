"""Bounded asynchronous dispatch: at most `depth` jitted steps queued behind the one running.

Why: jax dispatches jitted calls asynchronously. On XLA's CPU backend with several devices
(jtl's default: one per core), every step's gradient all-reduce is a rendezvous of one thread
per device on a shared thread pool. With hundreds of steps queued, the pool's threads can all be
taken by participants waiting for a peer that has no thread left to run on, and XLA aborts the
process after 40 s ("Termination timeout for all reduce"). Measured on 2 CPU devices: 300
cnn_small steps dispatched with nothing read back deadlocked every time, even with XLA's
termination timeout raised to 200 s (a deadlock, not a slow step); with at most `depth` = 2
queued they always finished, as fast as with depth 1 or fully synchronous (docs/speed.md).
Every jtl loop that dispatches steps (trainer, benches) pushes each step's outputs here, so
none can queue more.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

import jax

DEFAULT_DEPTH = 2
DEPTH_ENV = "JTL_IN_FLIGHT"  # override for experiments (e.g. to measure a deeper queue)


class InFlight:
    """Blocks on the oldest outputs once more than `depth` steps are queued (`depth` >= 0)."""

    def __init__(self, depth: int | None = None) -> None:
        if depth is None:
            depth = int(os.environ.get(DEPTH_ENV) or DEFAULT_DEPTH)
        if depth < 0:
            raise ValueError(f"in-flight depth must be >= 0, got {depth}")
        self.depth = depth
        self._queue: deque[Any] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, outputs: Any) -> None:
        """Records one dispatched step's outputs; waits for older steps beyond the depth."""
        self._queue.append(outputs)
        while len(self._queue) > self.depth:
            jax.block_until_ready(self._queue.popleft())

    def drain(self) -> None:
        """Waits for every recorded step."""
        while self._queue:
            jax.block_until_ready(self._queue.popleft())
