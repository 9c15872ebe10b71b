"""jtl (JAX/XLA) vs PyTorch on this CPU: the same ResNet-18 training step, side by side.

    .venv/bin/python bench/vs_pytorch.py [--batch 128] [--steps 3]

Measures in one run: seconds per training step of ResNet-18 (CIFAR stem, 32x32x3, SGD with
momentum) in jtl's jitted sharded step and in PyTorch eager (same batch); the model FLOPs
utilization against a measured matmul peak; and the input pipeline's time per batch relative
to the step (grain pipeline on MNIST resized to 32x32x3 with crop|flip).
PyTorch is only needed for this benchmark (`pip install torch==2.13.0`).
`JTL_CPU_CONV=xla` runs jtl with XLA's own convolution backward instead of jtl's CPU default
(matmul weight gradients, jtl/models/conv.py); docs/speed.md has measured numbers.
"""

from __future__ import annotations

import argparse
import os
import time

from jtl.cpu import configure_cpu_devices

configure_cpu_devices([128])  # jtl's default CPU path (one XLA device per core); before jax

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections as mlc  # noqa: E402
import numpy as np  # noqa: E402


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """Measured f32 matmul GFLOP/s in jax.jit: the practical peak of this machine."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def jtl_step_time(batch: int, steps: int) -> tuple[float, float]:
    from jtl import sharding
    from jtl.config import base_config
    from jtl.models import get_model
    from jtl.optim import make_optimizer, trainable_mask
    from jtl.strategies import Plan
    from jtl.train import compiled_flops, init_state, jit_train_step

    model = get_model("resnet18", 10, stem="cifar", norm="batch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 32, 32, 3)).astype(np.float32)
    y = (np.arange(batch) % 10).astype(np.int32)
    variables = jax.jit(lambda r: model.init(r, x[:1]))(jax.random.PRNGKey(0))
    optim = mlc.ConfigDict(base_config().optim.to_dict())
    optim.weight_decay = 0.0
    tx, _ = make_optimizer(variables["params"], optim, 1000)
    mask = trainable_mask(variables["params"], optim)
    mesh = sharding.make_mesh()
    state = sharding.replicate(init_state(variables["params"], variables["batch_stats"], tx), mesh)
    b = sharding.shard_batch({"image": x, "label": y}, mesh)
    step = jit_train_step(model, tx, mask, Plan(variables=variables, optim=optim), mesh)
    compiled = step.lower(state, b).compile()
    # The SPMD program's cost analysis is per device; the step's work is all devices'.
    flops = (compiled_flops(compiled) or float("nan")) * jax.device_count()
    state, m = compiled(state, b)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, b)
    jax.block_until_ready(m)
    return (time.perf_counter() - t) / steps, flops


def torch_step_time(batch: int, steps: int) -> float:
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + self.short(x))

    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.arange(batch) % 10

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def pipeline_time(batch: int, batches: int = 20) -> float:
    from jtl.data import registry, sources
    from jtl.data.pipeline import train_batches

    name = "mnist" if sources.is_fetched("mnist") else "digits"
    sources.fetch(name)
    ds = registry.load(name)
    it = train_batches(
        ds.splits["train"], np.arange(len(ds.splits["train"])), batch_size=batch, seed=0,
        image_size=32, channels=3, augment="crop(4)|flip",
    )  # fmt: skip
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return (time.perf_counter() - t) / batches


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    peak = matmul_peak()
    jtl_t, flops = jtl_step_time(args.batch, args.steps)
    torch_t = torch_step_time(args.batch, args.steps)
    pipe_t = pipeline_time(args.batch)
    print(
        f"ResNet-18 (CIFAR stem, 32x32x3), batch {args.batch}, {jax.device_count()} XLA "
        f"device(s), {os.cpu_count()} cores"
    )
    from jtl.models.conv import cpu_matmul_wgrad_enabled

    path = "matmul weight grads" if cpu_matmul_wgrad_enabled() else "XLA conv backward"
    print(f"  jtl conv path: {path} (JTL_CPU_CONV=xla|matmul)")
    print(f"  jtl step      {jtl_t:7.2f} s  ({args.batch / jtl_t:6.1f} img/s)")
    print(f"  PyTorch step  {torch_t:7.2f} s  ({args.batch / torch_t:6.1f} img/s)")
    print(f"  jtl / PyTorch time ratio: {jtl_t / torch_t:.2f}  (< 1 means jtl is faster)")
    print(
        f"  matmul peak {peak:.0f} GFLOP/s; jtl step {flops / 1e9:.1f} GFLOP -> "
        f"{flops / jtl_t / 1e9:.1f} GFLOP/s, MFU {flops / jtl_t / 1e9 / peak:.1%}"
    )
    print(
        f"  input pipeline {pipe_t * 1e3:.1f} ms/batch = {pipe_t / jtl_t:.1%} of the step "
        "(single-threaded cost; prefetch threads overlap it with the step)"
    )


if __name__ == "__main__":
    main()
