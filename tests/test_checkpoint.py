"""Orbax checkpoints: weight import with key reports, no silent partial loads, no overwrites."""

import numpy as np
import pytest

from jtl.weights import checkpoint as ckpt


def _vars(head_classes=10, extra=False):
    rng = np.random.default_rng(0)
    params = {
        "backbone": {"stem": {"kernel": rng.normal(size=(3, 3, 1, 4)).astype(np.float32)}},
        "head": {
            "kernel": rng.normal(size=(4, head_classes)).astype(np.float32),
            "bias": np.zeros(head_classes, np.float32),
        },
    }
    if extra:
        params["backbone"]["block9"] = {"kernel": np.ones((2, 2), np.float32)}
    stats = {"backbone": {"stem": {"mean": rng.normal(size=(4,)).astype(np.float32)}}}
    return {"params": params, "batch_stats": stats}


def test_save_and_load_roundtrip(tmp_path):
    src = _vars()
    ckpt.save_variables(tmp_path / "imp", src, {"model": "toy"})
    assert (tmp_path / "imp" / "import.json").exists()
    target = _vars()
    target = {
        "params": {
            "backbone": {"stem": {"kernel": np.zeros((3, 3, 1, 4), np.float32)}},
            "head": {"kernel": np.zeros((4, 10), np.float32), "bias": np.ones(10, np.float32)},
        },
        "batch_stats": {"backbone": {"stem": {"mean": np.zeros(4, np.float32)}}},
    }
    out, report = ckpt.load_variables(tmp_path / "imp", target, exclude=())
    np.testing.assert_array_equal(
        out["params"]["backbone"]["stem"]["kernel"], src["params"]["backbone"]["stem"]["kernel"]
    )
    np.testing.assert_array_equal(
        out["batch_stats"]["backbone"]["stem"]["mean"],
        src["batch_stats"]["backbone"]["stem"]["mean"],
    )
    assert report.source_meta["model"] == "toy"
    assert not report.missing and not report.unexpected and not report.mismatched


def test_mismatched_head_errors_then_succeeds_when_excluded(tmp_path):
    ckpt.save_variables(tmp_path / "src", _vars(head_classes=10), {})
    target = _vars(head_classes=3)
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"params/head/kernel.*\(4, 10\)"):
        ckpt.load_variables(tmp_path / "src", target, exclude=())
    out, report = ckpt.load_variables(tmp_path / "src", target, exclude=("head/.*",))
    # The excluded head keeps the target's fresh init; the backbone comes from the checkpoint.
    np.testing.assert_array_equal(
        out["params"]["head"]["kernel"], target["params"]["head"]["kernel"]
    )
    assert "params/head/kernel" in report.excluded
    assert "params/backbone/stem/kernel" in report.loaded


def test_missing_and_unexpected_keys_are_reported(tmp_path):
    ckpt.save_variables(tmp_path / "src", _vars(extra=True), {})
    with pytest.raises(ckpt.CheckpointMismatchError, match="(?s)unexpected.*block9"):
        ckpt.load_variables(tmp_path / "src", _vars(), exclude=())
    ckpt.save_variables(tmp_path / "src2", _vars(), {})
    with pytest.raises(ckpt.CheckpointMismatchError, match="(?s)missing.*block9"):
        ckpt.load_variables(tmp_path / "src2", _vars(extra=True), exclude=())
    out, report = ckpt.load_variables(tmp_path / "src2", _vars(extra=True), strict=False)
    assert report.missing == ["params/backbone/block9/kernel"]
    np.testing.assert_array_equal(out["params"]["backbone"]["block9"]["kernel"], np.ones((2, 2)))


def test_save_never_overwrites(tmp_path):
    ckpt.save_variables(tmp_path / "x", _vars(), {"first": True})
    before = sorted(p.name for p in (tmp_path / "x").rglob("*"))
    with pytest.raises(FileExistsError, match="nothing was written"):
        ckpt.save_variables(tmp_path / "x", _vars(), {"first": False})
    assert sorted(p.name for p in (tmp_path / "x").rglob("*")) == before


def test_no_checkpoint_gives_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="jtl import"):
        ckpt.load_variables(tmp_path, _vars())
