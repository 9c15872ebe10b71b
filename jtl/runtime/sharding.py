"""Device mesh and data-parallel sharding: one code path for 1..N devices and 1..M hosts.

`jax.jit` over a `Mesh` with a `data` axis and `NamedSharding` is what pjit became; params and
optimizer state are replicated, every batch is split along its leading axis.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
_DISTRIBUTED_ENV = "JTL_DISTRIBUTED"


def maybe_initialize_distributed(enabled: bool | str = "auto", **kwargs: Any) -> bool:
    """Joins a multi-host job when asked (flag or `JTL_DISTRIBUTED=1`); idempotent.

    `jax.distributed.initialize()` auto-detects TPU pods and SLURM; on other clusters pass
    `coordinator_address`, `num_processes` and `process_id`.
    """
    if enabled == "auto":
        enabled = os.environ.get(_DISTRIBUTED_ENV, "0") not in ("", "0", "false", "False")
    if not enabled:
        return False
    if jax.distributed.is_initialized():
        return True
    # Explicit cluster description (launch/local.sh, clusters without auto-detection).
    if os.environ.get("JTL_COORDINATOR"):
        kwargs.setdefault("coordinator_address", os.environ["JTL_COORDINATOR"])
        kwargs.setdefault("num_processes", int(os.environ["JTL_NUM_PROCESSES"]))
        kwargs.setdefault("process_id", int(os.environ["JTL_PROCESS_ID"]))
    # Must not touch the backend before initialize(); this option only affects CPU devices.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    logging.info(
        "Joined distributed job: process %d of %d, %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
    )
    return True


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over all (global) devices; the batch is split along `data`."""
    devices = devices if devices is not None else jax.devices()
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    """The global batch must split evenly over devices; say how to fix it when it does not."""
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(
            f"batch size {global_batch} is not divisible by the {n} devices of the mesh; "
            f"use a multiple of {n} (e.g. --config.batch_size={max(n, global_batch // n * n)})."
        )


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Builds global arrays from this process's slice of the global batch."""
    sharding = batch_sharded(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Puts a host pytree on every device (identical on every process)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), tree)


def to_host(tree: Any) -> Any:
    """Fully-replicated arrays -> numpy (works on every process of a multi-host job)."""

    def get(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree.map(get, tree)
