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
failure and replaced.
"""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DIED = -1000  # a worker's result when its process ended without reporting one
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

    def start(self, job: Any, argv: Sequence[str], log: Path) -> None:
        assert self.proc.stdin is not None
        self.job = job
        self.proc.stdin.write(json.dumps({"argv": list(argv), "log": str(log)}) + "\n")
        self.proc.stdin.flush()

    def result(self) -> int:
        """The finished job's exit code (DIED if the process ended without one)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.job = None
        return int(json.loads(line)["rc"]) if line else DIED

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()  # an idle worker's loop ends
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()


class WorkerPool:
    """Up to `size` workers; `run` feeds them jobs and reports each job's exit code."""

    def __init__(self, size: int, env: dict[str, str], log_dir: Path) -> None:
        self.size, self.env, self.log_dir = size, env, log_dir
        self.workers: list[Worker] = []
        self.started = 0  # workers started so far (names their logs)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.workers:
            w.close()
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
                    if rc != 0:  # the worker exits (or has died): a fresh one takes the next
                        self._retire(w)
                    if not done(job, rc):
                        queue.clear()
