"""Converged budgets: the stall stop, the not-converged marking, epoch caps and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jtl.config import load_config
from jtl.run.early_stopping import EarlyStopping, resolve_budget

REPO = Path(__file__).resolve().parent.parent
# 10 examples per class of digits at batch 32: 3.125 steps per epoch, validated every epoch.
CONVERGE = ["train_per_class=10", "eval_every_epochs=1", "checkpoint_every=6"]


def _config(*overrides: str):
    return load_config(f"{REPO}/configs/tiny.py", [*CONVERGE, *overrides])


def test_min_delta_and_patience_without_training():
    state = {"params": {"w": 1.0}, "batch_stats": {}}
    es = EarlyStopping(patience=2, min_delta=0.05)
    assert not es.update(1, 0.50, state)  # the first evaluation is the best so far
    assert not es.update(2, 0.54, state)  # +0.04 is not more than min_delta: 1 stall
    assert not es.update(3, 0.58, state)  # +0.08 over the best: improvement, stalls reset
    assert es.best_step == 3
    assert not es.update(4, 0.60, state)  # +0.02: 1 stall
    assert es.update(5, 0.62, state)  # +0.04: 2 stalls = patience -> stop
    assert (es.stopped_step, es.best_step, es.meta()["early_stopping"]["bad_evals"]) == (5, 3, 2)
    again = EarlyStopping(patience=2, resumed_meta=es.meta(), min_delta=0.05)
    assert again.stopped and again.best_accuracy == 0.58  # the stop state survives a resume


def test_a_tie_at_the_best_accuracy_reports_the_lower_validation_loss():
    first, later = (
        {"params": {"w": 1.0}, "batch_stats": {}},
        {"params": {"w": 2.0}, "batch_stats": {}},
    )
    es = EarlyStopping(patience=3, ties_on_loss=True)
    assert not es.update(10, 1.0, first, loss=0.5)
    assert not es.update(20, 1.0, later, loss=0.2)  # tied, lower loss: reported, still a stall
    assert not es.update(30, 1.0, first, loss=0.3)  # tied, higher loss: not reported
    assert (es.best_step, es.best_loss, es._bad) == (20, 0.2, 2)
    assert es.best_into({"params": None, "batch_stats": None}, lambda v: v)["params"] == {"w": 2.0}
    again = EarlyStopping(patience=3, resumed_meta=es.meta(), ties_on_loss=True)
    assert (again.best_step, again.best_loss) == (20, 0.2)  # survives a resume
    legacy = EarlyStopping(patience=3)  # runs recorded before the field: the first tie
    legacy.update(10, 1.0, first, loss=0.5)
    legacy.update(20, 1.0, later, loss=0.2)
    assert legacy.best_step == 10


def test_a_run_recorded_before_the_loss_tie_break_is_not_the_same_experiment():
    from jtl.config.records import recorded_diff, to_dict

    new = to_dict(_config())
    before = {k: v for k, v in new.items() if k != "best_ties_on_val_loss"}
    assert recorded_diff(before, new, new) == ["best_ties_on_val_loss"]
    assert recorded_diff(before, {**new, "best_ties_on_val_loss": False}, new) == []


def test_patience_never_stops_before_stop_min_steps(tmp_path):
    state = {"params": {"w": 1.0}, "batch_stats": {}}
    es = EarlyStopping(patience=2, min_step=40)
    assert not es.update(10, 0.9, state)  # best
    assert not any(es.update(s, 0.5, state) for s in (20, 30))  # 2 stalls, but before step 40
    assert es.update(40, 0.5, state) and (es.stopped_step, es.best_step) == (40, 10)
    from jtl.run.train import train  # the trainer passes it: patience 1 would stop at step 6

    config = _config("max_epochs=8", "early_stopping_patience=1", "stop_min_steps=18",
                     "min_delta=0.99", "eval_every_epochs=0", "eval_every=3")  # fmt: skip
    s = train(config, tmp_path)
    assert s["early_stopping"]["stopped_step"] == 18 and s["steps_run"] == 18


def test_patience_never_stops_before_stop_min_fraction_of_the_cap(tmp_path):
    r = resolve_budget(_config("max_epochs=8", "stop_min_fraction=0.75", "stop_min_steps=5"), 100)
    assert (r.total_steps, r.stop_min_steps, r.stop_min_fraction) == (25, 19, 0.0)  # ceil 18.75
    higher = resolve_budget(
        _config("max_epochs=8", "stop_min_fraction=0.5", "stop_min_steps=20"), 100
    )
    assert higher.stop_min_steps == 20  # the larger floor wins
    from jtl.run.train import train

    config = _config("max_epochs=8", "early_stopping_patience=1", "stop_min_fraction=0.75",
                     "min_delta=0.99", "eval_every_epochs=0", "eval_every=3")  # fmt: skip
    s = train(config, tmp_path)  # patience 1 would stop at step 6; 0.75 of 25 steps is 19
    assert s["early_stopping"]["stopped_step"] == 21 and s["steps_run"] == 21
    with pytest.raises(Exception, match="stop_min_fraction"):
        train(_config("stop_min_fraction=1.5"), tmp_path / "bad")


def test_resolve_budget_turns_epochs_into_steps():
    c = _config("max_epochs=8")
    r = resolve_budget(c, 100)  # 100 examples / batch 32 = 3.125 steps per epoch
    assert r.total_steps == 25 and r.eval_every == 3
    warm = resolve_budget(_config("max_epochs=1", "optim.warmup_steps=20"), 100)
    assert (warm.total_steps, warm.optim.warmup_steps) == (4, 4)
    plain = load_config(f"{REPO}/configs/tiny.py")
    assert resolve_budget(plain, 100) is plain  # equal-step runs are untouched


def test_cap_hit_while_improving_is_not_converged(tmp_path):
    from jtl.run.train import train

    s = train(_config("max_epochs=3", "early_stopping_patience=50"), tmp_path)
    assert s["budget"] == "converged" and s["converged"] is False
    assert s["steps_run"] == s["max_steps"] == 10  # ceil(3 x 3.125)
    assert s["epochs_run"] == pytest.approx(3.2)
    assert s["early_stopping"]["stopped_step"] is None


def test_equal_step_runs_are_labelled_and_never_converged(tmp_path):
    from jtl.run.train import train

    s = train(load_config(f"{REPO}/configs/tiny.py", ["total_steps=4", "eval_every=2"]), tmp_path)
    assert s["budget"] == "equal_steps" and s["converged"] is False and s["best_step"] == 4


class _Killed(Exception):
    pass


@pytest.mark.parametrize("ties", [False, True])
def test_stall_stops_and_a_resume_mid_run_ends_identical(tmp_path, monkeypatch, ties):
    """Killed at the last checkpoint before the stall stop: the resumed run must restore the
    best weights from disk (first tie: best step 33, killed at 36), or the best validation loss
    from the checkpoint's metadata (loss tie-break: a tie at step 42 wins over 33's loss), to
    report what the uninterrupted run reports."""
    from jtl.run.train import train
    from jtl.weights import checkpoint

    # lr 0.01 on 10/class digits: validation peaks and stalls well inside the 30-epoch cap
    # (measured on the tests' 2 devices: 94.9 % first at step 33, stopped at 42 of 94, 42
    # tied with a lower loss). The training stream's order decides these steps: re-measure
    # them when it changes.
    config = _config("max_epochs=30", "early_stopping_patience=3", "optim.lr=0.01",
                     f"best_ties_on_val_loss={ties}")  # fmt: skip
    whole = train(config, tmp_path / "whole")
    assert whole["converged"] is True and whole["budget"] == "converged"
    es = whole["early_stopping"]
    assert es["stopped_step"] < whole["max_steps"]
    assert whole["best_step"] == es["best_step"] == (42 if ties else 33)
    every = config.checkpoint_every
    kill = max(range(every, es["stopped_step"], every))
    assert 33 < kill < 42
    # The last checkpoint holds the reported (best) weights: what a sweep tests after selection.
    from jtl.study.sweep import evaluate_test

    again = evaluate_test(config, tmp_path / "whole")
    assert again["test_accuracy"] == whole["test_accuracy"]

    real_save = checkpoint.RunCheckpoints.save

    def save_then_die(self, step, state, meta):
        real_save(self, step, state, meta)
        if step == kill:
            self.wait()
            raise _Killed

    monkeypatch.setattr(checkpoint.RunCheckpoints, "save", save_then_die)
    with pytest.raises(_Killed):
        train(config, tmp_path / "killed")
    monkeypatch.setattr(checkpoint.RunCheckpoints, "save", real_save)
    resumed = train(config, tmp_path / "killed")
    assert resumed["resumed_from_step"] == kill
    for key in ("val_accuracy", "test_accuracy", "test_loss", "steps_run", "best_step",
                "converged", "early_stopping"):  # fmt: skip
        assert resumed[key] == whole[key], key
    kept = sorted(p.name for p in (tmp_path / "killed" / "best_weights").iterdir())
    assert kept == [f"{es['best_step']}.npz"]  # only the reported weights stay
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["converged"] is True


def test_step_floors_keep_tiny_sets_from_stopping_after_a_few_steps():
    """134 images at batch 32 are ~4 steps per epoch: an 8-epoch cap would be 34 steps and
    epoch-wise validation would count patience in single steps. The floors lift both."""
    c = _config("max_epochs=8", "min_steps=300", "min_eval_every=10")
    r = resolve_budget(c, 134)
    assert (r.total_steps, r.eval_every) == (300, 10)
    big = resolve_budget(c, 10_000)  # the floors do not bind on a large set
    assert (big.total_steps, big.eval_every) == (2500, 312)  # round(312.5)


def test_a_study_field_added_later_does_not_orphan_a_recorded_study(tmp_path):
    import json

    from jtl.study import StudyError, load_study, record_study

    study = load_study(f"{REPO}/configs/studies/mnist_source.py:quick")
    record_study(tmp_path, "spec", study)
    recorded = json.loads((tmp_path / "study.json").read_text())
    del recorded["study"]["convergence"]["min_steps"]  # as written before the field existed
    (tmp_path / "study.json").write_text(json.dumps(recorded))
    record_study(tmp_path, "spec", study)  # still the same study
    study.convergence.min_steps = 300
    with pytest.raises(StudyError, match="convergence.min_steps"):
        record_study(tmp_path, "spec", study)


def test_study_floors_reach_every_cell_and_scratch_gets_its_longer_floor():
    from jtl.study import load_study
    from jtl.study.budget import budget_overrides

    study = load_study(f"{REPO}/configs/studies/mnist_source.py:protocol=converged")
    study.convergence.min_steps, study.convergence.min_eval_every_steps = 0, 0
    assert not any(
        o.startswith(("min_steps", "min_eval")) for o in budget_overrides(study, "scratch", "full")
    )
    study.convergence.min_steps, study.convergence.min_eval_every_steps = 300, 10
    scratch = budget_overrides(study, "scratch", "full")
    assert "min_steps=600" in scratch and "min_eval_every=10" in scratch  # scratch x2 schedule
    assert "min_steps=300" in budget_overrides(study, "finetune_full", "full")
    assert not any(o.startswith("stop_min_steps") for o in scratch)  # off unless asked for
    study.convergence.stop_min_steps = 200
    assert "stop_min_steps=400" in budget_overrides(study, "scratch", "full")
    assert "stop_min_steps=200" in budget_overrides(study, "lp_ft", "10")
    assert not any(o.startswith("stop_min_fraction") for o in scratch)  # off unless asked for
    study.convergence.stop_min_fraction = 0.75  # a fraction of each cell's own cap
    assert "stop_min_fraction=0.75" in budget_overrides(study, "scratch", "full")
    assert "stop_min_fraction=0.75" in budget_overrides(study, "lp_ft", "10")
