"""Honest non-finite handling: a skip-mostly run is diverged, a checkpoint holding non-finite
weights is never written or named, and summary.json is strict JSON."""

import json
import math

import numpy as np
import pytest

from jtl import config as config_lib
from jtl.evaluation import run_summary
from jtl.run.train import train
from jtl.runtime.errors import DivergedError
from tests.helpers import fake_summary
from tests.test_train import TINY


def _run(tmp_path, lr, policy, every=1):
    cfg = config_lib.load_config(
        f"{TINY}:steps=20",
        ["optim.name=momentum", f"optim.lr={lr}", f"checkpoint_every={every}",
         f"nonfinite={policy}"],
    )  # fmt: skip
    with pytest.raises(DivergedError) as e:
        train(cfg, tmp_path / policy)
    summary = json.loads((tmp_path / policy / "summary.json").read_text())
    return str(e.value), summary, tmp_path / policy / "checkpoints"


def test_skipping_most_steps_is_a_divergence_not_a_success(tmp_path):
    msg, s, _ = _run(tmp_path, 1e6, "skip", every=1000)
    assert s["diverged"] and s["skipped_steps"] > 0.1 * s["diverged_step"]
    assert "nonfinite_max_skipped" in msg and s["test_accuracy"] is None


def test_an_overflowing_update_is_never_checkpointed_or_named(tmp_path):
    for policy in ("stop", "skip"):
        msg, s, ckpts = _run(tmp_path, 1e39, policy)
        assert s["diverged"] and "update overflowed" in msg
        assert s["last_finite_checkpoint"] is None and "last finite checkpoint: none" in msg
        assert not any(p.name.isdigit() for p in ckpts.iterdir()) if ckpts.exists() else True


def test_summary_json_is_strict_with_non_finite_values_as_null():
    text = run_summary.dumps(fake_summary(test_loss=float("nan"), val_loss=np.float32("inf")))
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert data["test_loss"] is None and data["val_loss"] is None
    assert math.isfinite(data["test_accuracy"])
