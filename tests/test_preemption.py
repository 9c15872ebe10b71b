"""SIGTERM mid-run: the step in flight finishes, is checkpointed, and the re-run resumes there
bit-identically (jtl.runtime.preemption)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jtl.runtime.preemption import EXIT_CODE
from tests.helpers import assert_same_saved_weights

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")
STEPS = 600  # a wide window: SIGTERM lands at step >= 20, long before the end


def _cmd(workdir: Path) -> list[str]:
    return [
        sys.executable, "-m", "jtl.commands.cli", "train", "--config", f"{TINY}:steps={STEPS}",
        "--workdir", str(workdir), "--config.checkpoint_every=1000", "--config.log_every=5",
        "--config.eval_every=50",
    ]  # fmt: skip


def _last_logged_step(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def test_sigterm_checkpoints_the_current_step_and_the_rerun_is_bit_identical(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = tmp_path / "preempted"
    proc = subprocess.Popen(_cmd(run), stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while _last_logged_step(run) < 20 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_CODE, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("jtl: preempted (SIGTERM) at step ") and "re-run the same" in last
    step = int(last.split("at step ")[1].split(",")[0])
    assert 20 <= step < STEPS
    # The checkpoint is at the step it stopped on, though the cadence (1000) never saved one.
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [
        step
    ]
    assert not (run / "summary.json").exists()
    again = subprocess.run(_cmd(run), capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_step"] == step and summary["steps_run"] == STEPS
    straight = tmp_path / "straight"
    clean = subprocess.run(_cmd(straight), capture_output=True, text=True, env=env, timeout=300)
    assert clean.returncode == 0, clean.stderr
    assert_same_saved_weights(run, straight, STEPS)
    assert (
        summary["test_accuracy"]
        == json.loads((straight / "summary.json").read_text())["test_accuracy"]
    )


def test_sigterm_before_the_first_step_exits_75_with_a_checkpoint(tmp_path, monkeypatch):
    """A signal during set-up (data, a probe stage, compilation) used to kill the process
    (exit 143: launchers do not re-run that); now the loop checkpoints its first step."""
    import pytest

    from jtl import config as config_lib
    from jtl.run import train as train_lib
    from jtl.runtime.preemption import Preempted

    real = train_lib._load_data

    def load_then_signal(*a, **k):
        out = real(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the data is ready, before step 1
        return out

    monkeypatch.setattr(train_lib, "_load_data", load_then_signal)
    config = config_lib.load_config(f"{TINY}:steps=40", ["progress=False"])
    with pytest.raises(Preempted) as e:
        train_lib.train(config, tmp_path / "w")
    assert e.value.step is not None and e.value.step <= 2
    saved = [int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved == [e.value.step]
    monkeypatch.setattr(train_lib, "_load_data", real)
    summary = train_lib.train(config, tmp_path / "w")  # the re-run resumes and finishes
    assert summary["resumed_from_step"] == e.value.step and summary["steps_run"] == 40
