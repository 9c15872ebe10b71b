"""The report states no verdict from arms that did not converge, and shows the sweep."""

from __future__ import annotations

import json

import pytest

from jtl import report as sr
from tests.test_report import EASY, HARD, grid

STUDY = {"name": "c", "title": "Convergence", "command": "x", "machine": "m",
         "wall_time_s": 10.0, "advise": []}  # fmt: skip
VERDICTS = ("wins with", "is ahead", "catches up", "does not catch up", "never significantly",
            "No transfer arm is significantly below")  # fmt: skip


def _summary(md: str, target: str) -> str:
    summary = md.split("## Summary")[1].split("## Test accuracy")[0]
    return summary.split(f"### {target}")[1].split("###")[0]


def _build(tmp_path, rows):
    paths = sr.build_report(STUDY, rows, tmp_path)
    return paths["md"].read_text(), json.loads(paths["json"].read_text())


def test_an_unconverged_arm_makes_its_verdicts_inconclusive(tmp_path):
    rows = grid("easy", EASY) + grid("hard", HARD)
    for r in rows:  # scratch hit its cap while still improving at full on "easy"
        if r["target"] == "easy" and r["arm"] == "scratch" and r["size"] == "full":
            r["converged"] = False
    md, data = _build(tmp_path, rows)
    easy = _summary(md, "easy")
    reason = "inconclusive: scratch not converged at full (raise max_epochs)"
    assert reason in easy and "catches up" not in easy
    assert f"Crossover: no verdict, {reason} (measured at full" in easy
    # The size where every arm converged keeps its verdict; the unconverged size has none.
    assert "At 10/class (100 training examples) finetune_full wins with 65.0" in easy
    assert "At full (5,000 training examples) finetune_full reached 89.5 ± 1.0 % and" in easy
    assert "No transfer arm is significantly below" not in easy
    assert data["crossover"]["easy"]["inconclusive"] == [reason]
    tables = md.split("## Test accuracy")[1].split("## Flags")[0]
    assert "90.0 ± 1.0 (n=3) †" in tables and f"† not converged. {reason}." in tables
    assert "Crossover: no verdict (" + reason in tables
    # "hard" converged everywhere: its verdicts stand.
    hard = _summary(md, "hard")
    assert "does not catch up" in hard and "inconclusive" not in hard
    assert "Negative transfer: linear_probe at 10/class" in hard


def test_negative_transfer_from_an_unconverged_arm_is_flagged_inconclusive(tmp_path):
    rows = grid("hard", HARD)
    for r in rows:
        if r["arm"] == "linear_probe" and r["size"] == "10/class":
            r["converged"] = False
    (flag,) = sr.negative_transfer(sr.aggregate(rows))
    reason = "inconclusive: linear_probe not converged at 10/class (raise max_epochs)"
    assert flag["status"] == reason and flag["verdict"] is False
    md, _ = _build(tmp_path, rows)
    assert f"| {reason} |" in md.split("### Negative transfer")[1]
    hard = _summary(md, "hard")
    assert f"Negative transfer: {reason}" in hard and "Negative transfer: linear_probe" not in hard


def test_equal_step_budget_says_so_instead_of_a_verdict(tmp_path):
    rows = grid("easy", EASY) + grid("hard", HARD)
    for r in rows:
        r["budget"], r["converged"] = "equal_steps", False
    md, data = _build(tmp_path, rows)
    assert "budget: equal-step budget, not converged" in md
    for target in ("easy", "hard"):
        text = _summary(md, target)
        assert "equal-step budget, not converged" in text
        assert not [v for v in VERDICTS if v in text], text
    assert "raise max_epochs" not in md  # not a convergence cap: the budget was equal steps
    flags = md.split("### Negative transfer")[1].split("### Overfitting")[0]
    assert "None detected" not in flags and "no verdict elsewhere: equal-step budget" in flags
    assert data["crossover"]["easy"]["inconclusive"] == ["equal-step budget, not converged"]


def test_rows_without_convergence_fields_carry_no_verdict():
    rows = grid("easy", EASY)
    for r in rows:
        del r["budget"], r["converged"]
    agg = sr.aggregate(rows)
    text = sr.summarize(agg, "easy", sr.crossover_by_target(agg)["easy"], [])
    assert "equal-step budget, not converged" in text and "wins" not in text


def test_tuning_section_and_cost_include_the_sweep(tmp_path):
    rows = grid("easy", EASY, wall=2.0, flops=1e9)
    for i, r in enumerate(rows):
        lr = 0.1 if i % 3 else 0.01
        r.update(chosen={"lr": lr}, sweep_trials=4, sweep_spread=0.05 if r["arm"] == "scratch"
                 else 0.02, tuning_wall_time_s=8.0, tuning_images_seen=4 * r["images_seen"],
                 tuning_train_flops=4e9)  # fmt: skip
    probe = grid("easy", {"linear_probe": {"full": 0.8}}, flops=None)
    for r in probe:  # not swept: its own L2 choice on validation is shown instead
        r.update(budget="closed_form", chosen={"probe": "logistic", "l2": 0.001}, probe_grid=2)
    md, data = _build(tmp_path, rows + probe)
    tuning = md.split("## Tuning")[1].split("## Cost")[0]
    assert "| linear_probe | full | probe logistic, l2 0.001 ×3 | 1 (own L2 grid) | – |" in tuning
    assert "| easy | scratch | 10/class | lr 0.01; lr 0.1 ×2 | 4 | 5.0 |" in tuning
    assert "| scratch | 9 | 5.0 | 5.0 |" in tuning and "| finetune_full | 9 | 2.0 | 2.0 |" in tuning
    cost = md.split("## Cost")[1]
    assert "trials / cell" in cost and "wall time incl. tuning" in cost
    assert "| scratch | 9 | 2.0 s | 3,200 | 1e+09 | 4 | 8.0 s | 12,800 | 4e+09 | 72.0 s |" in cost
    (c,) = [c for c in data["cost"] if c["arm"] == "scratch"]
    assert c["total_tuning_wall_time_s"] == pytest.approx(72.0)


def test_summary_spells_out_three_reasons_and_counts_the_rest():
    rows = grid("easy", EASY)
    for r in rows:
        r["converged"] = False
    agg = sr.aggregate(rows)
    text = sr.summarize(agg, "easy", sr.crossover_by_target(agg)["easy"], [])
    crossover = text.split("Crossover: no verdict, ")[1].split("(measured at")[0]
    assert crossover.count("inconclusive: ") == 3 and "and 3 more arm/size group(s)" in crossover
