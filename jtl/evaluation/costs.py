"""What a run cost: the fields every strategy's summary.json carries next to its accuracy.

Measured, not estimated: optimizer-state bytes from the state's arrays, checkpoint bytes from
the files on disk, peak host memory from the kernel (the process's peak resident set, VmHWM on
Linux: a study worker resets it before each cell, so a cell reports its own peak, the worker's
libraries included and what it keeps from its earlier cells, at most
`jtl.study.workers.CELLS_PER_WORKER` of them; in other processes that run several trainings,
e.g. a test session or a `--parallel 1` study, it is the peak so far, an upper bound for this
run). FLOPs per step and wall time are recorded by the trainer from XLA's cost analysis and the
clock.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
from etils import epath

# The cost fields of summary.json that a study row carries (jtl.study.collect): the trainer's
# `trainable_params` and `flops_per_step`, and what `cost_fields` measures.
COST_FIELDS = (
    "trainable_params",
    "flops_per_step",
    "opt_state_bytes",
    "checkpoint_bytes",
    "peak_host_memory_bytes",
)


def tree_bytes(tree: Any) -> int:
    """Bytes of every array leaf (works on concrete arrays and `jax.ShapeDtypeStruct`s)."""
    return int(
        sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
    )


def dir_bytes(path: str | Path | epath.Path | None) -> int | None:
    """Total size of the files under `path` (None if it does not exist)."""
    if path is None:
        return None
    p = epath.Path(path)
    if not p.exists():
        return None
    return _walk_bytes(p)


def _walk_bytes(p: epath.Path) -> int:
    # Not `rglob`: epath refuses recursive globs (they would be thousands of GCS requests).
    return int(sum(_walk_bytes(c) if c.is_dir() else c.stat().length for c in p.iterdir()))


def peak_host_memory_bytes() -> int:
    """Peak resident set size of this process: Linux's VmHWM, which a study worker resets
    before each cell (jtl.study.workers), else `ru_maxrss` (Linux KiB, macOS bytes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def cost_fields(opt_state: Any, checkpoint_dir: Any) -> dict[str, Any]:
    """`opt_state_bytes`, `checkpoint_bytes` (one checkpoint) and `peak_host_memory_bytes`."""
    return {
        "opt_state_bytes": tree_bytes(opt_state) if opt_state is not None else 0,
        "checkpoint_bytes": dir_bytes(checkpoint_dir),
        "peak_host_memory_bytes": peak_host_memory_bytes(),
    }
