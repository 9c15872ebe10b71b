"""Launch scripts: their dry runs print exactly the commands they would run."""

import shutil
import subprocess
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parent.parent / "launch"


def _dry(*args: str) -> list[str]:
    out = subprocess.run(["bash", *args], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip().splitlines()


def test_local_single_and_multi_process():
    (line,) = _dry(
        str(LAUNCH / "local.sh"), "--dry-run", "--", "--config", "c.py", "--workdir", "w"
    )
    assert line.split()[-5:] == ["train", "--config", "c.py", "--workdir", "w"]
    lines = _dry(
        str(LAUNCH / "local.sh"),
        "--dry-run",
        "--processes",
        "2",
        "--port",
        "1234",
        "--",
        "--config",
        "c.py",
        "--workdir",
        "w",
    )
    assert len(lines) == 2
    for i, line in enumerate(lines):
        assert "JTL_DISTRIBUTED=1" in line and "JTL_COORDINATOR=127.0.0.1:1234" in line
        assert f"JTL_PROCESS_ID={i}" in line and "JTL_NUM_PROCESSES=2" in line


def test_tpu_vm_dry_run():
    lines = _dry(
        str(LAUNCH / "tpu_vm.sh"),
        "--dry-run",
        "--name",
        "pod",
        "--zone",
        "z1",
        "--delete",
        "--",
        "train",
        "--config",
        "c.py",
        "--workdir",
        "w",
    )
    # This checkout travels as a wheel: built here, copied to every worker, installed there.
    assert lines[0].startswith("python3 -m pip wheel -q --no-deps -w ")
    assert lines[0].rstrip().endswith(str(LAUNCH.parent))
    assert lines[1].startswith("gcloud compute tpus tpu-vm create pod --zone=z1")
    assert lines[1].rstrip().endswith("--version=tpu-ubuntu2204-base")
    assert lines[2].startswith("gcloud compute tpus tpu-vm scp ") and "--worker=all" in lines[2]
    assert "/jtl-0.1.0-py3-none-any.whl pod:\\~/" in lines[2]
    assert "--worker=all" in lines[3] and "jax\\[tpu\\]" in lines[3]
    assert "jtl-0.1.0-py3-none-any.whl" in lines[3] and "clone" not in lines[3]
    assert "JTL_DISTRIBUTED=1" in lines[4] and "jtl\\ train\\ --config\\ c.py" in lines[4]
    assert lines[5].startswith("gcloud compute tpus tpu-vm delete pod")


def test_tpu_vm_repo_option_clones_instead():
    lines = _dry(
        str(LAUNCH / "tpu_vm.sh"), "--dry-run", "--name", "pod", "--zone", "z1",
        "--repo", "https://example.org/jtl.git", "--", "train", "--config", "c.py",
    )  # fmt: skip
    assert len(lines) == 3 and "tpu-vm create" in lines[0]
    assert "git\\ clone\\ https://example.org/jtl.git" in lines[1]


def test_slurm_dry_run():
    (line,) = _dry(str(LAUNCH / "slurm.sbatch"), "--dry-run", "train", "--config", "c.py")
    assert line.startswith("srun --kill-on-bad-exit=1 env JTL_DISTRIBUTED=1")
    assert line.rstrip().endswith("train --config c.py")


def test_bad_usage_fails():
    out = subprocess.run(["bash", str(LAUNCH / "tpu_vm.sh"), "--dry-run"], capture_output=True)
    assert out.returncode == 2


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean():
    scripts = [str(p) for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch")]
    subprocess.run(["shellcheck", *scripts], check=True)
