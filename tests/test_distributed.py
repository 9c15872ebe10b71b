"""Multi-host data parallelism on one machine: 2 processes on loopback with CPU collectives
(gloo) train the same tiny config as 1 process with 2 devices, and reach the same losses."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")
CODE = (
    "import sys; from jtl import config as c; from jtl.run import train as t; "
    f"cfg=c.load_config('{TINY}:steps=8', ['log_every=1', 'optim.name=\"momentum\"', "
    "'optim.lr=0.05', 'eval_every=4', 'checkpoint_every=4']); t.train(cfg, sys.argv[1])"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(workdir: Path) -> np.ndarray:
    recs = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in recs if r["split"] == "train"])


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    single = tmp_path / "single"
    out = subprocess.run(
        [sys.executable, "-c", CODE, str(single)],
        env={**base, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]

    multi = tmp_path / "multi"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CODE, str(multi)],
            env={
                **base,
                "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
                "JTL_DISTRIBUTED": "1",
                "JTL_COORDINATOR": f"127.0.0.1:{port}",
                "JTL_NUM_PROCESSES": "2",
                "JTL_PROCESS_ID": str(i),
            },
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        try:
            _, err = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
    summary = json.loads((multi / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["devices"] == 2
    np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-4, atol=1e-6)
    single_summary = json.loads((single / "summary.json").read_text())
    assert summary["test_accuracy"] == pytest.approx(single_summary["test_accuracy"], abs=1e-6)
