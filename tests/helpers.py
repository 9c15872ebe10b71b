"""Helpers shared by test modules (not fixtures: plain functions)."""

from pathlib import Path
from typing import Any

from jtl.weights import checkpoint as ckpt


def saved_weights(workdir: Path, step: int) -> dict:
    """Flat {path: array} of the params and batch stats saved at `step` in a run's checkpoints."""
    import orbax.checkpoint as ocp

    mgr = ocp.CheckpointManager(
        workdir / "checkpoints", item_handlers={"state": ocp.StandardCheckpointHandler()}
    )
    state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    mgr.close()
    return ckpt.flatten({"params": state["params"], "batch_stats": state["batch_stats"]})


def tiny_study_cells(root: Path, seeds: tuple[int, ...] = (0,)) -> list:
    """Expanded cells of a 4-step scratch study on digits (5/class): for collect/report tests."""
    import ml_collections as mlc

    from jtl import study as study_lib

    s = study_lib.study_defaults()
    s.name = "t"
    s.cell_config = "configs/transfer.py"
    s.targets = mlc.ConfigDict({"digits": "target=digits,model=cnn_small,width=1.0,batch=32"})
    s.strategies = ("scratch",)
    s.kfold.folds = 0
    s.sizes = ("5",)
    s.seeds = seeds
    s.steps = 4
    s.advise_sample = 0
    study_lib.validate(s)
    return study_lib.expand(s, root)


def fake_summary(**fields: Any) -> dict[str, Any]:
    """A summary.json that follows jtl.evaluation.run_summary's schema, with `fields` overriding."""
    base = {
        "dataset": "digits",
        "model": "cnn_small",
        "strategy": "scratch",
        "seed": 0,
        "train_examples": 50,
        "num_classes": 10,
        "test_accuracy": 0.5,
        "val_accuracy": 0.5,
        "steps": 4,
        "steps_run": 4,
        "diverged": False,
        "wall_time_s": 1.0,
    }
    return {**base, **fields}


def interrupted_then_resumed(monkeypatch: Any, config: Any, workdir: Path, at_step: int) -> dict:
    """Trains `config` in `workdir`, interrupts it (a KeyboardInterrupt, like a preemption)
    right after the train metrics of `at_step` are written, resumes it; returns the summary."""
    import pytest

    from jtl.run import train as train_lib

    real_write = train_lib.MetricWriter.write

    def crash(self: Any, step: int, split: str, **kw: Any) -> None:
        real_write(self, step, split, **kw)
        if step == at_step and split == "train":
            raise KeyboardInterrupt("simulated preemption")

    monkeypatch.setattr(train_lib.MetricWriter, "write", crash)
    with pytest.raises(KeyboardInterrupt):
        train_lib.train(config, workdir)
    monkeypatch.setattr(train_lib.MetricWriter, "write", real_write)
    return train_lib.train(config, workdir)


def assert_same_saved_weights(workdir_a: Path, workdir_b: Path, step: int) -> list[str]:
    """Bit-identical params and batch stats at `step` in two runs; returns the keys."""
    import numpy as np

    a, b = saved_weights(workdir_a, step), saved_weights(workdir_b, step)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    return list(a)
