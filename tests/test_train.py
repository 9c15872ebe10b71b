"""The trainer end to end on tiny configs: files, resume, devices, and refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jtl import config as config_lib
from tests.helpers import assert_same_saved_weights, interrupted_then_resumed

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")


def _tiny(*overrides: str):
    return config_lib.load_config(TINY, list(overrides))


def test_cli_train_writes_the_contract(tmp_path):
    workdir = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jtl.commands.cli",
            "train",
            "--config",
            f"{TINY}:steps=40",
            "--workdir",
            str(workdir),
            "--config.log_every=5",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("config.json", "metrics.jsonl", "summary.json", "param_groups.txt"):
        assert (workdir / name).exists(), name
    assert (workdir / "checkpoints" / "40").is_dir()
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        assert {"step", "split", "loss", "accuracy"} <= set(r)
    train_loss = [r["loss"] for r in records if r["split"] == "train"]
    assert train_loss[-1] < train_loss[0] * 0.8, train_loss
    assert {r["split"] for r in records} == {"train", "val", "test"}
    summary = json.loads((workdir / "summary.json").read_text())
    for key in (
        "test_accuracy",
        "test_loss",
        "wall_time_s",
        "images_seen",
        "trainable_params",
        "frozen_params",
        "flops_per_step",
        "code_version",
    ):
        assert key in summary
    assert summary["test_accuracy"] > 0.4
    assert summary["images_seen"] == 40 * 32
    assert summary["frozen_params"] == 0 and summary["trainable_params"] > 0
    assert summary["flops_per_step"] > 0


def test_resume_after_interrupt_matches_uninterrupted(tmp_path, monkeypatch):
    from jtl.run import train as train_lib

    cfg = ["checkpoint_every=10", "eval_every=10", "augment='crop(2)|flip'"]
    full = train_lib.train(_tiny(*cfg, "total_steps=30"), tmp_path / "full")

    config = _tiny(*cfg, "total_steps=30", "log_every=4")
    resumed = interrupted_then_resumed(monkeypatch, config, tmp_path / "resumed", at_step=24)
    assert resumed["resumed_from_step"] in (10, 20)
    assert_same_saved_weights(tmp_path / "full", tmp_path / "resumed", 30)
    assert resumed["test_accuracy"] == full["test_accuracy"]


def test_same_loss_on_one_and_two_devices(tmp_path):
    code = (
        "import json,sys; from jtl import config as c; from jtl.run import train as t; "
        f"cfg=c.load_config('{TINY}:steps=12', ['log_every=1','augment=\"crop(2)\"', "
        "'optim.name=\"momentum\"', 'optim.lr=0.05']); "
        "t.train(cfg, sys.argv[1])"
    )
    losses = {}
    for n in (1, 2):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        wd = tmp_path / f"dev{n}"
        out = subprocess.run(
            [sys.executable, "-c", code, str(wd)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        recs = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
        losses[n] = np.array([r["loss"] for r in recs if r["split"] == "train"])
        assert json.loads((wd / "summary.json").read_text())["devices"] == n
    # Identical math; only the order of floating-point reductions differs across devices.
    np.testing.assert_allclose(losses[1], losses[2], rtol=1e-4, atol=1e-6)


def test_finished_run_is_not_retrained_and_other_config_is_refused(tmp_path):
    from jtl.run import train as train_lib

    wd = tmp_path / "run"
    first = train_lib.train(_tiny("total_steps=10"), wd)
    written = (wd / "summary.json").read_bytes()
    again = train_lib.train(_tiny("total_steps=10"), wd)  # nothing re-run, nothing rewritten
    assert again == json.loads(written) and (wd / "summary.json").read_bytes() == written
    assert again["test_accuracy"] == first["test_accuracy"]
    before = (wd / "metrics.jsonl").read_text()
    with pytest.raises(train_lib.WorkdirConflictError, match="different config.*seed"):
        train_lib.train(_tiny("total_steps=10", "seed=3"), wd)
    assert (wd / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize(
    "override, error, match",
    [
        ("dataset='no_such_dataset_xyz'", Exception, "no_such_dataset_xyz"),
        ("train_fraction=1.5", ValueError, "1.5"),
        ("train_fraction=0.0", ValueError, "0.0"),
        ("strategy='finetune_full'", ValueError, "init.checkpoint"),
        ("strategy='nope'", ValueError, "valid"),
        ("batch_size=33", ValueError, "divisible"),
    ],
)
def test_bad_config_values_give_clear_errors(tmp_path, override, error, match):
    from jtl.run import train as train_lib

    with pytest.raises(error, match=match):
        train_lib.train(_tiny(override), tmp_path / "run")


def test_bfloat16_compute_tracks_float32(tmp_path):
    from jtl.run import train as train_lib

    losses = {}
    for dtype in ("float32", "bfloat16"):
        wd = tmp_path / dtype
        s = train_lib.train(_tiny("total_steps=30", "log_every=10", f"compute_dtype='{dtype}'"), wd)
        recs = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
        losses[dtype] = np.array([r["loss"] for r in recs if r["split"] == "train"])
        assert np.isfinite(s["test_loss"])
    # Params and loss stay float32; only activations round to bfloat16.
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.05)
