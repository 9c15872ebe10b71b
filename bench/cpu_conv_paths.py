"""jtl's CPU convolution paths vs XLA's own, side by side: one training step of a real model.

    .venv/bin/python bench/cpu_conv_paths.py [--model efficientnet_lite0] [--size 64]
        [--batch 32] [--steps 3]

Builds jtl's own sharded training step (`jtl.run.train.jit_train_step`, as the trainer runs it)
twice in one process, once with jtl's CPU default (matmul weight gradients; depthwise convs as
shift-sums, jtl/models/conv.py) and once with `JTL_CPU_CONV=xla`, and prints seconds per
step, forward images/s and the ratio. Lite0 (depthwise-heavy) shows the depthwise path;
`--model resnet18` the weight-gradient path.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np


def measure(model_name: str, size: int, batch: int, steps: int) -> tuple[float, float]:
    """(seconds per jtl training step, seconds per forward pass) with the current conv path."""
    import ml_collections as mlc

    from jtl.config import base_config
    from jtl.models import get_model
    from jtl.optim import make_optimizer, trainable_mask
    from jtl.run.train import init_state, jit_train_step
    from jtl.runtime import sharding
    from jtl.transfer.strategies import Plan

    model = get_model(model_name, 10)
    x = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
    y = (np.arange(batch) % 10).astype(np.int32)
    v = model.init(jax.random.PRNGKey(0), x[:1])
    optim = mlc.ConfigDict(base_config().optim.to_dict())
    tx, _ = make_optimizer(v["params"], optim, 1000)
    mesh = sharding.make_mesh()
    state = sharding.replicate(init_state(v["params"], v["batch_stats"], tx), mesh)
    b = sharding.shard_batch({"image": x, "label": y}, mesh)
    step = jit_train_step(
        model, tx, trainable_mask(v["params"], optim), Plan(variables=v, optim=optim), mesh
    )
    forward = jax.jit(lambda variables: model.apply(variables, b["image"], train=False))
    state, m = step(state, b)  # compile; the step donates its state, so thread it through
    jax.block_until_ready((m, forward(v)))
    t = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, b)
    jax.block_until_ready(m)
    t_step = (time.perf_counter() - t) / steps
    t = time.perf_counter()
    for _ in range(steps):
        out = forward(v)
    jax.block_until_ready(out)
    return t_step, (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    devices = f"{jax.device_count()} {jax.default_backend()} device(s)"
    print(f"{a.model} {a.size}px batch {a.batch}, {devices}")
    res = {}
    for mode in ("xla", "matmul"):
        os.environ["JTL_CPU_CONV"] = mode  # read when the step is traced
        res[mode] = measure(a.model, a.size, a.batch, a.steps)
        t_step, t_fwd = res[mode]
        label = "XLA convolutions" if mode == "xla" else "jtl CPU default"
        print(f"  {label:17s}: train step {t_step:.3f} s, forward {a.batch / t_fwd:.0f} img/s")
    ratio_step = res["xla"][0] / res["matmul"][0]
    ratio_fwd = res["xla"][1] / res["matmul"][1]
    print(
        f"speed-up of jtl's CPU default over XLA's: train step x{ratio_step:.1f}, "
        f"forward x{ratio_fwd:.1f}"
    )


if __name__ == "__main__":
    main()
