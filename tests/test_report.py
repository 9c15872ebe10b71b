"""Study report on synthetic cells: tables, crossover, flags, curves, advisor and the files."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from scipy import stats

from jtl import report as sr

SIZES = {"10/class": 100, "100/class": 1000, "full": 5000}
OFFSETS = (-0.01, 0.0, 0.01)  # per seed: std over 3 seeds = 0.01 exactly


def curve(final_acc: float, steps: int = 100, rising: bool = True, overfit_at: int | None = None):
    """Val accuracy from 0.1 (scratch-like) towards final_acc; loss mirrors it."""
    xs = np.linspace(steps / 10, steps, 10)
    frac = xs / steps if rising else np.ones_like(xs)
    acc = 0.1 + (final_acc - 0.1) * frac
    val_loss = 2.0 - acc
    if overfit_at is not None:
        val_loss = np.where(xs > overfit_at, val_loss + 0.05 * (xs - overfit_at), val_loss)
    train = [[float(s), float(2.0 - a - 0.1), float(a)] for s, a in zip(xs, acc, strict=True)]
    val = [[float(s), float(v), float(a)] for s, v, a in zip(xs, val_loss, acc, strict=True)]
    return {"train": train, "val": val}


def row(target, arm, size, seed, acc, *, strategy=None, source="imagenet", model="resnet20",
        wall=1.0, flops=1e9, curve_=None, fold=-1):  # fmt: skip
    strategy = strategy or ("scratch" if arm.startswith("scratch") else arm)
    if strategy == "scratch":
        source = "none"
    return {
        "cell": f"{target}-{arm}-{size}-s{seed}-f{fold}",
        "target": target, "source": source, "strategy": strategy, "model": model, "arm": arm,
        "size": size, "train_examples": SIZES[size], "per_class": SIZES[size] / 10,
        "seed": seed, "fold": fold, "test_accuracy": acc, "val_accuracy": acc,
        "test_loss": 2 - acc, "val_loss": 2 - acc, "steps": 100, "wall_time_s": wall,
        "images_seen": 100 * 32, "train_flops": flops, "early_stopped_step": None,
        "budget": "converged", "converged": True,
        "curve": curve_ if curve_ is not None else curve(acc),
    }  # fmt: skip


def grid(target, means: dict[str, dict[str, float]], **kw) -> list[dict]:
    """Three seeds per (arm, size) around the given means."""
    return [
        row(target, arm, size, seed, m + off, **kw)
        for arm, by_size in means.items()
        for size, m in by_size.items()
        for seed, off in enumerate(OFFSETS)
    ]


def point(size, n_ex, mean, std=0.0, n=1):
    return {"size": size, "train_examples": n_ex, "mean": mean, "std": std, "n": n}


# --------------------------------------------------------------------------- tables


def test_aggregate_and_table_mean_std_bold():
    rows = [row("t", "scratch", "10/class", s, a) for s, a in enumerate([0.5, 0.6, 0.7])]
    rows += [row("t", "finetune_full", "10/class", s, 0.8) for s in range(3)]
    rows += [row("t", "scratch", "full", s, 0.9) for s in range(2)]
    rows += [row("t", "finetune_full", "full", s, 0.9) for s in range(2)]  # tie: both bold
    agg = sr.aggregate(rows)
    a = next(a for a in agg if a["arm"] == "scratch" and a["size"] == "10/class")
    assert a["n"] == 3
    assert a["mean"] == pytest.approx(0.6)
    assert a["std"] == pytest.approx(0.1)
    header, table = sr.accuracy_table(agg, "t")
    # Columns ordered by training examples ("full" sorts after "10/class" anyway: check labels).
    assert header == ["arm", "10/class (100 ex.)", "full (5,000 ex.)"]
    assert table[0][0] == "scratch"  # scratch arms first
    assert table[0][1] == ("60.0 ± 10.0 (n=3)", False)
    assert table[1] == ["finetune_full", ("80.0 ± 0.0 (n=3)", True), ("90.0 ± 0.0 (n=2)", True)]
    assert table[0][2] == ("90.0 ± 0.0 (n=2)", True)


def test_sizes_ordered_by_examples_not_label():
    rows = [row("t", "scratch", "full", 0, 0.9), row("t", "scratch", "10/class", 0, 0.5)]
    rows.append({**row("t", "scratch", "10/class", 0, 0.5), "size": "5%", "train_examples": 250})
    assert sr.sizes_of(sr.aggregate(rows), "t") == ["10/class", "5%", "full"]


# --------------------------------------------------------------------------- crossover


def test_crossover_at_known_size():
    scratch = [point("a", 10, 0.30), point("b", 100, 0.50), point("c", 1000, 0.70),
               point("d", 10000, 0.80)]  # fmt: skip
    transfer = [point("a", 10, 0.60), point("b", 100, 0.65), point("c", 1000, 0.70),
                point("d", 10000, 0.75)]  # fmt: skip
    c = sr.crossover(scratch, transfer)
    assert c["reached"] is True
    assert (c["size"], c["train_examples"]) == ("c", 1000)
    assert c["gap_at_largest"] == pytest.approx(0.05)


def test_crossover_needs_scratch_to_stay_caught_up():
    # Scratch ahead at "a", behind at "b", then caught up: the crossover is "c", not "a".
    scratch = [point("a", 10, 0.7), point("b", 100, 0.5), point("c", 1000, 0.8)]
    transfer = [point("a", 10, 0.6), point("b", 100, 0.6), point("c", 1000, 0.8)]
    assert sr.crossover(scratch, transfer)["size"] == "c"


def test_crossover_tolerance_is_pooled_standard_error():
    # At "b" scratch is 0.02 below, pooled SE = sqrt(2 * 0.03² / 3) = 0.0245: not worse.
    scratch = [point("a", 10, 0.30, 0.03, 3), point("b", 100, 0.63, 0.03, 3),
               point("c", 1000, 0.70, 0.03, 3)]  # fmt: skip
    transfer = [point("a", 10, 0.60, 0.03, 3), point("b", 100, 0.65, 0.03, 3),
                point("c", 1000, 0.70, 0.03, 3)]  # fmt: skip
    c = sr.crossover(scratch, transfer)
    assert c["size"] == "b"
    assert c["per_size"][1]["tolerance"] == pytest.approx(np.sqrt(2 * 0.03**2 / 3))
    assert sr.crossover(scratch, transfer, tolerance=0.0)["size"] == "c"


def test_crossover_not_reached():
    scratch = [point("a", 10, 0.3), point("b", 100, 0.5), point("c", 1000, 0.6)]
    transfer = [point("a", 10, 0.6), point("b", 100, 0.65), point("c", 1000, 0.7)]
    c = sr.crossover(scratch, transfer)
    assert c["reached"] is False
    assert c["size"] is None and c["train_examples"] is None
    assert c["gap_at_largest"] == pytest.approx(-0.1)


# --------------------------------------------------------------------------- flags


def test_negative_transfer_detected_with_three_seeds():
    rows = grid("t", {"scratch": {"10/class": 0.70}, "finetune_full": {"10/class": 0.50}})
    flags = sr.negative_transfer(sr.aggregate(rows))
    assert len(flags) == 1
    f = flags[0]
    assert (f["arm"], f["scratch_arm"], f["status"]) == ("finetune_full", "scratch", "significant")
    assert f["gap"] == pytest.approx(-0.2)
    expected = stats.ttest_ind([0.49, 0.5, 0.51], [0.69, 0.7, 0.71], equal_var=False,
                               alternative="less").pvalue  # fmt: skip
    assert f["p_value"] == pytest.approx(expected)
    assert f["p_value"] < 0.05


def test_negative_transfer_not_flagged_when_equal_or_better():
    rows = grid("t", {"scratch": {"10/class": 0.70}, "finetune_full": {"10/class": 0.70},
                      "lp_ft": {"10/class": 0.80}})  # fmt: skip
    assert sr.negative_transfer(sr.aggregate(rows)) == []


def test_negative_transfer_single_run_unconfirmed():
    rows = [
        row("t", "scratch", "10/class", 0, 0.70),
        row("t", "finetune_full", "10/class", 0, 0.65),
        row("t", "lp_ft", "10/class", 0, 0.69),
    ]
    flags = sr.negative_transfer(sr.aggregate(rows))
    assert [(f["arm"], f["status"], f["p_value"]) for f in flags] == [
        ("finetune_full", "unconfirmed (1 run)", None)
    ]


def test_negative_transfer_compares_with_same_model_scratch():
    rows = grid("t", {"scratch/big": {"full": 0.90}}, model="big")
    rows += grid("t", {"scratch/small": {"full": 0.60}}, model="small")
    rows += grid("t", {"finetune_full/small": {"full": 0.70}}, model="small", strategy="finetune")
    # 0.70 is below the best scratch arm (big) but above the same-model scratch: no flag.
    assert sr.negative_transfer(sr.aggregate(rows)) == []


def test_overfitting_detected_with_start_step():
    c = curve(0.8, steps=100, overfit_at=50)
    f = sr.detect_overfitting(c)
    assert f is not None
    assert f["start_step"] == 50
    assert f["val_loss_end"] > 1.1 * f["val_loss_min"]
    assert f["train_loss_end"] < f["train_loss_at_start"]


def test_overfitting_not_on_clean_or_mild_curves():
    assert sr.detect_overfitting(curve(0.8)) is None
    assert sr.detect_overfitting(None) is None
    # Val loss up only 5 % from its minimum: below the 10 % margin.
    mild = {"train": [[1, 1.0, 0], [2, 0.9, 0], [3, 0.8, 0]],
            "val": [[1, 1.0, 0], [2, 0.80, 0], [3, 0.84, 0]]}  # fmt: skip
    assert sr.detect_overfitting(mild) is None
    # Val loss up 25 % but train loss rising too: divergence, not overfitting.
    diverging = {"train": [[1, 1.0, 0], [2, 0.9, 0], [3, 1.2, 0]],
                 "val": [[1, 1.0, 0], [2, 0.80, 0], [3, 1.0, 0]]}  # fmt: skip
    assert sr.detect_overfitting(diverging) is None
    assert sr.detect_overfitting({**diverging, "train": [[1, 1.0, 0], [3, 0.5, 0]]}) is not None


def test_overfitting_summary_counts_cells():
    rows = grid("t", {"scratch": {"10/class": 0.6}})
    rows[0]["curve"] = curve(0.6, overfit_at=40)
    rows[1]["curve"] = curve(0.6, overfit_at=60)
    cells, summary = sr.overfitting_flags(rows)
    assert sorted(c["start_step"] for c in cells) == [40, 60]
    assert len(summary) == 1
    assert (summary[0]["flagged"], summary[0]["n"], summary[0]["median_start_step"]) == (2, 3, 50)


# --------------------------------------------------------------------------- learning curves


def test_still_improving_and_head_start():
    steps = np.arange(10, 110, 10)
    assert sr.still_improving(steps, 0.5 + 0.004 * steps)["improving"] is True
    assert sr.still_improving(steps, 0.5 + 0.004 * steps)["gain"] == pytest.approx(0.1)
    assert sr.still_improving(steps, np.full(10, 0.7))["improving"] is False
    rows = grid("t", {"scratch": {"10/class": 0.6}, "finetune_full": {"10/class": 0.8}})
    for r in rows:
        if r["arm"] == "finetune_full":
            r["curve"] = curve(r["test_accuracy"], rising=False)  # flat at final accuracy
    (lc,) = sr.learning_curves(rows, sr.aggregate(rows))
    assert lc["scratch_improving"]["improving"] is True
    assert lc["head_start"]["transfer_first"] == pytest.approx(0.8)
    assert lc["head_start"]["scratch_first"] == pytest.approx(0.15)  # 0.1 + 0.5 * 0.1
    assert lc["head_start"]["points"] == pytest.approx(65.0)


# --------------------------------------------------------------------------- advisor


def advise_pairs(n):
    logme = [0.1, 0.5, 0.3, 0.9, 0.2][:n]
    gains = [0.02, 0.10, 0.15, 0.20, -0.05][:n]
    rows, advise = [], []
    for i, (lm, g) in enumerate(zip(logme, gains, strict=True)):
        target = f"t{i}"
        rows += grid(target, {"scratch": {"10/class": 0.5, "full": 0.8}})
        rows += grid(target, {"finetune_full": {"10/class": 0.5 + g, "full": 0.8 + g / 2}},
                     source="src")  # fmt: skip
        rows += grid(target, {"finetune_other": {"10/class": 0.1}}, source="other")
        scores = {"logme": lm, "leep": -lm, "nce": 1.0, "hscore": float(i), "knn_accuracy": 0.5}
        advise.append({"source": "src", "target": target, **scores, "recommendation": "lp_ft"})
    return advise, gains, sr.aggregate(rows)


def test_advise_vs_gain_spearman_matches_scipy():
    advise, gains, agg = advise_pairs(5)
    out = sr.advise_vs_gain(advise, agg)
    assert [p["gain_smallest"] for p in out["pairs"]] == pytest.approx(gains)
    assert [p["gain_mean"] for p in out["pairs"]] == pytest.approx([0.75 * g for g in gains])
    logme = [a["logme"] for a in advise]
    expected = stats.spearmanr(logme, gains).statistic
    r = out["spearman"]["logme"]["gain_smallest"]
    assert (r["rho"], r["n"], r["note"]) == (pytest.approx(expected), 5, None)
    assert out["spearman"]["leep"]["gain_mean"]["rho"] == pytest.approx(-expected)
    assert out["spearman"]["nce"]["gain_mean"]["note"] == "n/a (constant input)"


def test_spearman_p_is_exact_for_few_pairs():
    """n = 3, perfect order: 2 of the 6 orderings reach |rho| = 1, so p = 1/3 (not scipy's 0)."""
    r = sr.spearman([0.1, 0.5, 0.9], [1.0, 2.0, 7.0])
    assert r["rho"] == pytest.approx(1.0) and r["p"] == pytest.approx(1 / 3)
    r = sr.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])  # rho = 0.8: 16 of 120 orderings as extreme
    assert r["rho"] == pytest.approx(0.8) and r["p"] == pytest.approx(16 / 120)


