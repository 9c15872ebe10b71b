"""Equal tuning budgets: trials, validation-only selection, test read only after it, resume."""

from __future__ import annotations

import json

import ml_collections as mlc
import numpy as np
import pytest

from jtl import study as study_lib
from jtl.study import sweep as sweep_lib
from tests.test_study import _study


class TestSplitSpy:
    """Wraps a test split: every record read is logged (and labels can be corrupted)."""

    __test__ = False  # not a pytest class

    def __init__(self, source, events, corrupt=False):
        self.source, self.events, self.corrupt = source, events, corrupt

    def __len__(self):
        return len(self.source)

    def _fix(self, r):
        if self.corrupt:
            r = {**r, "label": (int(r["label"]) + 1) % 10}
        return r

    def __getitem__(self, i):
        self.events.append(("test_read", 1))
        return self._fix(self.source[i])

    def __getitems__(self, idx):
        self.events.append(("test_read", len(idx)))
        get = getattr(self.source, "__getitems__", None)
        records = get(idx) if get else [self.source[i] for i in idx]
        return [self._fix(r) for r in records]


@pytest.fixture
def spy(monkeypatch):
    """Every data set loaded in-process gets a spied test split; selection is logged too."""
    from jtl.data import registry

    events: list[tuple] = []
    state = {"corrupt": False}
    real_load, real_select = registry.load, sweep_lib.select

    def load(*a, **kw):
        ds = real_load(*a, **kw)
        ds.splits = {**ds.splits, "test": TestSplitSpy(ds.splits["test"], events, state["corrupt"])}
        return ds

    def select(summaries):
        i = real_select(summaries)
        events.append(("selected", i))
        return i

    monkeypatch.setattr(registry, "load", load)
    monkeypatch.setattr(sweep_lib, "select", select)
    return events, state


def _sweep_study(**kw) -> mlc.ConfigDict:
    # 5 per class uses 3-fold CV: the choice is made on the k-fold validation fold.
    return _study(strategies=("scratch",), sizes=("5",), seeds=(0,),
                  sweep=mlc.ConfigDict({"lr": (0.0, 0.003), "weight_decay": ()}), **kw)  # fmt: skip


def test_grid_is_equal_per_arm_and_probes_are_not_swept(tmp_path):
    s = _study(strategies=("scratch", "linear_probe", "finetune_full"),
               sweep=mlc.ConfigDict({"lr": (0.01, 0.1), "weight_decay": (0.0, 5e-4)}))  # fmt: skip
    cells = study_lib.expand(s, tmp_path)
    per_arm = {a: [c for c in cells if c.arm == a and c.size == "full" and c.seed == 0]
               for a in ("scratch", "linear_probe", "finetune_full")}  # fmt: skip
    assert [len(v) for v in per_arm.values()] == [4, 1, 4]
    trial = per_arm["finetune_full"][1]
    assert trial.trial == "lr0.01_wd0.0005" and trial.id.endswith("/full/seed0/lr0.01_wd0.0005")
    config = trial.config()
    assert (config.optim.lr, config.optim.weight_decay, config.eval_test) == (0.01, 5e-4, False)
    assert per_arm["linear_probe"][0].config().eval_test  # one ordinary run
    bad = mlc.ConfigDict({"finetune_full": mlc.ConfigDict({"lr": (0.01,)})})
    with pytest.raises(study_lib.StudyError, match="same number of trials"):
        _study(sweep=mlc.ConfigDict({"lr": (0.01, 0.1)}), sweep_by_strategy=bad)


