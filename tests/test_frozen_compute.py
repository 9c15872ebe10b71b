"""Frozen compute is skipped: XLA's cost analysis of the compiled train step shows it.

A head-only step must cost about a forward pass (no backward through the frozen backbone),
and freezing the bottom blocks must remove their backward, even with gradient clipping and
the gradient-norm metric on (they read trainable gradients only).
"""

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from jtl.config import base_config
from jtl.models import get_model
from jtl.optim import make_optimizer, trainable_mask
from jtl.run.train import compiled_flops, init_state, make_train_step
from jtl.transfer.strategies import Plan


def _step_flops(model, variables, frozen, batch, nonfinite="stop"):
    optim = mlc.ConfigDict(base_config().optim.to_dict())
    optim.frozen = tuple(frozen)
    optim.clip_norm = 1.0
    tx, _ = make_optimizer(variables["params"], optim, 100)
    mask = trainable_mask(variables["params"], optim)
    state = init_state(variables["params"], variables.get("batch_stats", {}), tx)
    plan = Plan(variables=variables, optim=optim)
    step = jax.jit(make_train_step(model, tx, mask, plan, nonfinite))
    return compiled_flops(step.lower(state, batch).compile())


@pytest.mark.parametrize(
    "name,kwargs,size",
    [
        ("resnet20", {"norm": "batch"}, 16),
        ("resnet18", {"norm": "group", "stem": "cifar"}, 16),
        ("cnn_small", {"norm": "batch"}, 16),
    ],
)
def test_head_only_and_top_k_steps_cost_less(name, kwargs, size):
    model = get_model(name, 10, **kwargs)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, size, size, 3)), jnp.float32)
    batch = {"image": x, "label": jnp.arange(8, dtype=jnp.int32) % 10}
    variables = jax.jit(lambda r: model.init(r, x[:1]))(jax.random.PRNGKey(0))
    blocks = model.block_names()
    full = _step_flops(model, variables, (), batch)
    head = _step_flops(model, variables, ("backbone/.*",), batch)
    half = _step_flops(
        model, variables, [f"backbone/{b}/.*" for b in blocks[: len(blocks) // 2]], batch
    )
    assert head <= 0.45 * full, (head, full)
    assert head < half < full, (head, half, full)


def test_skip_policy_keeps_the_frozen_backward_dead():
    """nonfinite='skip' selects the old state on a bad step without reading frozen grads."""
    model = get_model("cnn_small", 10, norm="batch")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 16, 16, 3)), jnp.float32)
    batch = {"image": x, "label": jnp.arange(8, dtype=jnp.int32) % 10}
    variables = jax.jit(lambda r: model.init(r, x[:1]))(jax.random.PRNGKey(0))
    full = _step_flops(model, variables, (), batch)
    head = _step_flops(model, variables, ("backbone/.*",), batch)
    head_skip = _step_flops(model, variables, ("backbone/.*",), batch, nonfinite="skip")
    assert head_skip <= 1.05 * head and head_skip <= 0.45 * full, (head_skip, head, full)
