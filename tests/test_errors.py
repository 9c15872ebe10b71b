"""The error contract: every known user error is one line `jtl: error: WHAT (HINT)`, exit 2.

Most cases call `jtl.commands.cli.main` in-process (fast); one subprocess checks the real program's
stderr and `--debug`. Data-set sanity errors (empty class folder, per_class, bad images) and
the study's handling of diverged cells are here too.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jtl import study as study_lib
from jtl.commands import cli
from jtl.data import registry
from jtl.runtime.errors import DataError, DivergedError, UserError, format_error
from jtl.study import run as study_run
from tests.helpers import fake_summary, tiny_study_cells

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")


def _main(capsys, *argv: str) -> tuple[int, list[str]]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("jtl: error:")]


def _assert_one_line(code: int, lines: list[str], *needles: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].endswith(")") and " (" in lines[0], lines[0]  # WHAT (HINT)
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_config_typo(capsys, tmp_path):
    code, lines = _main(
        capsys, "train", "--config", TINY, "--workdir", str(tmp_path), "--config.optim.lrr=1"
    )
    _assert_one_line(code, lines, "unknown config key 'optim.lrr'", "'lr'")
    code, lines = _main(capsys, "train", "--config", f"{TINY}:stepz=3", "--workdir", str(tmp_path))
    _assert_one_line(code, lines, "unknown config argument 'stepz'")
    code, lines = _main(capsys, "train", "--config", "configs/nope.py", "--workdir", str(tmp_path))
    _assert_one_line(code, lines, "config file 'configs/nope.py' not found")


def test_argparse_errors_are_one_line(capsys):
    code, lines = _main(capsys, "train", "--workdir", "x")
    _assert_one_line(code, lines, "the following arguments are required: --config")
    assert cli.main(["nocommand"]) == 2


def test_bad_strategy_and_unknown_dataset_leave_the_workdir_usable(capsys, tmp_path):
    wd = tmp_path / "run"
    code, lines = _main(
        capsys, "train", "--config", TINY, "--workdir", str(wd), "--config.strategy=bogus"
    )
    _assert_one_line(code, lines, "unknown strategy 'bogus'", "finetune_full")
    code, lines = _main(
        capsys, "train", "--config", TINY, "--workdir", str(wd), "--config.dataset=no_such_xyz"
    )
    _assert_one_line(code, lines, "unknown data set 'no_such_xyz'")
    # A start that failed before training pins nothing: the right config is not a "conflict".
    from jtl.run import train as train_lib

    train_lib._check_workdir(train_lib.as_path(wd), train_lib.config_lib.load_config(TINY))


def test_workdir_conflict(capsys, tmp_path):
    from jtl import config as config_lib

    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps(config_lib.to_dict(config_lib.load_config(TINY))))
    (wd / "summary.json").write_text("{}")
    code, lines = _main(capsys, "train", "--config", TINY, "--workdir", str(wd), "--config.seed=5")
    _assert_one_line(code, lines, "different config (differs in: seed)")
    assert (wd / "summary.json").read_text() == "{}"


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_unsafe_pickle_and_missing_weights(capsys, tmp_path):
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"w": _Evil(tmp_path / "pwned")}))
    out = tmp_path / "out"
    code, lines = _main(
        capsys, "import", "--from", str(path), "--model", "resnet18", "--out", str(out)
    )
    _assert_one_line(code, lines, "refusing to load global")
    assert not (tmp_path / "pwned").exists() and not out.exists()
    code, lines = _main(
        capsys, "import", "--from", str(tmp_path / "no.pth"), "--model", "resnet18", "--out", "x"
    )
    _assert_one_line(code, lines, "No such checkpoint file")


def test_predict_missing_and_non_image_file(capsys, tmp_path):
    code, lines = _main(
        capsys, "predict", "--checkpoint", str(tmp_path), "--image", str(tmp_path / "no.png")
    )
    _assert_one_line(code, lines, "No such file or directory", "no.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    code, lines = _main(capsys, "predict", "--checkpoint", str(tmp_path), "--image", str(text))
    _assert_one_line(code, lines, "notes.png", "image file")


def test_unwritable_workdir(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, lines = _main(capsys, "train", "--config", TINY, "--workdir", str(blocker / "run"))
    _assert_one_line(code, lines, str(blocker))


def test_error_format_and_exit_codes():
    line, code = format_error(UserError("bad thing\nsecond line", "do this"))
    assert (line, code) == ("jtl: error: bad thing; second line (do this)", 2)
    line, code = format_error(ZeroDivisionError("boom"))
    assert code == 1 and line.startswith("jtl: error: internal error: ZeroDivisionError: boom")
    assert "--debug" in line


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("JTL_DEBUG", "0")  # restored afterwards (--debug sets it to 1)
    args = ["train", "--config", TINY, "--workdir", str(tmp_path), "--config.optim.lrr=1"]
    with pytest.raises(KeyError, match="optim.lrr"):
        cli.main([*args, "--debug"])
    monkeypatch.setenv("JTL_DEBUG", "1")
    with pytest.raises(KeyError, match="optim.lrr"):
        cli.main(args)


def test_program_stderr_is_exactly_one_line(tmp_path):
    """The real program: nothing but the one line on stderr, exit 2; --debug: a traceback."""
    args = [
        sys.executable,
        "-m",
        "jtl.commands.cli",
        "train",
        "--config",
        TINY,
        "--workdir",
        str(tmp_path),
    ]
    out = subprocess.run([*args, "--config.optim.lrr=1"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [out.stderr.strip()] and out.stderr.startswith("jtl: error:")
    out = subprocess.run([*args, "--config.optim.lrr=1", "--debug"], capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" in out.stderr


def test_progress_lines_without_a_tty(tmp_path):
    """Under nohup or a log file: one line per log_every steps with loss, steps/s and ETA."""
    out = subprocess.run(
        [sys.executable, "-m", "jtl.commands.cli", "train", "--config", f"{TINY}:steps=20"]
        + ["--workdir", str(tmp_path / "run"), "--config.log_every=5"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if "steps/s" in line]
    assert len(lines) == 4, out.stderr[-3000:]
    assert re.search(
        r"step 5/20: loss \d+\.\d+, accuracy \d\.\d+, [\d.]+ steps/s, ETA \d+:\d\d", lines[0]
    )
    assert "step 20/20" in lines[-1]


# ----------------------------------------------------------------------------- data sanity


def _folder(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8), np.uint8)).save(root / name / f"{i}.png")
    return root


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = _folder(tmp_path / "imgs", {"cat": 4, "dog": 4, "empty": 0})
    with pytest.raises(DataError, match=r"class folder .*imgs/empty holds no images"):
        registry.load(f"folder:{root}", data_dir=tmp_path / "tfds")


def test_unreadable_images_error_or_skip(tmp_path):
    root = _folder(tmp_path / "imgs", {"cat": 6, "dog": 6})
    (root / "cat" / "bad1.png").write_bytes(b"\x89PNG broken")
    (root / "dog" / "bad2.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"2 unreadable image\(s\) in .*first: .*cat/bad1.png"):
        registry.load(f"folder:{root}", data_dir=tmp_path / "tfds")
    ds = registry.load(f"folder:{root}", data_dir=tmp_path / "tfds", skip_bad_images=True)
    assert len(ds.splits["train"]) + len(ds.splits["test"]) == 12
    assert sorted(Path(line.split("\t")[0]).name for line in ds.skipped_images) == [
        "bad1.png",
        "bad2.png",
    ]
    # Prepared once; a second load still knows what was skipped.
    again = registry.load(f"folder:{root}", data_dir=tmp_path / "tfds", skip_bad_images=True)
    assert again.skipped_images == ds.skipped_images


def test_per_class_beyond_the_data_is_an_error(tmp_path):
    from jtl import config as config_lib
    from jtl.data.target import TargetData

    config = config_lib.load_config(TINY, ["train_per_class=5000"])
    with pytest.raises(DataError, match="maximum available is 1[01][0-9]"):
        TargetData(config)


# ----------------------------------------------------------------------------- studies


def test_diverged_cells_are_listed_not_averaged(tmp_path, monkeypatch):
    cells = tiny_study_cells(tmp_path, seeds=(0, 1))
    assert len(cells) == 2
    ok, bad = cells
    for cell in cells:
        cell.workdir(tmp_path).mkdir(parents=True)
    (ok.workdir(tmp_path) / "summary.json").write_text(json.dumps(fake_summary()))
    (bad.workdir(tmp_path) / "summary.json").write_text(
        json.dumps(fake_summary(diverged=True, diverged_step=3, test_accuracy=None))
    )
    rows = study_lib.collect(cells, tmp_path)
    assert [r["cell"] for r in rows] == [ok.id]
    assert study_lib.diverged_cells(cells, tmp_path) == [f"{bad.id}: diverged at step 3"]

    def diverge(config, workdir):
        raise DivergedError("training diverged at step 3")

    monkeypatch.setattr(study_run, "run_train", diverge)
    (bad.workdir(tmp_path) / "summary.json").unlink()
    _, failed = study_lib.run_cells([bad], tmp_path)
    assert failed == []  # a diverged cell is a result, not a failure

    from jtl.report import build_report

    paths = build_report({"name": "t", "diverged_cells": ["c: diverged at step 3"]}, rows, tmp_path)
    md = paths["md"].read_text()
    assert "Diverged cells" in md and "c: diverged at step 3" in md


def test_background_write_failures_are_not_logged_twice(monkeypatch):
    """A failed async checkpoint write reaches jtl as one error line; asyncio's "Task exception
    was never retrieved" and orbax's own error logs for the same write are dropped (--debug
    keeps them), while other libraries' warnings still show."""
    import logging as pylogging

    from absl import logging

    from jtl.runtime.process import setup_logging

    monkeypatch.delenv("JTL_DEBUG", raising=False)
    setup_logging()
    handler = logging.get_absl_handler()

    def shown(name: str, level: int, path: str) -> bool:
        return bool(handler.filter(pylogging.LogRecord(name, level, path, 1, "m", None, None)))

    assert not shown("asyncio", pylogging.ERROR, "/usr/lib/asyncio/base_events.py")
    assert not shown("absl", pylogging.ERROR, "/x/orbax/checkpoint/serialization.py")
    assert shown("jax", pylogging.WARNING, "/x/jax/_src/xla_bridge.py")
    monkeypatch.setenv("JTL_DEBUG", "1")
    assert shown("asyncio", pylogging.ERROR, "/usr/lib/asyncio/base_events.py")


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--config.batch_size=0"], ["batch_size=0", "integer >= 1"]),
        (["--config.eval_every=0"], ["eval_every=0"]),
        (["--config.model.name=bogus"], ["unknown model", "cnn_small"]),
        (["--config.optim.lr=abc"], ["optim.lr='abc'", "expected float"]),
        (["--config.optim.lr=-1"], ["optim.lr=-1.0"]),
        (["--config.total_steps=1.5"], ["total_steps='1.5'", "expected int"]),
        (["--config.train_per_class=0.5"], ["train_per_class"]),
        (["--config.val_fraction=1.5"], ["val_fraction=1.5", "[0, 1)"]),
        (["--config.train_fraction=0"], ["train_fraction=0.0", "(0, 1]"]),
        (["--config.image_size=0"], ["image_size=0"]),
        (["--config.batch_size=-4"], ["batch_size=-4"]),
        (["--config.dataset=digits|spin(2)"], ["unknown transform 'spin'"]),
    ],
)
def test_the_first_hour_config_mistakes_are_one_line_before_anything_is_built(
    capsys, tmp_path, argv, needles
):
    workdir = tmp_path / "w"
    code, lines = _main(capsys, "train", "--config", TINY, "--workdir", str(workdir), *argv)
    _assert_one_line(code, lines, *needles)
    assert not workdir.exists()


