"""Remote (gs://) workdirs through etils.epath, without any network.

`fake_gcs` redirects `gs://bucket/...` to a local directory at the epath backend level and, like
an object store, refuses appends; everything above the backend (the trainer, MetricWriter) sees
real `gs://` paths.
"""

import json
from pathlib import Path

import pytest
from etils import epath
from etils.epath import testing as epath_testing

from jtl import config as config_lib
from jtl.evaluation.metrics import MetricWriter, read_metrics
from jtl.runtime.paths import as_path, is_remote

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")


@pytest.fixture
def fake_gcs(tmp_path):
    root = tmp_path / "gcs"
    root.mkdir()

    def local(path):
        s = str(path)
        return str(root / s[len("gs://") :]) if s.startswith("gs://") else s

    def wrap(name):
        def fn(original, path, *args, **kwargs):
            if name == "open" and str(path).startswith("gs://") and "a" in args[0]:
                raise OSError("object stores cannot append")
            if name == "open" and "w" in args[0]:  # no directories in an object store
                Path(local(path)).parent.mkdir(parents=True, exist_ok=True)
            args = tuple(local(a) if isinstance(a, str | epath.Path) else a for a in args)
            return original(local(path), *args, **kwargs)

        return fn

    names = ("open", "exists", "isdir", "listdir", "glob", "makedirs", "mkdir", "remove")
    names += ("rename", "replace", "rmtree", "stat", "walk", "copy")
    with epath_testing.mock_epath(**{n: wrap(n) for n in names}):
        yield root


@pytest.mark.parametrize("uri", ["gs://bucket/runs/a", "s3://bucket/x/", "gs://b"])
def test_remote_workdir_string_is_kept(uri):
    p = as_path(uri)
    assert isinstance(p, epath.Path) and is_remote(p)
    assert str(p) == uri.rstrip("/")
    assert str(p / "checkpoints") == uri.rstrip("/") + "/checkpoints"


def test_local_workdir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = as_path("runs/a")
    assert isinstance(p, epath.Path) and not is_remote(p)
    assert str(p) == str(tmp_path / "runs" / "a")


def test_checkpoint_dirs_keep_gs_uris(monkeypatch):
    from jtl.weights import checkpoint as ckpt

    seen = {}

    class FakeManager:
        def __init__(self, directory, **kwargs):
            seen["dir"] = directory

    monkeypatch.setattr(ckpt.ocp, "CheckpointManager", FakeManager)
    run = ckpt.RunCheckpoints("gs://bucket/run/checkpoints")
    assert str(run.directory) == "gs://bucket/run/checkpoints"
    assert str(seen["dir"]) == "gs://bucket/run/checkpoints"


def test_metrics_on_remote_workdir_buffer_rewrite_and_truncate(fake_gcs):
    wd = "gs://bucket/run"
    w = MetricWriter(wd, flush_every_s=1e9)
    assert w.remote and w._tb is None  # TensorBoard stays local-only
    w.write(1, "train", loss=1.0)
    w.write(2, "train", loss=0.5)
    assert read_metrics(wd) == []  # buffered: no append on an object store
    w.flush()
    assert [r["step"] for r in read_metrics(wd)] == [1, 2]
    w.write(3, "train", loss=0.25)
    w.close()
    assert [r["step"] for r in read_metrics(wd)] == [1, 2, 3]
    assert (fake_gcs / "bucket" / "run" / "metrics.jsonl").exists()
    assert not (fake_gcs / "bucket" / "run" / "tensorboard").exists()

    resumed = MetricWriter(wd, flush_every_s=1e9)  # a resumed run from a step-2 checkpoint
    resumed.truncate_after(2)
    assert [r["step"] for r in read_metrics(wd)] == [1, 2]
    resumed.write(3, "train", loss=0.3)
    resumed.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(wd)] == [(1, 1.0), (2, 0.5), (3, 0.3)]


def test_metrics_on_remote_workdir_flush_on_time(fake_gcs):
    w = MetricWriter("gs://bucket/run", flush_every_s=0.0)
    w.write(1, "train", loss=1.0)
    assert [r["step"] for r in read_metrics("gs://bucket/run")] == [1]


def test_local_metrics_through_epath_append_and_truncate(tmp_path):
    w = MetricWriter(tmp_path, tensorboard=False)
    assert not w.remote
    for s in (1, 2, 3):
        w.write(s, "train", loss=float(s))
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]  # appended at once
    w.truncate_after(2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
    """tensorboardX imports torch when installed (4.4 s a process here): jtl's writer keeps it
    out, and a later `import torch` still works. In a fresh process: tests may load torch."""
    import subprocess
    import sys

    code = (
        "import sys, pathlib\n"
        "from jtl.evaluation.metrics import MetricWriter\n"
        f"w = MetricWriter(pathlib.Path({str(tmp_path)!r}))\n"
        "w.write(1, 'val', loss=0.5)\n"
        "w.flush()\n"
        "assert 'torch' not in sys.modules\n"
        "import importlib.util\n"
        "if importlib.util.find_spec('torch'):\n"  # `make test-fast` has no torch
        "    import torch\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_train_on_gs_workdir_writes_through_epath(fake_gcs, monkeypatch):
    """The trainer end to end on `gs://bucket/run` (checkpoints stubbed: orbax is its own I/O)."""
    from jtl.run import train as train_lib

    dirs = []

    class NoCheckpoints:
        def __init__(self, directory, **kwargs):
            self.directory = directory
            dirs.append(str(directory))

        def latest_step(self):
            return None

        def restore_usable(self, abstract_for):
            return 0, None, {}

        def should_save(self, step):
            return False

        def save(self, *a):
            pass

        def wait(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(train_lib.ckpt, "RunCheckpoints", NoCheckpoints)
    cfg = config_lib.load_config(TINY, ["total_steps=4", "log_every=2", "eval_every=4"])
    summary = train_lib.train(cfg, "gs://bucket/run")
    assert dirs == ["gs://bucket/run/checkpoints"]
    run = fake_gcs / "bucket" / "run"
    for name in ("config.json", "metrics.jsonl", "summary.json", "param_groups.txt"):
        assert (run / name).exists(), name
    assert json.loads((run / "summary.json").read_text())["steps"] == summary["steps"] == 4
    assert [r["step"] for r in read_metrics("gs://bucket/run") if r["split"] == "train"] == [2, 4]
    assert not (Path.cwd() / "gs:").exists()
