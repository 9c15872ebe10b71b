"""Persistent cell workers for `jtl study --parallel N`.

Why: a benchmark cell is short (a small-data fine-tune trains for 5-15 s), and a fresh
`jtl train` process first spends about 3 s of CPU starting Python and importing jax, flax,
optax, orbax and tfds. N long-lived workers (one XLA CPU device each, as one process per cell
had) run the same `jtl train` command line in-process, one cell after another, so the start-up
is paid N times per study instead of once per cell (bench/study_workers.py measures the gain).

What stays as it was: a cell's output goes to its own `train.log`, its exit code means what
`jtl train`'s does (0; 2 a user error; 75 preempted, checkpoint saved), and its results are
bit-identical to a fresh process (tests/test_study_workers.py). A worker serves cells until one
fails or is preempted, then exits: the next cell gets a fresh process, never the state a failure
left behind. A worker that dies mid-cell (killed, out of memory) is reported as that cell's
failure and replaced. After `CELLS_PER_WORKER` cells a worker is retired too, so what it keeps
from earlier cells (compiled programs, allocator pools) stays bounded, and so does the peak
memory a cell reports (jtl.evaluation.costs).
"""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DIED = -1000  # a worker's result when its process ended without reporting one
CELLS_PER_WORKER = 40  # then a fresh process (about 3 s of start-up per 40 cells)
CLOSE_TIMEOUT_S = 60.0  # for all workers together: a running cell's checkpoint, then a kill
# The worker process: an entry point, so it lives with the commands it runs.
WORKER_MODULE = "jtl.commands.study_worker"


class Worker:
    """One worker process and the cell it runs (None: idle)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            text=True,
        )
        self.job: Any = None
        self.cells = 0  # cells started on this process

    def start(self, job: Any, argv: Sequence[str], log: Path) -> None:
        assert self.proc.stdin is not None
        self.job = job
        self.cells += 1
        try:
            self.proc.stdin.write(json.dumps({"argv": list(argv), "log": str(log)}) + "\n")
            self.proc.stdin.flush()
        except OSError:  # it died since the pool last looked: `result` reports DIED
            pass

    def result(self) -> int:
        """The finished job's exit code (DIED if the process ended without one)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.job = None
        return int(json.loads(line)["rc"]) if line else DIED

    def begin_close(self) -> None:
        """Asks the process to end without waiting: an idle loop ends at the closed stdin, a
        running cell gets SIGTERM and checkpoints (the study is ending under it)."""
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.job is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def finish_close(self, timeout: float) -> None:
        """Waits up to `timeout` seconds for the process, then kills it."""
        try:
            self.proc.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        self.begin_close()
        self.finish_close(timeout)


def close_all(workers: Sequence[Worker], timeout: float = CLOSE_TIMEOUT_S) -> None:
    """Closes workers under one shared deadline: every one is asked first, then each is
    waited for, so N busy workers take `timeout` at most, not N times it."""
    for w in workers:
        w.begin_close()
    deadline = time.monotonic() + timeout
    for w in workers:
        w.finish_close(deadline - time.monotonic())


class WorkerPool:
    """Up to `size` workers; `run` feeds them jobs and reports each job's exit code."""

    def __init__(self, size: int, env: dict[str, str], log_dir: Path) -> None:
        self.size, self.env, self.log_dir = size, env, log_dir
        self.workers: list[Worker] = []
        self.started = 0  # workers started so far (names their logs)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        close_all(self.workers)
        self.workers.clear()

    def _idle(self) -> Worker:
        for w in list(self.workers):
            if w.job is None and w.proc.poll() is not None:  # died while idle (killed, OOM)
                self._retire(w)
        for w in self.workers:
            if w.job is None:
                return w
        w = Worker(self.env, self.log_dir / f"worker{self.started}.log")
        self.started += 1
        self.workers.append(w)
        return w

    def _retire(self, w: Worker) -> None:
        w.close()
        self.workers.remove(w)

    def run(
        self,
        jobs: list[tuple[Any, list[str], Path]],
        done: Callable[[Any, int], bool],
        stop: Callable[[], bool],
    ) -> None:
        """Runs `(job, argv, log)` items; `done(job, rc)` after each returns False to stop
        launching more. `stop()` (checked every half second, before any launch) SIGTERMs the
        running cells once, waits for them to checkpoint and report, and returns."""
        queue = list(jobs)
        signalled = False
        with selectors.DefaultSelector() as sel:
            while True:
                if not signalled and stop():  # before launching: nothing starts after it
                    signalled = True
                    queue.clear()
                    for w in self.workers:
                        if w.job is not None:
                            w.proc.send_signal(signal.SIGTERM)  # each cell checkpoints its step
                while queue and sum(w.job is not None for w in self.workers) < self.size:
                    job, argv, log = queue.pop(0)
                    w = self._idle()
                    w.start(job, argv, log)
                    sel.register(w.proc.stdout, selectors.EVENT_READ, w)
                if not any(w.job is not None for w in self.workers):
                    return
                for key, _ in sel.select(timeout=0.5):
                    w = key.data
                    sel.unregister(key.fileobj)
                    job = w.job
                    rc = w.result()
                    # A failed or preempted worker exits (or has died); an old one is retired:
                    # either way a fresh one takes the next cell.
                    if rc != 0 or w.cells >= CELLS_PER_WORKER:
                        self._retire(w)
                    if not done(job, rc):
                        queue.clear()