def test_selection_reads_validation_only_and_a_partial_grid_resumes(tmp_path, spy):
    events, state = spy
    root = tmp_path / "study"
    cells = study_lib.expand(_sweep_study(), root)
    assert [c.trial for c in cells] == ["lr0", "lr0.003"] and cells[0].fold == 0

    # A partial grid (the study was killed after one trial): no choice, no row, no test read.
    assert study_lib.run_cells(cells[:1], root) == (1, [])
    assert sweep_lib.finalize(cells, root) == [] and study_lib.collect(cells, root) == []
    first = (cells[0].workdir(root) / "summary.json").read_bytes()
    # Re-running finishes only the missing trial and leaves the finished one as it was.
    assert study_lib.run_cells(cells, root) == (1, [])
    assert (cells[0].workdir(root) / "summary.json").read_bytes() == first
    assert not [e for e in events if e[0] == "test_read"]  # trials never read the test split
    for c in cells:
        s = json.loads((c.workdir(root) / "summary.json").read_text())
        assert s["test_accuracy"] is None
        splits = {json.loads(line)["split"] for line in (c.workdir(root) / "metrics.jsonl").open()}
        assert "test" not in splits

    vals = [json.loads((c.workdir(root) / "summary.json").read_text())["val_accuracy"]
            for c in cells]  # fmt: skip
    assert vals[0] != vals[1]  # a real choice
    best = int(np.argmax(vals))
    (record,) = sweep_lib.finalize(cells, root)
    k = events.index(("selected", best))  # the best validation accuracy wins
    assert not [e for e in events[:k] if e[0] == "test_read"]
    n_test = sum(n for kind, n in events[k:] if kind == "test_read")
    n_ex = record["test"]["test_examples"]  # one pass over test (padded to whole batches)
    assert 0 < n_ex <= n_test < 2 * n_ex
    assert [t["val_accuracy"] for t in record["trials"]] == vals
    chosen = {"lr": (0.0, 0.003)[best]}
    assert (record["chosen"], record["values"]) == (cells[best].trial, chosen)

    (row,) = study_lib.collect(cells, root)
    assert row["cell"] == "digits/scratch/5/seed0_fold0" and row["chosen"] == chosen
    assert row["test_accuracy"] == record["test"]["test_accuracy"]
    assert row["sweep_trials"] == 2 and row["sweep_spread"] == pytest.approx(abs(vals[1] - vals[0]))
    assert row["tuning_images_seen"] == 2 * row["images_seen"]

    from jtl.report import build_report

    md = build_report({"name": "sweep"}, [row], tmp_path / "report")["md"].read_text()
    assert f"| digits | scratch | 5/class | lr {chosen['lr']:g} | 2 |" in md.split("## Tuning")[1]

    # Finished and selected: a re-run changes nothing and reads no test data.
    n_events = len(events)
    assert study_lib.run_cells(cells, root) == (0, [])
    assert sweep_lib.finalize(cells, root) == [record] and len(events) == n_events

    # The choice is invariant to the test data: corrupt every test label and choose again.
    (root / "cells" / row["cell"] / sweep_lib.SELECTED).unlink()
    state["corrupt"] = True
    (again,) = sweep_lib.finalize(cells, root)
    assert again["chosen"] == record["chosen"] and again["trials"] == record["trials"]
    assert again["test"]["test_accuracy"] != record["test"]["test_accuracy"]
    assert np.isfinite(again["test"]["test_loss"])


def test_diverged_trials_lose_the_selection_and_all_diverged_selects_nothing():
    from jtl.study.sweep import select

    ok = {"val_accuracy": 0.5}
    assert select([{"diverged": True, "val_accuracy": 0.9}, ok, {"val_accuracy": 0.4}]) == 1
    assert select([{"val_accuracy": float("nan")}, {"diverged": True}, ok]) == 2
    assert select([{"diverged": True}, {"val_accuracy": float("nan")}]) is None
    assert select([{"val_accuracy": 0.7}, {"val_accuracy": 0.7}]) == 0  # ties: grid order
    # ... unless the validation loss tells them apart (a saturated split: every trial at 100 %)
    tied = [{"val_accuracy": 1.0, "val_loss": 0.5}, {"val_accuracy": 1.0, "val_loss": 0.2}]
    assert select([*tied, {"val_accuracy": 0.9, "val_loss": 0.01}]) == 1
    assert select([{"val_accuracy": 1.0, "val_loss": float("nan")}, *tied]) == 2


def test_later_seeds_train_once_at_the_tuning_seeds_choice(tmp_path):
    root = tmp_path / "study"
    s = _study(strategies=("scratch",), sizes=("5",), seeds=(0, 1, 2), sweep_tune_seeds=1,
               sweep=mlc.ConfigDict({"lr": (0.0, 0.003), "weight_decay": ()}))  # fmt: skip
    cells = study_lib.expand(s, root)
    assert [(c.seed, c.trial, c.tuned_by) for c in cells] == [
        (0, "lr0", ()), (0, "lr0.003", ()),
        (1, "", ("digits/scratch/5/seed0_fold0",)), (2, "", ("digits/scratch/5/seed0_fold0",)),
    ]  # fmt: skip
    root.mkdir()
    lines = study_lib.write_cells_file(cells, root, "S").read_text().splitlines()
    assert lines[3].endswith("--cell 2") and " train " in lines[1]  # resolved when it runs

    # Before its tuning seed's grid has finished, a later seed refuses to run (it would train at
    # the config's default learning rate otherwise).
    (n, [(cell, why)]) = study_lib.run_cells(cells[2:3], root)
    assert n == 1 and "tuning seeds" in why and not cell.workdir(root).exists()

    assert study_lib.run_cells(cells, root) == (4, [])
    vals = [json.loads((c.workdir(root) / "summary.json").read_text())["val_accuracy"]
            for c in cells[:2]]  # fmt: skip
    assert vals[0] != vals[1]
    best_lr = (0.0, 0.003)[int(np.argmax(vals))]
    for c in cells[2:]:
        saved = json.loads((c.workdir(root) / "config.json").read_text())
        assert saved["optim"]["lr"] == best_lr and saved["eval_test"]
    assert study_lib.run_cells(cells, root) == (0, [])  # resolved again: nothing re-runs

    sweep_lib.finalize(cells, root)
    rows = study_lib.collect(sweep_lib.resolve_all(cells, root), root)
    assert [(r["seed"], r.get("sweep_trials"), r.get("tuned_on")) for r in rows] == [
        (0, 2, None), (1, None, [cells[0].id.rsplit("/", 1)[0]]),
        (2, None, [cells[0].id.rsplit("/", 1)[0]]),
    ]  # fmt: skip
    assert all(r["chosen"] == {"lr": best_lr} for r in rows)
    with pytest.raises(study_lib.StudyError, match="sweep_tune_seeds"):
        _study(seeds=(0,), sweep_tune_seeds=2)


