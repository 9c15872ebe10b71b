"""Frozen compute is skipped: step time of head-only / top-k / full training, side by side.

    .venv/bin/python bench/frozen_step.py [--batch 64] [--steps 10]

Prints, per model, the compiled step's FLOPs (XLA cost analysis) and measured wall time per
step for each freezing setting, and their ratios to the full step, measured in one run.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from jtl.config import base_config
from jtl.models import get_model
from jtl.optim import make_optimizer, trainable_mask
from jtl.run.train import compiled_flops, init_state, jit_train_step
from jtl.runtime import sharding
from jtl.transfer.strategies import Plan

MODELS = {
    "resnet20 (32x32x3)": ("resnet20", 32, 3),
    "resnet18 cifar-stem (32x32x3)": ("resnet18", 32, 3),
    "cnn_small (28x28x1)": ("cnn_small", 28, 1),
}


def settings(blocks: list[str]) -> dict[str, tuple[str, ...]]:
    k = len(blocks) // 2
    return {
        "full": (),
        f"top-half (freeze {k}/{len(blocks)})": tuple(f"backbone/{b}/.*" for b in blocks[:k]),
        "head-only": ("backbone/.*",),
    }


def bench_model(name: str, size: int, channels: int, batch: int, steps: int) -> None:
    kwargs = {"norm": "batch"}
    if name == "resnet18":
        kwargs["stem"] = "cifar"
    model = get_model(name, 10, **kwargs)
    x = jnp.asarray(
        np.random.default_rng(0).normal(size=(batch, size, size, channels)), jnp.float32
    )
    y = jnp.asarray(np.arange(batch) % 10, jnp.int32)
    variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
    mesh = sharding.make_mesh()
    batch_arrays = sharding.shard_batch({"image": np.asarray(x), "label": np.asarray(y)}, mesh)
    results = {}
    for label, frozen in settings(model.block_names()).items():
        optim = mlc.ConfigDict(base_config().optim.to_dict())
        optim.frozen = frozen
        optim.clip_norm = 1.0  # clipping reads only trainable grads: frozen backward stays dead
        tx, _ = make_optimizer(variables["params"], optim, 1000)
        mask = trainable_mask(variables["params"], optim)
        state = init_state(variables["params"], variables.get("batch_stats", {}), tx)
        state = sharding.replicate(state, mesh)
        plan = Plan(variables=variables, optim=optim)
        compiled = jit_train_step(model, tx, mask, plan, mesh).lower(state, batch_arrays).compile()
        state, m = compiled(state, batch_arrays)  # warm-up
        jax.block_until_ready(m)
        t = time.perf_counter()
        for _ in range(steps):
            state, m = compiled(state, batch_arrays)
        jax.block_until_ready(m)
        results[label] = (
            (time.perf_counter() - t) / steps,
            compiled_flops(compiled) or float("nan"),
        )
    full_t, full_f = results["full"]
    print(f"\n{name}  batch {batch}, {jax.device_count()} device(s)")
    print(
        f"  {'setting':34s} {'ms/step':>9s} {'time/full':>10s} "
        f"{'GFLOP/step':>11s} {'flops/full':>11s}"
    )
    for label, (t, f) in results.items():
        print(f"  {label:34s} {t * 1e3:9.1f} {t / full_t:10.2f} {f / 1e9:11.2f} {f / full_f:11.2f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--models", default=",".join(MODELS))
    args = p.parse_args()
    for key in args.models.split(","):
        bench_model(*MODELS[key], args.batch, args.steps)


if __name__ == "__main__":
    main()
