"""The study runner: grid expansion, budgets, k-fold assignment, resume, refusals, CLI."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import ml_collections as mlc
import numpy as np
import pytest

from jtl import study as study_lib
from jtl.config import load_config
from jtl.data.target import TargetData

REPO = Path(__file__).resolve().parent.parent


def _study(**changes) -> mlc.ConfigDict:
    s = study_lib.study_defaults()
    s.name = "test"
    s.cell_config = "configs/transfer.py"
    s.sources = mlc.ConfigDict(
        {"tiny": {"kind": "train", "config": "configs/tiny.py:steps=10,model=cnn_small"}}
    )
    s.targets = mlc.ConfigDict({"digits": "target=digits,model=cnn_small,width=1.0,batch=32"})
    s.strategies = ("scratch", "finetune_full")
    s.sizes = ("5", "full")
    s.seeds = (0, 1)
    s.steps = 12
    s.overrides = ("eval_every=6", "log_every=6", "checkpoint_every=6")
    s.advise_sample = 0
    for k, v in changes.items():
        s[k] = v
    study_lib.validate(s)
    return s


def test_expand_crosses_arms_sizes_seeds_with_kfold_only_for_small_sizes(tmp_path):
    s = _study(
        scratch_models=mlc.ConfigDict({"": "", "wide": "width=0.5"}), scratch_schedule_mult=2.0
    )
    cells = study_lib.expand(s, tmp_path)
    # 3 arms (scratch, scratch/wide, finetune_full) x 2 sizes x 2 seeds
    assert len(cells) == 12
    assert Counter(c.arm for c in cells) == {"scratch": 4, "scratch/wide": 4, "finetune_full": 4}
    small = [c for c in cells if c.size == "5/class"]
    full = [c for c in cells if c.size == "full"]
    assert sorted({c.fold for c in small}) == [0, 1]  # the fold rotates with the seed
    assert {c.fold for c in full} == {-1}
    assert all("num_folds=3" in c.overrides for c in small)
    assert not any("num_folds=3" in c.overrides for c in full)
    # scratch gets scratch_schedule_mult x the steps; transfer arms the plain budget
    steps = {c.arm: c.config().total_steps for c in cells}
    assert steps == {"scratch": 24, "scratch/wide": 24, "finetune_full": 12}
    ft = next(c for c in cells if c.strategy == "finetune_full")
    assert ft.config().init.checkpoint == str(tmp_path / "sources" / "tiny")
    assert next(c for c in cells if c.arm == "scratch/wide").config().model.kwargs.width == 0.5
    assert len({c.id for c in cells}) == len(cells)
    cmd = cells[0].command(tmp_path)
    assert cmd[:3] == ["jtl", "train", "--config"] and "--workdir" in cmd
    assert "--config.num_folds=3" in cmd


def test_a_cell_is_its_base_config_plus_config_field_overrides(tmp_path):
    s = _study(scratch_models=mlc.ConfigDict({"": "", "wide": "width=0.5"}), sizes=("5", "25%"))
    args_allowed = {"target", "model", "width", "batch"}  # the target's and model's arguments
    for cell in study_lib.expand(s, tmp_path):
        path, _, args = cell.spec.partition(":")
        assert Path(path).name == "transfer.py"
        assert {a.partition("=")[0] for a in args.split(",")} <= args_allowed, cell.spec
        base = load_config(cell.spec)
        for override in cell.overrides:  # every override names a field of the base config
            key = override.partition("=")[0]
            node = base
            for part in key.split("."):
                assert part in node, (key, cell.id)
                node = node[part]
        config = cell.config()
        assert config.strategy == cell.strategy and config.seed == cell.seed
        assert f"strategy={cell.strategy}" in cell.overrides
        assert ("init.checkpoint" in " ".join(cell.overrides)) == (cell.source != "none")
        if cell.size == "5/class":
            assert (config.train_per_class, config.train_fraction) == (5, 1.0)
        else:
            assert (config.train_per_class, config.train_fraction) == (0, 0.25)


def test_sizes_by_target_and_steps_by_size(tmp_path):
    s = _study(
        targets=mlc.ConfigDict({"digits": "target=digits", "lfw": "target=lfw_subset"}),
        sizes=("5", "50", "full"),
        sizes_by_target=mlc.ConfigDict({"lfw": ("5", "full")}),
        steps_by_size=mlc.ConfigDict({"full": 30}),
        seeds=(0,),
    )
    cells = study_lib.expand(s, tmp_path)
    sizes = {t: sorted({c.size for c in cells if c.target == t}) for t in ("digits", "lfw")}
    assert sizes == {"digits": ["5/class", "50/class", "full"], "lfw": ["5/class", "full"]}
    assert {c.config().total_steps for c in cells if c.size == "full"} == {30}
    assert {c.config().total_steps for c in cells if c.size == "5/class"} == {12}


def test_kfold_splits_the_labelled_budget_and_folds_partition_it():
    config = load_config(f"{REPO}/configs/transfer.py:target=digits,per_class=9")
    plain = TargetData(config)
    folds = []
    for fold in range(3):
        config = load_config(
            f"{REPO}/configs/transfer.py:target=digits,per_class=9", ["num_folds=3", f"fold={fold}"]
        )
        folds.append(TargetData(config))
    budget = np.sort(plain.train_idx)
    for d in folds:
        assert len(d.train_idx) == 60 and len(d.val_idx) == 30  # 6 + 3 per class, 10 classes
        np.testing.assert_array_equal(np.sort(np.concatenate([d.train_idx, d.val_idx])), budget)
    vals = np.concatenate([d.val_idx for d in folds])
    np.testing.assert_array_equal(np.sort(vals), budget)  # each example validates exactly once
    labels = plain.dataset.labels("train")
    assert np.bincount(labels[folds[0].val_idx], minlength=10).tolist() == [3] * 10
    with pytest.raises(ValueError, match="fold=3"):
        TargetData(
            load_config(f"{REPO}/configs/transfer.py:per_class=9", ["num_folds=3", "fold=3"])
        )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sizes": ("ten",)}, "size 'ten'"),
        ({"seeds": ()}, "seeds is empty"),
        ({"sources": mlc.ConfigDict()}, "need a pretrained source"),
        ({"steps_by_size": mlc.ConfigDict({"7": 3})}, "steps_by_size"),
    ],
)
def test_bad_study_configs_name_the_field(change, message):
    with pytest.raises(study_lib.StudyError, match=message):
        _study(**change)


def test_arm_variants_are_arms_of_their_own_with_their_overrides(tmp_path):
    study = study_lib.load_study("configs/studies/layer_transfer.py:seeds=1")
    cells = study_lib.expand(study, tmp_path)
    arms = Counter(c.arm for c in cells)
    assert set(arms) == {"scratch", "A1B", "A1B+", "A2B", "A2B+", "A3B", "A3B+"}
    a2b = next(c for c in cells if c.arm == "A2B" and c.target == "mnist59")
    assert a2b.strategy == "layer_transfer" and a2b.source == "mnist04"
    config = a2b.config()
    assert config.strategy_args.transfer_blocks == 2 and config.strategy_args.transfer_frozen
    plus = next(c for c in cells if c.arm == "A2B+").config()
    assert not plus.strategy_args.transfer_frozen
    # Every variant gets the same learning-rate grid as the strategy it varies.
    assert arms["A2B"] == arms["scratch"] == 2 * len(study.sweep.lr)
    bad = study.copy_and_resolve_references()
    bad.arm_variants = mlc.ConfigDict({"x": {"overrides": ()}})
    with pytest.raises(study_lib.StudyError, match="arm_variants.x: give strategy"):
        study_lib.validate(bad)


def test_workdir_of_a_different_study_is_refused(tmp_path):
    study_lib.record_study(tmp_path, "a", _study())
    study_lib.record_study(tmp_path, "a", _study())  # same study: resumes
    before = (tmp_path / "study.json").read_text()
    with pytest.raises(study_lib.StudyError, match="differs in: seeds"):
        study_lib.record_study(tmp_path, "a", _study(seeds=(0, 1, 2)))
    assert (tmp_path / "study.json").read_text() == before


def test_study_clock_records_code_versions_and_warns_when_they_mix(tmp_path, caplog):
    from jtl.runtime.code_version import code_version

    now = code_version()
    assert now.startswith(("git:", "jtl ")), now
    (tmp_path / "timing.json").write_text(
        json.dumps({"wall_time_s": 5.0, "runs": [{"start": "x", "seconds": 5.0}]})
    )
    clock = study_lib.StudyClock(tmp_path)
    assert clock.code_versions() == ["unrecorded"]  # a study from before versions were kept
    with caplog.at_level("WARNING"):
        clock.start()
    assert "mix code versions" in caplog.text
    clock.tick()
    again = study_lib.StudyClock(tmp_path)
    assert again.code_versions() == ["unrecorded", now]
    caplog.clear()
    with caplog.at_level("WARNING"):
        again.data["runs"] = again.data["runs"][1:]  # the same version only: no warning
        again.start()
    assert "mix code versions" not in caplog.text


def test_study_clock_keeps_an_unreadable_timing_file_aside(tmp_path, caplog):
    for text in ("{not json", "[1, 2]"):
        (tmp_path / "timing.json").write_text(text)
        with caplog.at_level("WARNING"):
            clock = study_lib.StudyClock(tmp_path)
        assert clock.wall_time_s == 0.0 and "unreadable" in caplog.text
        assert (tmp_path / "timing.json.bad").read_text() == text  # kept, not overwritten
        clock.start()
        clock.tick()
        assert json.loads((tmp_path / "timing.json").read_text())["runs"][0]["seconds"] >= 0


def test_run_study_saves_its_time_when_it_fails_after_the_cells(tmp_path, monkeypatch):
    from jtl.study import run as run_lib

    spec = tmp_path / "s.py"
    spec.write_text(
        "import ml_collections as mlc\n"
        "from jtl.study import study_defaults\n"
        "def get_config(arg=None):\n"
        "    s = study_defaults()\n"
        "    s.name = 'clock'\n"
        "    s.cell_config = 'configs/tiny.py'\n"
        "    s.targets = mlc.ConfigDict({'digits': 'steps=4'})\n"
        "    s.strategies = ('scratch',)\n"
        "    s.sizes = ('full',)\n"
        "    s.seeds = (0,)\n"
        "    s.steps = 4\n"
        "    s.advise_sample = 0\n"
        "    return s\n"
    )

    def fail(*_):
        time.sleep(2.0)
        raise RuntimeError("scoring failed")

    monkeypatch.setattr(run_lib, "advise_scores", fail)
    root = tmp_path / "w"
    plan = study_lib.plan_study(str(spec), root)
    t = time.time()
    with pytest.raises(RuntimeError, match="scoring failed"):
        study_lib.run_study(plan, root)
    wall = time.time() - t
    (run,) = json.loads((root / "timing.json").read_text())["runs"]
    assert run["cells_run"] == 1
    assert run["seconds"] > wall - 1.0  # the failed scoring's 2 s are counted too


class _Killed(Exception):
    pass


def test_resume_skips_finished_cells_and_finishes_a_killed_one(tmp_path, monkeypatch, capsys):
    s = _study(strategies=("scratch",), sizes=("full",), seeds=(0, 1))
    root = tmp_path / "study"
    cells = study_lib.expand(s, root)
    assert len(cells) == 2
    clock = study_lib.StudyClock(root)  # one invocation of `jtl study`
    clock.start()
    ran, failed = study_lib.run_cells(cells[:1], root, clock=clock)
    assert (ran, failed) == (1, [])
    timing = json.loads((root / "timing.json").read_text())  # saved per cell, not at the end
    assert timing["runs"][0]["cells_run"] == 1 and timing["wall_time_s"] > 0
    first = json.loads((cells[0].workdir(root) / "summary.json").read_text())

    # Kill the second cell right after its step-6 checkpoint.
    from jtl.weights import checkpoint

    real_save = checkpoint.RunCheckpoints.save

    def save_then_die(self, step, state, meta):
        real_save(self, step, state, meta)
        if step == 6:
            self.wait()
            raise _Killed("simulated kill")

    monkeypatch.setattr(checkpoint.RunCheckpoints, "save", save_then_die)
    ran, failed = study_lib.run_cells(cells, root)
    assert ran == 1 and len(failed) == 1 and "simulated kill" in failed[0][1]
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[study]")]
    assert lines[-1].startswith(f"[study] 1/1 {cells[1].id} FAILED (ETA 0h00")  # as in parallel
    assert not (cells[1].workdir(root) / "summary.json").exists()
    monkeypatch.setattr(checkpoint.RunCheckpoints, "save", real_save)

    clock = study_lib.StudyClock(root)  # a second invocation resumes; its time adds up
    clock.start()
    ran, failed = study_lib.run_cells(cells, root, clock=clock)  # the killed cell, from step 6
    assert (ran, failed) == (1, [])
    timing = json.loads((root / "timing.json").read_text())
    assert [r["cells_run"] for r in timing["runs"]] == [1, 1]
    assert timing["wall_time_s"] == pytest.approx(sum(r["seconds"] for r in timing["runs"]))
    second = json.loads((cells[1].workdir(root) / "summary.json").read_text())
    assert second["resumed_from_step"] == 6 and second["steps_run"] == 12
    assert json.loads((cells[0].workdir(root) / "summary.json").read_text()) == first
    assert study_lib.run_cells(cells, root) == (0, [])  # all finished: nothing re-runs

    rows = study_lib.collect(cells, root)
    assert [r["seed"] for r in rows] == [0, 1]
    r = rows[1]
    assert r["steps"] == 12 and r["images_seen"] == 12 * 32
    assert r["train_flops"] and r["train_flops"] > 0
    assert [p[0] for p in r["curve"]["val"]] == [6, 12]  # no duplicated records after resume


def test_a_run_of_another_config_in_a_cells_directory_is_not_its_result(tmp_path, caplog):
    """A run copied into a cell's directory (or left there by another config) is refused by
    training and left out of the rows the report reads: no report mixes configs."""
    one = dict(strategies=("scratch",), sizes=("full",), seeds=(0,))
    root = tmp_path / "study"
    (cell,) = study_lib.expand(_study(**one), root)
    assert study_lib.run_cells([cell], root) == (1, [])
    assert [r["cell"] for r in study_lib.collect([cell], root)] == [cell.id]
    (other,) = study_lib.expand(_study(**one, steps=8), root)
    assert other.workdir(root) == cell.workdir(root)
    assert study_lib.collect([other], root) == []
    assert f"1 cell(s) hold a run of another config, left out of the report: {cell.id}" in (
        caplog.text
    )
    ran, failed = study_lib.run_cells([other], root)
    assert ran == 1 and "different config" in failed[0][1]
    assert [r["cell"] for r in study_lib.collect([cell], root)] == [cell.id]  # kept as it was


def test_a_sweep_chooses_only_among_runs_of_its_trials_configs(tmp_path):
    """A trial holding another config's run (copied in, or replaced after the choice) is no
    trial to choose from: the cell gets no selection and no row rather than a mixed one."""
    from jtl.study import sweep

    s = _study(strategies=("scratch",), sizes=("full",), seeds=(0,), steps=4)
    s.sweep.lr = (0.01, 0.03)
    root = tmp_path / "study"
    trials = study_lib.expand(s, root)
    assert len(trials) == 2 and study_lib.run_cells(trials, root) == (2, [])
    assert len(sweep.finalize(trials, root)) == 1
    assert [r["cell"] for r in study_lib.collect(trials, root)] == [sweep.group_id(trials[0])]
    selected = root / "cells" / sweep.group_id(trials[0]) / sweep.SELECTED
    chosen = json.loads(selected.read_text())["chosen"]
    other = next(t for t in trials if t.trial != chosen)
    cfg = other.workdir(root) / "config.json"  # its run replaced by one of another config
    record = json.loads(cfg.read_text())
    record["total_steps"], record["_fingerprint"] = 8, "another"
    cfg.write_text(json.dumps(record))
    assert study_lib.collect(trials, root) == []  # the old choice saw another run: stale
    selected.unlink()
    assert sweep.finalize(trials, root) == [] and not selected.exists()  # nothing to choose


def test_early_stopping_stops_records_and_resume_does_not_train_past(tmp_path):
    from jtl.run.train import train

    # lr=0 and GroupNorm (no batch statistics): validation accuracy cannot improve after the
    # first evaluation, so patience 1 stops at the second one.
    overrides = [
        "optim.lr=0.0",
        "eval_every=2",
        "checkpoint_every=100",
        "early_stopping_patience=1",
    ]
    config = load_config(f"{REPO}/configs/tiny.py:steps=20,norm=group", overrides)
    first = train(config, tmp_path)
    assert first["early_stopping"] == {
        "stopped_step": 4,
        "best_step": 2,
        "best_accuracy": pytest.approx(first["val_accuracy"]),
        "best_loss": pytest.approx(first["val_loss"]),
        "bad_evals": 1,
    }
    assert first["converged"] is True and first["budget"] == "converged"
    assert first["steps_run"] == 4 and first["images_seen"] == 4 * config.batch_size
    assert train(config, tmp_path) == first  # finished: returned as it is, nothing rewritten
    (tmp_path / "summary.json").unlink()  # killed before its summary: resumes at the stop
    again = train(config, tmp_path)  # ... and trains no further
    assert again["steps_run"] == 4 and again["resumed_from_step"] == 4
    assert again["test_accuracy"] == pytest.approx(first["test_accuracy"])
    assert again["early_stopping"]["stopped_step"] == 4


def test_transfer_bench_parts_reuse_an_earlier_parts_sources():
    s = study_lib.load_study("configs/studies/transfer_bench.py:part=imagenet,source_dir=/s")
    assert s.sources.to_dict() == {"imagenet": {"kind": "checkpoint", "path": "/s/imagenet"}}
    assert s.advise_sample == 0  # scored once, by the part that made the sources
    main = study_lib.load_study("configs/studies/transfer_bench.py:arms=lp_ft,source_dir=/s")
    assert main.sources.mnist.path == "/s/mnist" and main.advise_sample == 0
    assert study_lib.load_study("configs/studies/transfer_bench.py").advise_sample == 1000


@pytest.mark.parametrize(
    "spec, cells",
    [
        ("configs/studies/mnist_source.py", 144),
        ("configs/studies/mnist_source.py:quick", 12),
        ("configs/studies/mnist_source.py:protocol=converged", 224),
        ("configs/studies/mnist_source.py:quick,protocol=converged", 28),
        ("configs/studies/imagenet_source.py", 36),
        ("configs/studies/imagenet_source.py:quick", 6),
        ("configs/studies/imagenet_source.py:protocol=converged", 40),
        ("configs/studies/austen_minilm.py", 12),
        ("configs/studies/transfer_bench.py:small=1", 48),
        ("configs/studies/transfer_bench.py:arms=scratch+linear_probe", 440),
        ("configs/studies/transfer_bench.py:arms=lp_ft,sizes=10,sources=mnist+random", 80),
        ("configs/studies/transfer_bench.py:part=imagenet", 40),
        ("configs/studies/transfer_bench.py:part=imagenet,arms=lp_ft,sizes=10,source_dir=/s", 40),
        ("configs/studies/layer_transfer.py", 56),
        ("configs/studies/shift_source.py", 52),
        ("configs/studies/quickstart.py", 20),
    ],
)
def test_reference_studies_expand_into_valid_train_configs(spec, cells, tmp_path):
    study = study_lib.load_study(spec)
    grid = study_lib.expand(study, tmp_path)
    assert len(grid) == cells
    for cell in grid:
        cell.config()  # every cell's config loads (unknown keys or bad args would fail here)


def test_converged_budget_sets_caps_scratch_longer_and_eval_by_size(tmp_path):
    conv = mlc.ConfigDict(study_lib.study_defaults().convergence.to_dict())
    conv.max_epochs, conv.patience, conv.min_delta = 4.0, 3, 0.01
    conv.max_epochs_by_size = mlc.ConfigDict({"5": 50.0})
    conv.eval_every_epochs_by_size = mlc.ConfigDict({"5": 5.0})
    s = _study(budget="converged", convergence=conv, scratch_schedule_mult=2.0)
    cells = study_lib.expand(s, tmp_path)
    by = {(c.arm, c.size): c.config() for c in cells}
    full, small = by[("finetune_full", "full")], by[("scratch", "5/class")]
    assert (full.max_epochs, full.early_stopping_patience, full.min_delta) == (4.0, 3, 0.01)
    assert full.eval_every_epochs == 1.0 and by[("scratch", "full")].max_epochs == 8.0
    assert (small.max_epochs, small.eval_every_epochs) == (100.0, 5.0)  # scratch x2 the cap
    with pytest.raises(study_lib.StudyError, match="budget="):
        _study(budget="forever")