def test_tuned_choice_is_the_best_mean_over_the_tuning_seeds(tmp_path):
    from jtl.study.grid import Cell

    def cell(cid, trial="", tuned_by=()):
        return Cell(cid, "t", "none", "scratch", "", "scratch", "full", 0, -1, "spec",
                    ("optim.lr=" + trial[2:],) if trial else (), trial, tuned_by)  # fmt: skip

    trials = [cell(f"a/seed{s}/lr{lr}", f"lr{lr}") for s in (0, 1) for lr in (0.1, 0.01)]
    later = cell("a/seed2", tuned_by=("a/seed0", "a/seed1"))
    assert sweep_lib.resolve(later, trials, tmp_path) == later  # nothing finished yet
    base = {"dataset": "d", "model": "m", "strategy": "scratch", "seed": 0, "steps": 1,
            "train_examples": 1, "num_classes": 2, "wall_time_s": 1.0,
            "test_accuracy": None}  # fmt: skip
    # seed 0 prefers 0.1 (0.9 vs 0.5), seed 1 prefers 0.01 (0.7 vs 0.2): means 0.55 vs 0.6.
    for c, acc in zip(trials, (0.9, 0.5, 0.2, 0.7), strict=True):
        c.workdir(tmp_path).mkdir(parents=True)
        (c.workdir(tmp_path) / "summary.json").write_text(json.dumps({**base, "val_accuracy": acc}))
    resolved = sweep_lib.resolve(later, trials, tmp_path)
    assert resolved.chosen == "lr0.01" and resolved.overrides[-1] == "optim.lr=0.01"
    # A value that diverged on any tuning seed loses, whatever its mean.
    diverged = {**base, "diverged": True, "val_accuracy": 0.99}
    (trials[3].workdir(tmp_path) / "summary.json").write_text(json.dumps(diverged))
    assert sweep_lib.resolve(later, trials, tmp_path).chosen == "lr0.1"
    # Once the later seed's run started, its choice stays with it (a resume never conflicts).
    later.workdir(tmp_path).mkdir(parents=True)
    saved = {"optim": {"lr": 0.01, "weight_decay": 5e-4}}
    (later.workdir(tmp_path) / "config.json").write_text(json.dumps(saved))
    assert sweep_lib.resolve(later, trials, tmp_path).chosen == "lr0.01"
    # Every value diverged on a tuning seed: unresolved, with the reason (the study goes on).
    (later.workdir(tmp_path) / "config.json").unlink()
    (trials[0].workdir(tmp_path) / "summary.json").write_text(json.dumps(diverged))
    assert sweep_lib.resolve(later, trials, tmp_path) == later
    assert "diverged" in sweep_lib.why_unresolved(later, trials, tmp_path)
    assert sweep_lib.resolve(later, trials[:2], tmp_path) == later  # a tuning seed is missing


def test_study_soups_average_each_sweep_and_report_it_as_an_arm(tmp_path):
    """`study.soups`: a greedy soup of one sweep's trials (never below its best trial on
    validation) is its own arm, built once; a soup of an unswept arm is refused."""
    root = tmp_path / "study"
    s = _sweep_study(soups=("scratch",))
    cells = study_lib.expand(s, root)
    assert study_lib.run_cells(cells, root) == (2, [])
    sweep_lib.finalize(cells, root)
    (where,) = sweep_lib.make_soups(cells, root, s.soups)
    built = (where / "summary.json").stat().st_mtime_ns
    assert sweep_lib.make_soups(cells, root, s.soups) == [where]  # resumed: not rebuilt
    assert (where / "summary.json").stat().st_mtime_ns == built
    chosen, soup = study_lib.collect(cells, root)
    assert (soup["arm"], soup["strategy"], soup["cell"]) == (
        "soup_scratch", "soup_scratch", "digits/scratch/5/seed0_fold0/soup"
    )  # fmt: skip
    vals = [json.loads((c.workdir(root) / "summary.json").read_text())["val_accuracy"]
            for c in cells]  # fmt: skip
    assert soup["val_accuracy"] >= max(vals) - 1e-9
    assert soup["test_accuracy"] is not None and soup["seed"] == chosen["seed"]
    with pytest.raises(study_lib.StudyError, match="soups names"):
        _study(strategies=("scratch",), soups=("scratch",))  # not swept
