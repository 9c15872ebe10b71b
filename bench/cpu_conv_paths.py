"""jtl's CPU convolution paths vs XLA's own, side by side: one training step of a real model.

    .venv/bin/python bench/cpu_conv_paths.py [--model efficientnet_lite0] [--size 64]
        [--batch 32] [--steps 3]

Builds the same jitted training step twice in one process, once with jtl's CPU default
(matmul weight gradients; depthwise convs as shift-sums, jtl/models/conv.py) and once with
`JTL_CPU_CONV=xla`, and prints seconds per step, forward images/s and the ratio. Lite0
(depthwise-heavy) shows the depthwise path; `--model resnet18` the weight-gradient path.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax


def timed(fn, *args, steps: int) -> float:
    out = fn(*args)
    jax.block_until_ready(out)
    t = time.perf_counter()
    for _ in range(steps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / steps


def measure(model_name: str, size: int, batch: int, steps: int) -> tuple[float, float]:
    """(seconds per SGD training step, seconds per forward pass) with the current conv path."""
    from jtl.models import get_model

    model = get_model(model_name, 10)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
    y = jnp.arange(batch) % 10
    variables = model.init(jax.random.PRNGKey(0), x[:1])
    tx = optax.sgd(0.01, momentum=0.9)

    def loss(params, stats):
        logits, new = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

    @jax.jit
    def step(params, stats, opt):
        (_, new), g = jax.value_and_grad(loss, has_aux=True)(params, stats)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), new["batch_stats"], opt

    forward = jax.jit(lambda v: model.apply(v, x, train=False))
    p, s = variables["params"], variables["batch_stats"]
    return timed(step, p, s, tx.init(p), steps=steps), timed(forward, variables, steps=steps)


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
