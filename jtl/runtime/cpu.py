"""One XLA CPU device per core: the default CPU path for data parallelism on a host.

XLA's CPU backend runs one device's convolutions on a thread pool that leaves cores idle in
the backward pass; splitting the batch over one fake device per core (the same code path as a
multi-GPU host) measured faster here (see bench/). Must run before jax initializes a backend,
so CLI entry points call it first; an explicit XLA_FLAGS device count always wins.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence

_FLAG = "--xla_force_host_platform_device_count"
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu")


def _has_accelerator() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms and "cpu" not in platforms.split(","):
        return True
    if platforms == "cpu":
        return False
    return any(importlib.util.find_spec(p) is not None for p in _ACCELERATOR_PLUGINS)


def devices_for(batch_sizes: Sequence[int], cores: int | None = None) -> int:
    """The largest device count <= cores that divides every batch size."""
    cores = cores or os.cpu_count() or 1
    for d in range(cores, 0, -1):
        if all(b % d == 0 for b in batch_sizes):
            return d
    return 1


def configure_cpu_devices(batch_sizes: Sequence[int], setting: int = 0) -> int | None:
    """Sets the CPU device count (0 = one per core) unless XLA_FLAGS or an accelerator decides.

    Returns the count it set, or None when it left things alone.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG in flags or _has_accelerator() or setting < 0:
        return None
    if "jax" in sys.modules and _jax_backend_initialized():
        return None
    n = setting or devices_for(batch_sizes)
    if n <= 1:
        return None
    os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={n}".strip()
    return n


def _jax_backend_initialized() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, "_backends", {}))
    except ImportError:  # pragma: no cover
        return False
