"""Converged budgets re-run a cell that hit its cap still improving with the cap doubled
(`convergence.cap_doublings`): the last attempt is the result, tuning reads it, and the earlier
attempts' cost counts; a finished study may take more doublings, never fewer."""

from __future__ import annotations

import dataclasses
import json

import ml_collections as mlc
import pytest

from jtl import study as study_lib
from jtl.report.aggregate import aggregate
from jtl.report.convergence import budget_label
from jtl.study import budget as budget_lib
from jtl.study import sweep as sweep_lib
from tests.test_study import _study


def _capped_study(**kw) -> mlc.ConfigDict:
    """Every run hits its cap: patience is longer than the run."""
    s = _study(strategies=("scratch",), sizes=("5",), seeds=(0, 1), sweep_tune_seeds=1,
               sweep=mlc.ConfigDict({"lr": (0.0, 0.003), "weight_decay": ()}), **kw)  # fmt: skip
    s.budget = "converged"
    c = s.convergence
    c.patience, c.max_epochs, c.eval_every_epochs, c.cap_doublings = 50, 4.0, 1.0, 1
    study_lib.validate(s)
    return s


def _summary(cell, root) -> dict:
    return json.loads((cell.workdir(root) / "summary.json").read_text())


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_capped_cell_is_re_run_once_at_twice_the_cap_and_that_run_counts(tmp_path, parallel):
    root = tmp_path / "study"
    cells = study_lib.expand(_capped_study(), root)
    assert [c.cap_doublings for c in cells] == [1, 1, 1]  # two trials, one later seed
    root.mkdir()
    lines = study_lib.write_cells_file(cells, root, "S").read_text().splitlines()[1:]
    assert all(line.endswith(f"--cell {i}") for i, line in enumerate(lines))  # may re-run
    assert study_lib.run_cells(cells, root, parallel=parallel)[1] == []
    final = sweep_lib.resolve_all(cells, root)
    for first, last in zip(cells, final, strict=True):
        assert last.attempt == 1 and last.workdir(root).name.endswith("@cap2x")
        a, b = _summary(first, root), _summary(last, root)
        assert a["converged"] is False and b["converged"] is False  # still capped: no 3rd try
        caps = [json.loads((c.workdir(root) / "config.json").read_text())["max_epochs"]
                for c in (first, last)]  # fmt: skip
        assert caps == [4.0, 8.0] and b["steps_run"] == b["max_steps"] > a["max_steps"]
    assert not list(root.glob("cells/**/*@cap4x"))
    # The later seed trained at the choice among the trials' last attempts, once.
    vals = {c.trial: _summary(c, root)["val_accuracy"] for c in final[:2]}
    best = max(vals, key=lambda k: (vals[k], -list(vals).index(k)))
    assert final[2].chosen == best and final[2].attempt == 1
    assert study_lib.run_cells(final, root, parallel=parallel) == (0, [])  # nothing re-runs

    sweep_lib.finalize(final, root)
    selected = json.loads(
        (root / "cells" / sweep_lib.group_id(final[0]) / "selected.json").read_text()
    )
    assert {t["cap_doublings"] for t in selected["trials"]} == {1}
    assert all(t["workdir"].endswith("@cap2x") for t in selected["trials"])
    rows = study_lib.collect(final, root)
    assert [r["cap_doublings"] for r in rows] == [1, 1]
    walls = [_summary(c, root)["wall_time_s"] for c in (*cells, *final)]
    tuned, later = rows
    assert tuned["tuning_runs"] == 4  # two trials, two attempts each
    assert tuned["tuning_wall_time_s"] >= sum(walls[0:2]) + sum(walls[3:5])
    assert later["tuning_runs"] == 2  # its own and its first attempt's cost
    assert later["tuning_wall_time_s"] == pytest.approx(walls[2] + walls[5])
    assert "2 run(s) re-run with their cap doubled" in budget_label(aggregate(rows))