def test_syntax_error_file_workdir_and_import_mistakes_are_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    code, lines = _main(capsys, "train", "--config", str(bad), "--workdir", str(tmp_path / "w"))
    _assert_one_line(code, lines, "syntax error at line 1")
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    code, lines = _main(capsys, "train", "--config", TINY, "--workdir", str(afile))
    _assert_one_line(code, lines, "is an existing file")
    assert afile.read_text() == "keep me"
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep").write_text("x")
    for model, needle in (("resnet18", "already exists"), ("bogus", "importable models")):
        args = ("import", "--from", str(afile), "--model", model, "--out", str(out))
        _assert_one_line(*_main(capsys, *args), needle)
    assert (out / "keep").read_text() == "x"


def test_study_report_on_an_empty_workdir_and_help_texts(capsys, tmp_path):
    spec = str(ROOT / "configs" / "studies" / "mnist_source.py") + ":quick"
    w = tmp_path / "nothing"
    code, lines = _main(capsys, "study", "--config", spec, "--workdir", str(w), "--only", "report")
    _assert_one_line(code, lines, "holds no study to report on")
    assert not w.exists()
    for argv, needles in (
        (["train", "--help"], ["--config.KEY=VALUE", "lp_ft", "cnn_small", "block_shuffle", "75"]),
        (["study", "--help"], ["transfer_bench", "mnist_source", "layer_transfer"]),
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 0
        text = capsys.readouterr().out
        for n in needles:
            assert n in text, n
