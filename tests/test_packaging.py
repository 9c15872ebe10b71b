"""A non-editable install carries the configs: studies and runs work from any directory."""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from jtl import config as config_lib

ROOT = Path(__file__).resolve().parents[1]


def test_relative_configs_resolve_from_the_install_data_dir(tmp_path, monkeypatch):
    installed = tmp_path / "prefix" / "share" / "jtl" / "configs" / "studies"
    installed.mkdir(parents=True)
    (installed / "x.py").write_text("def get_config():\n    return None\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sysconfig, "get_path", lambda _: str(tmp_path / "prefix"))
    assert config_lib.resolve_config_path("configs/studies/x.py") == installed / "x.py"
    # The checkout still wins over an install (editable development).
    assert config_lib.resolve_config_path("configs/tiny.py") == ROOT / "configs" / "tiny.py"
    with pytest.raises(FileNotFoundError, match="configs/nope.py"):
        config_lib.resolve_config_path("configs/nope.py")


@pytest.mark.slow
def test_wheel_install_runs_a_study_config_and_a_training_run_from_anywhere(tmp_path):
    """Build the wheel, install it (no editable link) into a fresh venv, use it from /tmp."""
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = tmp_path / "src"
    for item in ("jtl", "configs", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (ROOT / item).is_dir() else shutil.copy
        copy(ROOT / item, src / item)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("jtl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith("data/share/jtl/configs/studies/mnist_source.py") for n in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # The dependencies come from this environment's site-packages (a path entry, so its
    # editable-install hook does not run); jtl itself only from the wheel.
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = [p for p in site.getsitepackages() if "site-packages" in p]
    Path(purelib, "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run(
        # --ignore-installed: without it pip would first uninstall this environment's jtl.
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-warn-script-location",
         "--ignore-installed", "--prefix", str(venv), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    code = textwrap.dedent(
        """
        import jtl, sys
        from pathlib import Path
        assert "site-packages" in jtl.__file__, jtl.__file__
        from jtl.study import expand, load_study
        study = load_study("configs/studies/mnist_source.py:quick")
        cells = expand(study, Path("runs/q"))
        assert cells and all(Path(c.spec.partition(":")[0]).is_file() for c in cells)
        from jtl.commands.cli import main
        sys.exit(main(["train", "--config", "configs/tiny.py:steps=4", "--workdir", "run"]))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = subprocess.run(
        [str(py), "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (work / "run" / "summary.json").is_file()