def test_only_a_finished_run_at_its_cap_gets_another_attempt(tmp_path, monkeypatch):
    cell = study_lib.expand(_capped_study(), tmp_path)[0]
    monkeypatch.setattr(budget_lib, "is_finished", lambda workdir, config: True)
    assert budget_lib.current_attempt(cell, tmp_path) is cell  # nothing ran yet

    base = {"dataset": "d", "model": "m", "strategy": "scratch", "seed": 0, "steps": 1,
            "train_examples": 1, "num_classes": 2, "wall_time_s": 1.0, "test_accuracy": None,
            "val_accuracy": 0.5}  # fmt: skip

    def write(c, **fields):
        c.workdir(tmp_path).mkdir(parents=True, exist_ok=True)
        (c.workdir(tmp_path) / "summary.json").write_text(json.dumps({**base, **fields}))

    for summary in ({"budget": "converged", "converged": True},  # stopped on patience
                    {"budget": "converged", "converged": False, "diverged": True},
                    {"budget": "equal_steps", "converged": False}):  # fmt: skip
        write(cell, **summary)
        assert budget_lib.current_attempt(cell, tmp_path) is cell
    write(cell, budget="converged", converged=False)
    second = budget_lib.current_attempt(cell, tmp_path)
    assert second.attempt == 1 and second.config().max_epochs == 2 * cell.config().max_epochs
    write(second, budget="converged", converged=False, diverged=True, wall_time_s=3.0)
    assert budget_lib.current_attempt(cell, tmp_path) is cell  # the capped run stays the result
    [longer] = budget_lib.other_attempts(cell, tmp_path)  # but the diverged run's cost counts
    assert longer["wall_time_s"] == 3.0 and longer["diverged"] is True
    assert budget_lib.current_attempt(second, tmp_path) == cell  # whichever attempt is given
    write(second, budget="converged", converged=False)  # capped again: no third attempt allowed
    assert budget_lib.current_attempt(cell, tmp_path) == second
    [first] = budget_lib.other_attempts(second, tmp_path)
    assert first["wall_time_s"] == 1.0 and first["converged"] is False
    # Without doublings a capped cell stays as it is (the report calls it inconclusive).
    plain = dataclasses.replace(cell, cap_doublings=0)
    assert budget_lib.current_attempt(plain, tmp_path) is plain


def test_a_finished_study_takes_more_cap_doublings_but_no_other_change(tmp_path):
    from jtl.study.run import record_study

    s = _capped_study()
    s.convergence.cap_doublings = 0
    record_study(tmp_path, "spec", s)
    s.convergence.cap_doublings = 2  # only adds re-runs: amended, and the change recorded
    with pytest.raises(study_lib.StudyError, match="--only report"):  # but not by a report
        record_study(tmp_path, "spec", s, amend=False)
    record_study(tmp_path, "spec", s)
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["study"]["convergence"]["cap_doublings"] == 2
    assert saved["amended"][0]["convergence.cap_doublings"] == [0, 2]
    s.convergence.cap_doublings = 1  # fewer would drop finished re-runs from the results
    with pytest.raises(study_lib.StudyError, match="cap_doublings"):
        record_study(tmp_path, "spec", s)
    s.convergence.cap_doublings, s.steps = 3, 99  # with another change: a different study
    with pytest.raises(study_lib.StudyError, match="steps"):
        record_study(tmp_path, "spec", s)
    s.convergence.cap_doublings, s.steps = -1, 12
    with pytest.raises(study_lib.StudyError, match="cap_doublings"):
        study_lib.validate(s)


def test_a_study_amended_to_a_doubling_re_runs_capped_cells_and_keeps_finished_ones(tmp_path):
    """The benchmark's case: a finished study (no doublings) taken to one. Every capped cell
    gets a re-run; the later seed keeps the choice it trained with and is not re-trained at
    attempt 0 (its summary.json is untouched), only given its own re-run."""
    root = tmp_path / "study"
    s = _capped_study()
    s.convergence.cap_doublings = 0
    cells = study_lib.expand(s, root)
    assert study_lib.run_cells(cells, root, parallel=2) == (3, [])
    sweep_lib.finalize(cells, root)
    assert len(study_lib.collect(sweep_lib.resolve_all(cells, root), root)) == 2
    before = {c.id: (c.workdir(root) / "summary.json").read_bytes() for c in cells}
    cells = study_lib.expand(_capped_study(), root)
    # Amended, before the re-runs: no row from a choice among runs now being re-run.
    rows = study_lib.collect(sweep_lib.resolve_all(cells, root), root)
    assert not [r for r in rows if r.get("sweep_trials")]
    assert study_lib.run_cells(cells, root, parallel=2)[1] == []
    final = sweep_lib.resolve_all(cells, root)
    assert [c.attempt for c in final] == [1, 1, 1]
    assert all((c.workdir(root) / "summary.json").read_bytes() == before[c.id] for c in cells[:3])
    saved = json.loads((cells[2].workdir(root) / "config.json").read_text())["optim"]["lr"]
    assert json.loads((final[2].workdir(root) / "config.json").read_text())["optim"]["lr"] == saved
