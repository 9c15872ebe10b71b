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


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def test_tpu_vm_reruns_a_preempted_command_and_recreates_a_lost_vm(tmp_path):
    """Exit 75 (jtl checkpointed on SIGTERM) re-runs the command on the same VM; an ssh drop
    (255) on a VM no longer READY re-creates and re-installs it first."""
    log = tmp_path / "calls"
    count = tmp_path / "runs"
    _fake(
        tmp_path,
        "gcloud",
        f"""echo "$*" >> {log}
case "$*" in
  *describe*) [[ $(cat {count}) == 1 ]] && echo READY || echo PREEMPTED ;;
  *JTL_DISTRIBUTED*) n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $n > {count}
    [[ $n == 1 ]] && exit 75; [[ $n == 2 ]] && exit 255; exit 0 ;;
esac
""",
    )
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    out = subprocess.run(
        ["bash", str(LAUNCH / "tpu_vm.sh"), "--name", "pod", "--zone", "z", "--repo", "u",
         "--", "train", "--config", "c.py"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert sum("JTL_DISTRIBUTED" in c for c in calls) == 3
    assert sum(c.startswith("compute tpus tpu-vm create") for c in calls) == 2  # re-created once
    assert out.stderr.count("preempted (exit") == 2


def test_slurm_requeues_on_preemption(tmp_path):
    log = tmp_path / "calls"
    _fake(tmp_path, "srun", "exit 75\n")
    _fake(tmp_path, "scontrol", f'echo "$*" >> {log}\n')
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SLURM_JOB_ID": "42"}
    out = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sbatch"), "train", "--config", "c.py"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 75
    assert log.read_text().split() == ["requeue", "42"]
    text = (LAUNCH / "slurm.sbatch").read_text()
    assert "#SBATCH --requeue" in text and "#SBATCH --signal=TERM@120" in text


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}  # fmt: skip
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         env=env, check=True)  # fmt: skip
    return out.stdout.strip()


def test_study_runs_from_a_pinned_worktree_and_resumes_there(tmp_path):
    """A new study runs the committed code and config from a worktree at HEAD; after HEAD
    moves, the same command resumes from that worktree; uncommitted code and a lost worktree
    are refused, and a study that never started is pinned afresh."""
    repo = tmp_path / "repo"
    for d in ("launch", "jtl", "configs"):
        (repo / d).mkdir(parents=True)
    (repo / "jtl" / "code.py").write_text("v = 1\n")
    (repo / "configs" / "s.py").write_text("c = 1\n")
    shutil.copy(LAUNCH / "study.sh", repo / "launch" / "study.sh")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "v1")
    first = _git(repo, "rev-parse", "HEAD")
    calls = tmp_path / "calls"  # the fake python records where it ran and with what
    _fake(tmp_path, "python", f'echo "$PWD|$PYTHONPATH|$(cat jtl/code.py)|$*" >> {calls}\n')
    env = {"PATH": "/usr/bin:/bin", "JTL_PYTHON": str(tmp_path / "python")}

    def study(
        *extra: str, dry: bool = False, config: str = "repo/configs/s.py:a=1"
    ) -> subprocess.CompletedProcess:
        flags = ["--dry-run", "--background"] if dry else []
        cmd = ["bash", str(repo / "launch" / "study.sh"), *flags, "--", "--config", config]
        return subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=60,
                              env=env, cwd=tmp_path)  # fmt: skip

    tree = repo / ".worktrees" / f"a-{first[:10]}"
    dry = study("--workdir", "runs/a", dry=True)  # prints, creates nothing
    assert dry.returncode == 0 and not (tmp_path / "runs").exists() and not tree.exists()
    lines = [x.strip() for x in dry.stdout.strip().splitlines()]
    assert lines[0].startswith("git -C ") and lines[0].endswith(f"--detach {tree} {first}")
    assert lines[-1].startswith(f"nohup env PYTHONPATH={tree} {tmp_path}/python -m jtl")
    assert lines[-1].endswith(f">> {tmp_path}/runs/a/study.log 2>&1 &")
    assert study("--workdir", "runs/a").returncode == 0
    workdir = tmp_path / "runs" / "a"
    assert (workdir / "worktree").read_text().split() == [first, str(tree)]
    (workdir / "study.json").write_text("{}")  # the study started (jtl study writes this)
    (repo / "jtl" / "code.py").write_text("v = 2\n")  # main moves on: uncommitted, then HEAD
    out = study("--workdir", "runs/b")
    assert (
        out.returncode == 2 and "uncommitted" in out.stderr and not (tmp_path / "runs/b").exists()
    )
    _git(repo, "commit", "-qam", "v2")
    second = _git(repo, "rev-parse", "HEAD")
    assert study("--workdir", "runs/a").returncode == 0  # the resume: still v1
    assert study("--workdir=runs/c").returncode == 0  # a new study: v2
    (repo / "jtl" / "code.py").write_text("v = 3\n")
    _git(repo, "commit", "-qam", "v3")
    third = _git(repo, "rev-parse", "HEAD")
    assert study("--workdir=runs/c").returncode == 0  # never started (no study.json): v3
    assert (tmp_path / "runs/c/worktree").read_text().split()[0] == third
    lines = calls.read_text().splitlines()
    assert len(lines) == 4
    want = f"-m jtl.commands.cli study --config configs/s.py:a=1 --workdir {workdir}"
    assert lines[0] == lines[1] == f"{tree}|{tree}|v = 1|{want}"  # the worktree's own config
    assert lines[2].startswith(f"{repo}/.worktrees/c-{second[:10]}|") and "|v = 2|" in lines[2]
    assert lines[3].startswith(f"{repo}/.worktrees/c-{third[:10]}|") and "|v = 3|" in lines[3]
    assert lines[3].endswith(f"--workdir={tmp_path}/runs/c")
    (repo / "configs" / "s.py").write_text("c = 2\n")  # main's config edited: a resume
    assert study("--workdir", "runs/a").returncode == 0  # still runs the worktree's copy
    assert calls.read_text().splitlines()[-1] == lines[0]
    assert study("--workdir", "runs/e").returncode == 2  # a new study refuses it uncommitted
    _git(repo, "checkout", "-q", "--", "configs/s.py")
    (repo / "other.py").write_text("c = 1\n")  # a config outside configs/, not committed
    out = study("--workdir", "runs/e", config="repo/other.py")
    assert out.returncode == 2 and "other.py is not in commit" in out.stderr
    assert not (tmp_path / "runs" / "e").exists()
    shutil.rmtree(tree)
    out = study("--workdir", "runs/a")
    assert out.returncode == 2 and "is gone" in out.stderr and "worktree prune" in out.stderr
    for bad in (["--workdir"], ["--workdir="], []):
        out = study(*bad)
        assert out.returncode == 2 and "launch/study.sh: error:" in out.stderr, bad
    (tmp_path / "runs" / "d").mkdir()
    (tmp_path / "runs" / "d" / "study.json").write_text("{}")
    (tmp_path / "runs" / "d" / "worktree").write_text("\n")
    out = study("--workdir", "runs/d")
    assert out.returncode == 2 and "is not 'COMMIT PATH'" in out.stderr
