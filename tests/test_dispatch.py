"""Bounded dispatch: no loop can queue enough steps to deadlock XLA's CPU collectives."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import pytest

from jtl.runtime.dispatch import InFlight

ROOT = Path(__file__).resolve().parents[1]


def test_in_flight_never_exceeds_its_depth():
    q = InFlight(depth=3)
    for i in range(20):
        q.push({"loss": jnp.asarray(float(i))})
        assert len(q) <= 3
    q.drain()
    assert len(q) == 0
    with pytest.raises(ValueError, match=">= 0"):
        InFlight(depth=-1)


def test_depth_from_env(monkeypatch):
    monkeypatch.setenv("JTL_IN_FLIGHT", "5")
    assert InFlight().depth == 5
    monkeypatch.delenv("JTL_IN_FLIGHT")
    assert InFlight().depth == 2


DEEP = textwrap.dedent(
    """
    import sys
    import jax, numpy as np, ml_collections as mlc
    from jtl import config as config_lib
    from jtl.runtime import sharding
    from jtl.config import base_config
    from jtl.runtime.dispatch import InFlight
    from jtl.models import get_model
    from jtl.optim import make_optimizer, trainable_mask
    from jtl.transfer.strategies import Plan
    from jtl.run.train import init_state, jit_train_step, train

    assert jax.device_count() == 2
    # 1) The fastest possible dispatcher: one fixed batch, nothing read back, 300 steps.
    model = get_model("cnn_small", 10, width=0.5)
    x = np.random.default_rng(0).normal(size=(64, 28, 28, 1)).astype(np.float32)
    y = (np.arange(64) % 10).astype(np.int32)
    v = jax.jit(lambda r: model.init(r, x[:1]))(jax.random.PRNGKey(0))
    optim = mlc.ConfigDict(base_config().optim.to_dict())
    tx, _ = make_optimizer(v["params"], optim, 1000)
    mesh = sharding.make_mesh()
    state = sharding.replicate(init_state(v["params"], v["batch_stats"], tx), mesh)
    b = sharding.shard_batch({"image": x, "label": y}, mesh)
    mask = trainable_mask(v["params"], optim)
    step = jit_train_step(model, tx, mask, Plan(variables=v, optim=optim), mesh)
    inflight = InFlight()
    for _ in range(300):
        state, m = step(state, b)
        inflight.push(m)
    inflight.drain()
    # 2) The trainer with no metric read, evaluation or checkpoint until the end.
    c = config_lib.load_config(
        "configs/tiny.py:steps=300",
        ["log_every=100000", "eval_every=100000", "checkpoint_every=100000"],
    )
    train(c, sys.argv[1])
    print("DEEP-DISPATCH-OK")
    """
)


@pytest.mark.slow
def test_hundreds_of_unread_steps_on_two_cpu_devices(tmp_path):
    """Without the bound, (1) aborts in XLA's rendezvous after 40 s (measured: every time)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("JTL_IN_FLIGHT", None)
    out = subprocess.run(
        [sys.executable, "-c", DEEP, str(tmp_path / "run")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DEEP-DISPATCH-OK" in out.stdout
