"""Does one XLA CPU device per core train faster than one device? Side by side, one run.

    .venv/bin/python bench/cpu_devices.py [--model resnet20] [--batch 128] [--steps 5]

Runs jtl's sharded train step in a subprocess per device count (XLA_FLAGS must be set before
jax starts) and prints seconds per step and the ratio to one device.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = r"""
import sys, time, jax, jax.numpy as jnp, numpy as np, ml_collections as mlc
from jtl.runtime import sharding
from jtl.config import base_config
from jtl.models import get_model
from jtl.optim import make_optimizer, trainable_mask
from jtl.transfer.strategies import Plan
from jtl.run.train import init_state, jit_train_step
name, batch, steps, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
kw = {"norm": "batch", **({"stem": "cifar"} if name in ("resnet18", "resnet50") else {})}
model = get_model(name, 10, **kw)
x = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
y = (np.arange(batch) % 10).astype(np.int32)
v = jax.jit(lambda r: model.init(r, x[:1]))(jax.random.PRNGKey(0))
optim = mlc.ConfigDict(base_config().optim.to_dict())
tx, _ = make_optimizer(v["params"], optim, 1000)
mask = trainable_mask(v["params"], optim)
mesh = sharding.make_mesh()
state = sharding.replicate(init_state(v["params"], v["batch_stats"], tx), mesh)
b = sharding.shard_batch({"image": x, "label": y}, mesh)
step = jit_train_step(model, tx, mask, Plan(variables=v, optim=optim), mesh)
state, m = step(state, b); jax.block_until_ready(m)
t = time.perf_counter()
for _ in range(steps):
    state, m = step(state, b)
jax.block_until_ready(m)
print((time.perf_counter() - t) / steps)
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--size", type=int, default=32)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    counts = sorted({1, cores})
    times = {}
    for n in counts:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        out = subprocess.run(
            [sys.executable, "-c", CHILD, args.model, str(args.batch), str(args.steps),
             str(args.size)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        times[n] = float(out.stdout.strip().splitlines()[-1])
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}x3, {cores} cores")
    for n, t in times.items():
        print(f"  {n} CPU device(s): {t:.3f} s/step  ({times[1] / t:.2f}x vs 1 device)")


if __name__ == "__main__":
    main()
