"""`jtl study --parallel N` on persistent workers (jtl.study.workers): the same results as one
fresh process per cell, failures and dead workers reported cell by cell, SIGTERM checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ml_collections as mlc
import numpy as np
import pytest

from jtl import study as study_lib
from jtl.runtime.preemption import EXIT_CODE
from jtl.study import workers as workers_lib
from tests.helpers import saved_weights

ROOT = Path(__file__).resolve().parent.parent
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
}
COMPARED = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "best_step", "temperature")


def _study() -> mlc.ConfigDict:
    s = study_lib.study_defaults()
    s.name = "workers"
    s.cell_config = "configs/transfer.py"
    s.sources = mlc.ConfigDict(
        {"tiny": {"kind": "train", "config": "configs/tiny.py:steps=10,model=cnn_small"}}
    )
    s.targets = mlc.ConfigDict({"digits": "target=digits,model=cnn_small,width=1.0,batch=32"})
    s.strategies = ("scratch", "finetune_full", "lp_ft")
    s.sizes = ("5",)
    s.seeds = (0,)
    s.steps = 12
    s.overrides = ("eval_every=6", "log_every=6", "checkpoint_every=6")
    s.advise_sample = 0
    study_lib.validate(s)
    return s


def test_workers_match_a_fresh_process_per_cell_bit_for_bit(tmp_path, monkeypatch):
    """Two workers run three cells (one of them runs two in a row): every number and every
    saved weight equals what a fresh `jtl train` process gives for the same cell."""
    monkeypatch.setenv("XLA_FLAGS", ENV["XLA_FLAGS"])  # the workers' device count = the fresh
    s = _study()
    root = tmp_path / "study"
    cells = study_lib.expand(s, root)
    assert len(cells) == 3
    study_lib.prepare_sources(s, root)
    clock = study_lib.StudyClock(root)
    clock.start()
    saved = []  # timing.json as each tick left it: saved per cell, not only at the end
    real_tick = study_lib.StudyClock.tick

    def tick(self, cells_done=0):
        real_tick(self, cells_done)
        saved.append(json.loads((root / "timing.json").read_text())["runs"][0]["cells_run"])

    monkeypatch.setattr(study_lib.StudyClock, "tick", tick)
    ran, failed = study_lib.run_cells(cells, root, parallel=2, clock=clock)
    assert (ran, failed) == (3, [])
    assert saved == [1, 2, 3]
    assert sorted(p.name for p in (root / "workers").iterdir()) == ["worker0.log", "worker1.log"]
    for cell in cells:
        fresh = tmp_path / "fresh" / cell.id
        cmd = [*cell.command(root, f"{sys.executable} -m jtl.commands.cli")]
        cmd[cmd.index("--workdir") + 1] = str(fresh)
        out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        a = json.loads((cell.workdir(root) / "summary.json").read_text())
        b = json.loads((fresh / "summary.json").read_text())
        assert {k: a.get(k) for k in COMPARED} == {k: b.get(k) for k in COMPARED}, cell.id
        wa, wb = saved_weights(cell.workdir(root), 12), saved_weights(fresh, 12)
        assert wa.keys() == wb.keys()
        for k in wa:
            np.testing.assert_array_equal(wa[k], wb[k], err_msg=f"{cell.id} {k}")
        log = (cell.workdir(root) / "train.log").read_text()
        assert "Finished: test accuracy" in log  # each cell's output went to its own log


def _train(workdir: Path, *extra: str) -> list[str]:
    tiny = str(ROOT / "configs" / "tiny.py")
    return ["train", "--config", f"{tiny}:steps=4", "--workdir", str(workdir), *extra]


def test_a_failed_cell_gets_its_one_line_and_the_next_cell_a_fresh_worker(tmp_path):
    results: list[tuple[str, int]] = []
    jobs = [
        ("bad", _train(tmp_path / "bad", "--config.no_such_field=1"), tmp_path / "bad.log"),
        ("good", _train(tmp_path / "good"), tmp_path / "good.log"),
    ]
    with workers_lib.WorkerPool(1, ENV, tmp_path / "workers") as pool:
        pool.run(jobs, lambda job, rc: results.append((job, rc)) or True, lambda: False)
        assert pool.workers and pool.workers[0].proc.poll() is None  # the fresh one serves on
    assert results == [("bad", 2), ("good", 0)]
    line = (tmp_path / "bad.log").read_text().strip().splitlines()[-1]
    assert line.startswith("jtl: error: ") and "no_such_field" in line
    assert (tmp_path / "good" / "summary.json").exists()
    # The failed cell's worker exited; the good cell ran on a second one.
    assert sorted(p.name for p in (tmp_path / "workers").iterdir()) == [
        "worker0.log",
        "worker1.log",
    ]


def test_workers_are_retired_after_their_cell_quota_and_when_found_dead_while_idle(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(workers_lib, "CELLS_PER_WORKER", 2)
    results: list[tuple[str, int]] = []
    jobs = [(n, _train(tmp_path / n), tmp_path / f"{n}.log") for n in ("a", "b", "c")]
    with workers_lib.WorkerPool(1, ENV, tmp_path / "workers") as pool:
        pool.run(jobs, lambda job, rc: results.append((job, rc)) or True, lambda: False)
        assert len(pool.workers) == 1 and pool.started == 2  # a, b on one; c on a fresh one
        pool.workers[0].proc.send_signal(signal.SIGKILL)  # dies while idle
        pool.workers[0].proc.wait()
        more = [("d", _train(tmp_path / "d"), tmp_path / "d.log")]
        pool.run(more, lambda job, rc: results.append((job, rc)) or True, lambda: False)
        assert pool.started == 3  # the dead one was retired, not handed the cell
    assert results == [("a", 0), ("b", 0), ("c", 0), ("d", 0)]


def test_closing_busy_workers_checkpoints_their_cells_under_one_deadline(tmp_path):
    """The study ending under running cells (an exception, a second Ctrl-C): every busy worker
    gets SIGTERM at once, so each cell checkpoints, and no worker waits for another."""
    ws = [workers_lib.Worker(ENV, tmp_path / f"worker{i}.log") for i in range(2)]
    runs = [tmp_path / f"run{i}" for i in range(2)]
    for w, run in zip(ws, runs, strict=True):
        w.start(run.name, _train(run, "--config.total_steps=100000"), tmp_path / f"{run.name}.log")
    deadline = time.time() + 120
    while time.time() < deadline and not all(_step(r) >= 5 for r in runs):
        time.sleep(0.1)
    t = time.monotonic()
    workers_lib.close_all(ws, timeout=100)
    assert time.monotonic() - t < 60
    for w, run in zip(ws, runs, strict=True):
        assert w.proc.returncode == 0  # it reported the preempted cell, then exited
        assert any(p.name.isdigit() for p in (run / "checkpoints").iterdir())


def test_a_worker_that_dies_mid_cell_is_that_cells_failure(tmp_path):
    w = workers_lib.Worker(ENV, tmp_path / "worker.log")
    try:
        w.start("cell", _train(tmp_path / "run", "--config.total_steps=100000"), tmp_path / "log")
        w.proc.send_signal(signal.SIGKILL)
        assert w.result() == workers_lib.DIED
    finally:
        w.close()


def _step(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    return max(
        (json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip()), default=0
    )


def test_sigterm_to_a_parallel_study_checkpoints_its_cells_and_the_rerun_resumes(tmp_path):
    config = tmp_path / "study.py"
    config.write_text(
        "import ml_collections as mlc\n"
        "from jtl.study import study_defaults\n"
        "def get_config(arg=None):\n"
        "    s = study_defaults()\n"
        "    s.name = 'sigterm'\n"
        "    s.cell_config = 'configs/tiny.py'\n"
        "    s.targets = mlc.ConfigDict({'digits': 'steps=2000'})\n"
        "    s.strategies = ('scratch',)\n"
        "    s.sizes = ('full',)\n"
        "    s.seeds = (0, 1, 2)\n"
        "    s.steps = 2000\n"
        "    s.overrides = ('eval_every=1000', 'log_every=5', 'checkpoint_every=5000')\n"
        "    s.advise_sample = 0\n"
        "    return s\n"
    )
    cmd = [sys.executable, "-m", "jtl.commands.cli", "study", "--config", str(config),
           "--workdir", str(tmp_path / "s"), "--parallel", "2"]  # fmt: skip
    env = {k: v for k, v in ENV.items() if k != "XLA_FLAGS"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    runs = lambda: sorted((tmp_path / "s" / "cells").glob("digits/scratch/full/*"))  # noqa: E731
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if sum(_step(r) >= 10 for r in runs()) == 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_CODE, err[-2000:]
    assert "preempted" in err.strip().splitlines()[-1]
    started = [r for r in runs() if _step(r) > 0]
    assert len(started) == 2  # 3 cells on 2 workers: the third never trained after SIGTERM
    timing = json.loads((tmp_path / "s" / "timing.json").read_text())  # the time it ran is kept
    assert len(timing["runs"]) == 1 and timing["runs"][0]["seconds"] > 1
    assert timing["runs"][0]["cells_run"] == 0
    for r in started:  # both cells stopped at a step of their own, checkpointed there
        steps = [int(p.name) for p in (r / "checkpoints").iterdir() if p.name.isdigit()]
        assert steps and 10 <= max(steps) < 2000 and not (r / "summary.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    progress = [x for x in again.stdout.splitlines() if x.startswith("[study] ")]
    assert [x.split()[1] for x in progress[:3]] == ["1/3", "2/3", "3/3"]  # a line per cell
    assert all(" done (ETA " in x for x in progress[:3]) and "(ETA 0h00" in progress[2]
    assert len(runs()) == 3
    timing = json.loads((tmp_path / "s" / "timing.json").read_text())
    assert [r["cells_run"] for r in timing["runs"]] == [0, 3]
    assert timing["wall_time_s"] == pytest.approx(sum(r["seconds"] for r in timing["runs"]))
    for r in runs():
        s = json.loads((r / "summary.json").read_text())
        assert s["steps_run"] == 2000
        assert ((s.get("resumed_from_step") or 0) >= 10) == (r in started)
