"""jtl (JAX/XLA) vs PyTorch eager on this CPU: the same training step, side by side, per model.

    .venv/bin/python bench/vs_pytorch.py [--only cnn_small_w0.5,resnet18] [--seconds 4]

Workloads (the studies' own models plus the classic ResNet-18 comparison):
- `cnn_small_w0.5`, `cnn_small_w1`: jtl's `cnn_small`, 28x28x1, batch 64;
- `resnet20_w0.5`: CIFAR ResNet-20 at width 0.5, 28x28x1, batch 64;
- `resnet18`: ResNet-18 with the CIFAR stem, 32x32x3, batch 128.

Each PyTorch twin is built from the jtl module's own fields (widths, pools, stage sizes), so it
is the same architecture even when the jtl definition changes. Both sides run SGD with
momentum on one fixed batch, after warm-up, for at least `--seconds` and 3 steps. jtl runs its
trainer's own jitted sharded step (`jtl.run.train.jit_train_step`, one XLA CPU device per core);
PyTorch uses all cores. Printed per workload: img/s on each side, the speed ratio (>= 1 means
jtl is at least as fast), jtl's MFU against a matmul peak measured in the same run, and which
CPU convolution path jtl ran (`JTL_CPU_CONV`, jtl/models/conv.py).
PyTorch is only needed for this benchmark (`pip install torch==2.13.0`).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

from jtl.runtime.cpu import configure_cpu_devices

configure_cpu_devices([64, 128])  # jtl's default CPU path (one XLA device per core); before jax

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections as mlc  # noqa: E402
import numpy as np  # noqa: E402

# name -> (jtl model name, model kwargs, image size, channels, batch)
WORKLOADS: dict[str, tuple[str, dict[str, Any], int, int, int]] = {
    "cnn_small_w0.5": ("cnn_small", {"width": 0.5, "norm": "batch"}, 28, 1, 64),
    "cnn_small_w1": ("cnn_small", {"width": 1.0, "norm": "batch"}, 28, 1, 64),
    "resnet20_w0.5": ("resnet20", {"width": 0.5, "norm": "batch"}, 28, 1, 64),
    "resnet18": ("resnet18", {"stem": "cifar", "norm": "batch"}, 32, 3, 128),
}


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


def _timed(step: Callable[[], Any], sync: Callable[[Any], None], seconds: float) -> float:
    """Seconds per step: warm-up, then at least 3 steps and `seconds` of them."""
    sync(step())
    sync(step())
    n, t0 = 0, time.perf_counter()
    out = None
    while n < 3 or time.perf_counter() - t0 < seconds:
        out = step()
        n += 1
    sync(out)
    return (time.perf_counter() - t0) / n


def jtl_step_time(workload: str, seconds: float) -> tuple[float, float]:
    """(seconds per step, FLOPs per step) of jtl's own jitted, sharded train step."""
    from jtl.config import base_config
    from jtl.models import get_model
    from jtl.optim import make_optimizer, trainable_mask
    from jtl.run.train import compiled_flops, init_state, jit_train_step
    from jtl.runtime import sharding
    from jtl.runtime.dispatch import InFlight
    from jtl.transfer.strategies import Plan

    name, kwargs, size, channels, batch = WORKLOADS[workload]
    model = get_model(name, 10, **kwargs)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, channels)).astype(np.float32)
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
    holder = {"state": state}
    inflight = InFlight()  # as in the trainer: an unbounded queue deadlocks on CPU devices

    def run() -> Any:
        holder["state"], metrics = compiled(holder["state"], b)
        inflight.push(metrics)
        return metrics

    return _timed(run, jax.block_until_ready, seconds), flops


def torch_twin(workload: str) -> Any:
    """The PyTorch twin of a workload's jtl model, built from the jtl module's fields."""
    from torch import nn

    from jtl.models import get_model

    name, kwargs, _, channels, _ = WORKLOADS[workload]
    backbone = get_model(name, 10, **kwargs).backbone
    from jtl.models.resnet import scaled

    if name == "cnn_small":
        layers: list[nn.Module] = []
        cin = channels
        for w, pool in zip(backbone.widths, backbone.pools, strict=True):
            cout = scaled(w, backbone.width)
            layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))

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

        def forward(self, x: Any) -> Any:
            import torch

            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + self.short(x))

    assert backbone.stem == "cifar" and backbone.block == "basic", "twin covers CIFAR-stem nets"
    cin = scaled(backbone.stem_width, backbone.width)
    layers = [nn.Conv2d(channels, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU()]
    for stage, (n, w) in enumerate(zip(backbone.stage_sizes, backbone.stage_widths, strict=True)):
        cout = scaled(w, backbone.width)
        for j in range(n):
            layers.append(Block(cin, cout, 2 if stage > 0 and j == 0 else 1))
            cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))


def torch_step_time(workload: str, seconds: float) -> float:
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    _, _, size, channels, batch = WORKLOADS[workload]
    net = torch_twin(workload)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, channels, size, size)
    y = torch.arange(batch) % 10

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    return _timed(step, lambda _: None, seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per side (min)")
    args = p.parse_args()
    from jtl.models.conv import cpu_conv_mode, cpu_matmul_wgrad_enabled

    peak = matmul_peak()
    path = "matmul weight grads" if cpu_matmul_wgrad_enabled() else "XLA conv backward"
    print(
        f"{jax.device_count()} XLA CPU device(s), {os.cpu_count()} cores; matmul peak "
        f"{peak:.0f} GFLOP/s; jtl conv path: {path} (JTL_CPU_CONV={cpu_conv_mode()})"
    )
    print(f"{'workload':16s} {'batch':>5s} {'jtl img/s':>10s} {'torch img/s':>11s} "
          f"{'jtl/torch speed':>15s} {'jtl MFU':>8s}")  # fmt: skip
    for name in filter(None, args.only.split(",")):
        batch = WORKLOADS[name][4]
        jtl_t, flops = jtl_step_time(name, args.seconds)
        torch_t = torch_step_time(name, args.seconds)
        mfu = flops / jtl_t / 1e9 / peak
        print(
            f"{name:16s} {batch:5d} {batch / jtl_t:10.0f} {batch / torch_t:11.0f} "
            f"{torch_t / jtl_t:15.2f} {mfu:8.1%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