def test_advise_vs_gain_needs_three_pairs():
    advise, _, agg = advise_pairs(2)
    r = sr.advise_vs_gain(advise, agg)["spearman"]["logme"]["gain_mean"]
    assert (r["rho"], r["n"], r["note"]) == (None, 2, "n/a (need >= 3 pairs)")


# --------------------------------------------------------------------------- full report

EASY = {  # scratch catches up at 100/class
    "scratch": {"10/class": 0.40, "100/class": 0.72, "full": 0.90},
    "finetune_full": {"10/class": 0.65, "100/class": 0.72, "full": 0.895},
}
HARD = {  # scratch never catches up; linear probe hurts at 10/class
    "scratch": {"10/class": 0.30, "100/class": 0.40, "full": 0.50},
    "finetune_full": {"10/class": 0.55, "100/class": 0.60, "full": 0.70},
    "linear_probe": {"10/class": 0.10, "100/class": 0.45, "full": 0.52},
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rows = grid("easy", {"scratch": EASY["scratch"]}, wall=10.0, flops=4e9)
    rows += grid("easy", {"finetune_full": EASY["finetune_full"]}, wall=4.0, flops=1e9)
    rows += grid("hard", {"scratch": HARD["scratch"]}, wall=10.0, flops=4e9)
    rows += grid("hard", {"finetune_full": HARD["finetune_full"]}, wall=5.0, flops=2e9)
    rows += grid("hard", {"linear_probe": HARD["linear_probe"]}, wall=1.0, flops=None)
    rows[0]["curve"] = curve(0.39, overfit_at=50)
    study = {"name": "toy", "title": "Toy study", "command": "jtl study run configs/toy.py",
             "machine": "test box", "wall_time_s": 300.0,
             "advise": [{"source": "imagenet", "target": t, "logme": lm, "leep": -1.0,
                         "nce": -0.5, "hscore": 2.0, "knn_accuracy": 0.4,
                         "recommendation": "lp_ft"}
                        for t, lm in (("easy", 1.0), ("hard", 2.0))]}  # fmt: skip
    outdir = tmp_path_factory.mktemp("study")
    return sr.build_report(study, rows, outdir), rows


def test_report_files(report):
    paths, rows = report
    for key in ("md", "html", "csv", "json", "accuracy_plot", "curves_plot"):
        assert paths[key].exists() and paths[key].stat().st_size > 0, key
    assert paths["accuracy_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_html_self_contained(report):
    text = report[0]["html"].read_text()
    assert text.count("data:image/png;base64,") == 2
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", text, flags=re.I)
    assert refs and all(r.startswith("data:") for r in refs)
    assert "<link" not in text and "<script" not in text


def test_results_csv_one_row_per_cell(report):
    paths, rows = report
    with paths["csv"].open() as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(rows) == 45
    assert "curve" not in got[0]
    assert sorted(r["cell"] for r in got) == sorted(r["cell"] for r in rows)
    lp = next(r for r in got if r["arm"] == "linear_probe")
    assert lp["train_flops"] == ""


def test_results_json(report):
    paths, rows = report
    data = json.loads(paths["json"].read_text())
    assert set(data) >= {"study", "rows", "aggregate", "crossover", "flags", "advise_vs_gain"}
    assert len(data["rows"]) == len(rows)
    assert data["crossover"]["easy"]["size"] == "100/class"
    assert data["crossover"]["easy"]["train_examples"] == 1000
    assert data["crossover"]["hard"]["reached"] is False
    assert data["crossover"]["hard"]["gap_at_largest"] == pytest.approx(-0.2)
    neg = data["flags"]["negative_transfer"]
    assert [(f["target"], f["arm"], f["size"]) for f in neg] == [
        ("hard", "linear_probe", "10/class")
    ]
    assert [(c["cell"], c["start_step"]) for c in data["flags"]["overfitting_cells"]] == [
        (rows[0]["cell"], 50)
    ]
    pairs = data["advise_vs_gain"]["pairs"]
    assert [p["gain_smallest"] for p in pairs] == pytest.approx([0.25, 0.25])
    assert data["advise_vs_gain"]["spearman"]["logme"]["gain_mean"]["note"] == (
        "n/a (need >= 3 pairs)"
    )


def test_summary_cites_numbers(report):
    md = report[0]["md"].read_text()
    summary = md.split("## Summary")[1].split("## Test accuracy")[0]
    easy = summary.split("### easy")[1].split("### hard")[0]
    # Winner at the smallest size: finetune_full 65.0 ± 1.0 vs scratch 40.0 ± 1.0, 25 points.
    assert "finetune_full wins with 65.0 ± 1.0 % test accuracy vs 40.0 ± 1.0 % for scratch" in easy
    assert "25.0 points ahead" in easy
    # Largest size: scratch 90.0 vs finetune 89.5 (not significant: no negative transfer flag).
    assert "scratch is ahead, not significantly, with 90.0 ± 1.0 % test accuracy vs 89.5" in easy
    assert "Scratch catches up from 100/class (1,000 examples)" in easy
    assert "0.40× the wall time" in easy and "0.25× the training FLOPs" in easy
    hard = summary.split("### hard")[1]
    assert "does not catch up" in hard and "20.0 points behind" in hard
    assert "Negative transfer: linear_probe at 10/class (-20.0 points" in hard


def test_report_md_order_and_sections(report):
    md = report[0]["md"].read_text()
    assert md.startswith("# Toy study\n")
    order = ["jtl study run configs/toy.py", "test box", "5.0 min", "## Summary",
             "## Test accuracy", "accuracy_vs_examples.png", "## Flags", "## Learning curves",
             "## Cost", "## Advisor vs measured"]  # fmt: skip
    pos = [md.index(s) for s in order]
    assert pos == sorted(pos)
    assert "| **65.0 ± 1.0 (n=3)** |" in md
    assert "| linear_probe | 9 |" in md.split("## Cost")[1]  # cells of the arm


def test_empty_rows_still_writes_report(tmp_path):
    study = {"name": "e", "title": "Empty", "command": "x", "machine": "m", "wall_time_s": 0.0,
             "advise": []}  # fmt: skip
    paths = sr.build_report(study, [], tmp_path)
    assert "No finished cells" in paths["md"].read_text()
    assert json.loads(paths["csv"].with_suffix(".json").read_text())["rows"] == []


def test_folds_pool_with_seeds():
    rows = [
        row("t", "scratch", "full", s, 0.5 + 0.01 * f, fold=f) for s in range(2) for f in range(3)
    ]
    (a,) = sr.aggregate(rows)
    assert a["n"] == 6
    assert a["mean"] == pytest.approx(0.51)
    assert a["std"] == pytest.approx(np.std([0.5, 0.51, 0.52] * 2, ddof=1))


def test_report_without_transfer_or_curves(tmp_path):
    rows = [row("t", "scratch", size, 0, 0.5, flops=None, curve_={}) for size in SIZES]
    rows[0]["val_loss"] = float("nan")
    study = {"name": "s", "title": "Scratch only", "command": "x", "machine": "m",
             "wall_time_s": 1.0, "advise": []}  # fmt: skip
    paths = sr.build_report(study, rows, tmp_path)
    md = paths["md"].read_text()
    assert "Crossover: n/a (no transfer arm)." in md
    assert "only scratch was run: 50.0 % test accuracy" in md
    assert "negative transfer and cost: n/a (no transfer arm in this study)" in md
    assert "significantly below scratch" not in md  # nothing claimed without a comparison
    assert "curves_plot" not in paths
    data = json.loads(paths["json"].read_text())  # strict JSON: NaN became null
    assert data["rows"][0]["val_loss"] is None


def test_summary_without_scratch_ranks_the_transfer_arms(tmp_path):
    """A study with no scratch arm (e.g. PEFT vs probe vs fine-tuning) ranks what it ran
    instead of claiming that only its best arm was run."""
    rows = grid("t", {"lora": {"full": 0.6}, "finetune_full": {"full": 0.7}})
    study = {"name": "s", "title": "No scratch", "command": "x", "machine": "m",
             "wall_time_s": 1.0, "advise": []}  # fmt: skip
    md = sr.build_report(study, rows, tmp_path)["md"].read_text()
    assert "the best transfer arm is finetune_full with 70.0" in md
    assert "(then lora 60.0" in md and "no scratch arm was run" in md
    assert "only finetune_full was run" not in md
    assert "negative transfer and cost: n/a (no scratch arm in this study)" in md
    assert "significantly below scratch" not in md


def test_calibration_section_tables_and_pools_reliability(tmp_path):
    from jtl.evaluation import calibration
    from jtl.report.calibration import calibration_table, pooled_reliability

    rng = np.random.default_rng(0)
    rows = grid("digits", {"scratch": {"10/class": 0.8}, "finetune_full": {"10/class": 0.9}})
    for r in rows:
        logits = rng.normal(0, 2, (200, 10))
        labels = rng.integers(0, 10, 200)
        r.update(calibration.summary_fields({"val": (logits, labels), "test": (logits, labels)}))
    rows[0].pop("test_ece")  # a run from before calibration: left out, not a crash
    table = calibration_table(rows)
    ft = next(a for a in table if a["arm"] == "finetune_full")
    runs = [r for r in rows if r["arm"] == "finetune_full"]
    assert ft["n"] == 3 and ft["test_ece"] == pytest.approx(np.mean([r["test_ece"] for r in runs]))
    pooled = pooled_reliability(runs)
    assert sum(pooled["count"]) == 600
    # Pooled accuracy per bin = correct / count over all runs' examples in that bin.
    b = next(i for i, c in enumerate(pooled["count"]) if c)
    want = sum(r["test_reliability"]["accuracy"][b] * r["test_reliability"]["count"][b]
               for r in runs if r["test_reliability"]["count"][b]) / pooled["count"][b]  # fmt: skip
    assert pooled["accuracy"][b] == pytest.approx(want)
    paths = sr.build_report({"title": "t"}, rows, tmp_path)
    text = paths["md"].read_text()
    assert "## Calibration" in text and "→" in text
    assert paths["reliability_plot"].exists()


def test_shift_section_effective_robustness_and_wise_curves(tmp_path):
    """Effective robustness is OOD accuracy above the scratch-probe line: a hand-made example
    (scratch (0.6, 0.3), probe (0.8, 0.5): line ood = id - 0.3; finetune at (0.9, 0.7): +0.1)."""
    from jtl.report.shift import shift_points, wise_curves

    means = {"scratch": 0.6, "linear_probe": 0.8, "finetune_full": 0.9}
    ood = {"scratch": 0.3, "linear_probe": 0.5, "finetune_full": 0.7}
    rows = []
    for arm, m in means.items():
        for seed in range(2):
            r = row("digits", arm, "10/class", seed, m)
            r["shifts"] = {"mnist": {"accuracy": ood[arm], "ece": 0.1}}
            rows.append(r)
    rows[-1]["wise_ft"] = [
        {"alpha": a, "val_accuracy": 0.5 + a / 4, "shift_accuracy:mnist": 0.4} for a in (0, 0.5, 1)
    ]
    points = {p["arm"]: p for p in shift_points(rows)}
    assert points["finetune_full"]["er"] == pytest.approx(0.1)
    assert points["linear_probe"]["er"] == pytest.approx(0.0)
    assert points["scratch"]["n"] == 2 and points["scratch"]["id"] == pytest.approx(0.6)
    (curve,) = wise_curves(rows)
    assert curve["alpha"] == [0.0, 0.5, 1.0] and curve["val_accuracy"][2] == pytest.approx(0.75)
    paths = sr.build_report({"title": "t"}, rows, tmp_path)
    text = paths["md"].read_text()
    assert "## Distribution shift" in text and "+10.0" in text
    assert paths["ood_plot"].exists() and paths["wise_plot"].exists()


def test_layer_transfer_section_reads_anb_arms(tmp_path):
    from jtl.report.layer_transfer import layer_transfer_table

    rows = grid("mnist59", {"scratch": {"100/class": 0.9}, "A1B": {"100/class": 0.92},
                            "A1B+": {"100/class": 0.93}, "A2B": {"100/class": 0.8}},
                strategy="layer_transfer")  # fmt: skip
    for r in rows:
        if r["arm"] == "scratch":
            r["strategy"] = "scratch"
    (e,) = layer_transfer_table(rows)
    assert e["n"] == [1, 2] and e["scratch"] == pytest.approx(0.9)
    assert e["AnB"] == pytest.approx([0.92, 0.8]) and e["AnB+"][1] is None
    paths = sr.build_report({"title": "t"}, rows, tmp_path)
    assert "## Transferred blocks" in paths["md"].read_text() and paths["layer_plot"].exists()
