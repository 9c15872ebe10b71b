"""jtl's cnn_small and bench/twin_pytorch.py's PyTorch net compute the same function and step.

Why: the twin bench compares accuracies of the two sides; this proves the networks and one SGD
step agree given identical weights and batch, so a measured gap comes from the recipe (init,
data order, scaling, decay, schedule), not from a different computation.
"""

import importlib.util
from pathlib import Path

import jax
import ml_collections as mlc
import numpy as np
import pytest

from jtl.models import get_model
from jtl.optim import make_optimizer, trainable_mask
from jtl.run.train import init_state, jit_train_step
from jtl.runtime import sharding
from jtl.transfer.strategies import Plan

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
WIDTHS, POOLS = (8, 16, 24), (True, True, False)


def _bench():
    spec = importlib.util.spec_from_file_location("twin_bench", ROOT / "bench/twin_pytorch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy(net, fold_bias: bool) -> dict:
    """PyTorch weights -> jtl variables (conv OIHW -> HWIO; conv bias folded into BN mean)."""
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    names = ["stem"] + [f"block{i}" for i in range(1, len(convs))]
    params, stats = {}, {}
    for name, conv, bn in zip(names, convs, bns, strict=True):
        bias = conv.bias.detach().numpy() if fold_bias else 0.0
        params[name] = {
            "conv": {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0)},
            "norm": {"scale": bn.weight.detach().numpy(), "bias": bn.bias.detach().numpy()},
        }
        stats[name] = {
            "norm": {"mean": bn.running_mean.numpy() - bias, "var": bn.running_var.numpy()}
        }
    head = {"kernel": net.head.weight.detach().numpy().T, "bias": net.head.bias.detach().numpy()}
    out = {"params": {"backbone": params, "head": head}, "batch_stats": {"backbone": stats}}
    return jax.tree.map(np.array, out)  # copies: torch's optimizer updates its tensors in place


def _net(bench, seed: int = 0):
    torch.manual_seed(seed)
    net = bench.torch_net(WIDTHS, POOLS, 10)
    with torch.no_grad():  # non-trivial BN state, so eval mode is really tested
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return net


def _batch(n: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 28, 28, 1)).astype(np.uint8)
    return x, (np.arange(n) % 10).astype(np.int32)


def test_same_logits_in_eval_mode():
    bench = _bench()
    net = _net(bench).eval()
    x, _ = _batch()
    model = get_model("cnn_small", 10, widths=WIDTHS, pools=POOLS)
    variables = _copy(net, fold_bias=True)
    xj = (x.astype(np.float32) - 127.5) / 127.5
    ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, xj))
    with torch.no_grad():
        theirs = net(bench.to_tensor(x, "pm1")).numpy()
    assert np.abs(theirs).max() > 0.1  # a non-trivial function
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def test_one_sgd_step_agrees_with_torch():
    """jtl's jitted train step (momentum SGD, decay on kernels) == torch.optim.SGD, one step."""
    bench = _bench()
    net = _net(bench, seed=1).train()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.bias.zero_()  # jtl's convs under BatchNorm have no bias
    x, y = _batch(32, seed=1)
    lr, wd = 0.05, 5e-3
    model = get_model("cnn_small", 10, widths=WIDTHS, pools=POOLS)
    variables = _copy(net, fold_bias=False)
    optim = mlc.ConfigDict(
        {"name": "momentum", "lr": lr, "momentum": 0.9, "weight_decay": wd, "schedule": "constant"}
    )
    tx, _ = make_optimizer(variables["params"], optim, 100)
    mesh = sharding.make_mesh()
    state = sharding.replicate(init_state(variables["params"], variables["batch_stats"], tx), mesh)
    batch = {"image": (x.astype(np.float32) - 127.5) / 127.5, "label": y}
    step = jit_train_step(
        model, tx, trainable_mask(variables["params"], optim), Plan(variables, optim), mesh
    )
    state, _ = step(state, sharding.shard_batch(batch, mesh))
    ours = sharding.to_host(state["params"])

    # The reference step runs in float64: torch's float32 CPU convolutions differ from float64
    # by up to 2.6e-5 in these weights on some machines (oneDNN's kernels; measured on AMD EPYC
    # 2026-12-03), jtl's by under 3e-8, so a float32 torch would test torch, not jtl.
    net = net.double()
    decay = [p for n, p in net.named_parameters() if p.ndim > 1]
    rest = [p for n, p in net.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        momentum=0.9,
    )
    loss = torch.nn.functional.cross_entropy(
        net(bench.to_tensor(x, "pm1").double()), torch.from_numpy(y).long()
    )
    loss.backward()
    opt.step()
    theirs = _copy(net, fold_bias=False)["params"]
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), theirs, variables["params"])
    assert max(jax.tree.leaves(moved)) > 1e-3  # the step changed the weights
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
