"""`python -m jtl.commands.study_worker`: one persistent worker of `jtl study --parallel N`.

It reads one JSON job per line on stdin (`{"argv": [...], "log": PATH}`), runs `jtl ARGV`
in-process with stdout and stderr appended to the cell's log, and answers `{"rc": N}` on the
stdout it started with. After a failed or preempted cell it exits, so the next cell starts in a
fresh process. The pool that starts and feeds workers is jtl.study.workers (why: see there).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from jtl.commands import cli


def _reset_peak_memory() -> None:
    """Restarts the kernel's peak-RSS count (Linux), so each cell reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the peak then spans the worker's earlier cells
        pass


def run_logged(argv: Sequence[str], log: Path) -> int:
    """Runs `jtl ARGV` in this process with stdout and stderr (fds 1, 2) appended to `log`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    _reset_peak_memory()
    try:
        return cli.main(list(argv))
    except SystemExit as e:  # argparse's usage errors
        return e.code if isinstance(e.code, int) else 2
    except Exception:  # noqa: BLE001 - re-raised by cli.main under --debug / JTL_DEBUG
        traceback.print_exc()  # into the cell's log, as a `jtl train` process would
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        gc.collect()


def serve(jobs: IO[str], results: IO[str]) -> None:
    """The worker loop: one JSON job per line in, one `{"rc": N}` line out per job."""
    for line in jobs:
        job = json.loads(line)
        rc = run_logged(job["argv"], Path(job["log"]))
        results.write(json.dumps({"rc": rc}) + "\n")
        results.flush()
        if rc != 0:  # failed or preempted: the next cell starts from a fresh process
            return


def main() -> None:
    """Serves jobs from stdin; results go to the stdout the process started with."""
    results = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stray prints (imports too) go nowhere
    from jtl.run import train  # noqa: F401 - imported once, before the first cell

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the study, which stops us
    if os.environ.get("JTL_DEBUG", "") in ("", "0"):
        cli.filter_loop_closed()  # once, as `jtl` does for a process (cli.main)
    serve(sys.stdin, results)


if __name__ == "__main__":
    main()
