"""The fitted advisor: benchmark table, predictor, leakage-free validation, coverage, CLI."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from jtl import advisor
from jtl.advisor import model as model_lib
from jtl.advisor import table as table_lib
from jtl.advisor import validation
from jtl.commands.cli import main

ARMS = ("linear_probe", "finetune_full", "lp_ft")


@pytest.fixture(autouse=True)
def _fewer_bootstrap_resamples(monkeypatch):
    """200 resamples instead of 2,000: the intervals' code is the same, the suite faster."""
    monkeypatch.setattr(validation, "BOOTSTRAP", 200)


def _bench(seed=0, sources=6, targets=7, noise=0.5):
    """Synthetic study rows and per-size score records with a known law: the gain of each arm
    is linear in the source's probe gap, with slopes and offsets that depend on the size."""
    rng = np.random.default_rng(seed)
    rows, records = [], []
    quality = {f"s{i}": rng.uniform(0, 0.4) for i in range(sources)}
    for t in range(targets):
        target = f"t{t}"
        affinity = rng.uniform(0.2, 1.0)
        for size, per_class in (("10/class", 10), ("100/class", 100)):
            base = 60 + 20 * (per_class == 100) + rng.normal(0, 2)
            for seed_ in (0, 1):
                acc = base + rng.normal(0, noise)
                rows.append(_row(target, size, "none", "scratch", acc, seed_))
            for s, q in quality.items():
                gap = q * affinity
                # The best arm changes with the gap and the size: lp_ft for small gaps at
                # 10/class, finetune_full for large ones, scratch for small gaps at 100/class.
                few = per_class == 10
                truth = {
                    "linear_probe": 40 * gap - 8 if few else 10 * gap - 10,
                    "finetune_full": 45 * gap - 4 if few else 10 * gap - 2,
                    "lp_ft": 25 * gap if few else 8 * gap - 3,
                }
                for arm, g in truth.items():
                    for seed_ in (0, 1):
                        rows.append(
                            _row(target, size, s, arm, base + g + rng.normal(0, noise), seed_)
                        )
                rec = {
                    "source": s, "target": target, "size": size, "dataset": f"base{t % 3}|x",
                    "per_class": per_class, "num_classes": 10, "source_accuracy": 0.9 + q / 10,
                    "probe_accuracy": 0.5 + gap, "knn_accuracy": 0.4 + gap + rng.normal(0, 0.02),
                    "logme": 0.1 + gap / 2, "leep": -1.5 + gap, "nce": -1.6 + gap,
                    "random_init": {"probe_accuracy": 0.5, "knn_accuracy": 0.4, "logme": 0.1,
                                    "leep": -1.5, "nce": -1.6},
                }  # fmt: skip
                records.append(rec)
    return rows, records


def _row(target, size, source, strategy, acc, seed):
    return {
        "target": target, "size": size, "source": source, "strategy": strategy,
        "arm": strategy, "seed": seed, "test_accuracy": acc / 100, "converged": True,
    }  # fmt: skip


def test_table_gains_intervals_and_significance():
    rows = [
        _row("t", "10/class", "none", "scratch", 50, 0),
        _row("t", "10/class", "none", "scratch", 52, 1),
        {**_row("t", "10/class", "none", "scratch", 40, 0), "arm": "scratch/cnn"},
        {**_row("t", "10/class", "none", "scratch", 41, 1), "arm": "scratch/cnn"},
        _row("t", "10/class", "a", "finetune_full", 60, 0),
        _row("t", "10/class", "a", "finetune_full", 62, 1),
        _row("t", "10/class", "a", "linear_probe", 50, 0),
        {**_row("t", "10/class", "a", "linear_probe", 53, 1), "converged": False},
    ]
    rec = {"source": "a", "target": "t", "size": "10/class", "per_class": 10}
    (e,) = table_lib.build(rows, [rec, {**rec, "size": "100/class"}, {"source": "a"}])
    assert e["scratch"]["arm"] == "scratch" and e["scratch"]["mean"] == pytest.approx(51)
    assert e["gain"]["finetune_full"] == pytest.approx(10)
    assert e["gain"]["linear_probe"] == pytest.approx(0.5)
    assert e["significant"] == {"finetune_full": True, "linear_probe": False}
    assert e["converged"] == {"finetune_full": True, "linear_probe": False}
    lo, hi = e["gain_ci"]["finetune_full"]
    assert lo < 10 < hi
    # The Welch interval agrees with scipy's own.
    ci = stats.ttest_ind([60, 62], [50, 52], equal_var=False).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ci.low, ci.high))


def test_a_saved_table_stands_in_for_its_runs_and_new_rows_add_to_it():
    rows, records = _bench()
    table = table_lib.build(rows, records)
    # Rebuilt from nothing but the saved table: the same entries.
    saved = json.loads(json.dumps(table))
    assert table_lib.build([], [], saved) == table
    # A later phase measures one more arm on one triple, without scratch rows of its own.
    e = table[0]
    new = [_row(e["target"], e["size"], e["source"], "l2_sp", a, i) for i, a in enumerate([90, 92])]
    merged = table_lib.build(new, [], saved)
    (m,) = [x for x in merged if (x["source"], x["target"], x["size"]) == (
        e["source"], e["target"], e["size"])]  # fmt: skip
    assert m["arms"]["l2_sp"]["mean"] == pytest.approx(91)
    assert m["gain"]["l2_sp"] == pytest.approx(91 - e["scratch"]["mean"])
    assert {k: m["arms"][k] for k in e["arms"]} == e["arms"]
    # A later phase re-measures scratch in a one-source study ("scratch", not "scratch@none"):
    # its rows replace the saved ones, never stand beside them (no best-of-both on test).
    old = json.loads(json.dumps(saved))
    for x in old:
        x["scratch"]["arm"] = "scratch@none"
    redo = [_row(e["target"], e["size"], "none", "scratch", a, i) for i, a in enumerate([1, 3])]
    key = (e["source"], e["target"], e["size"])
    (r,) = [
        x for x in table_lib.build(redo, [], old) if (x["source"], x["target"], x["size"]) == key
    ]
    assert (r["scratch"]["arm"], r["scratch"]["mean"]) == ("scratch", pytest.approx(2))
    assert [x for x in merged if x is not m] == [x for x in table if x is not e]


def test_weighted_tau_is_scipys_with_the_measured_ranking_first():
    rng = np.random.default_rng(1)
    for _ in range(20):
        pred, true = rng.normal(size=6), rng.normal(size=6)
        want = stats.weightedtau(true, pred).statistic
        assert validation._tau(list(pred), list(true), weighted=True) == pytest.approx(want)
        assert validation._tau(list(pred), list(true), weighted=False) == pytest.approx(
            stats.kendalltau(pred, true).statistic
        )
    assert math.isnan(validation._tau([1.0], [2.0], weighted=True))


def test_regret_on_a_hand_made_triple():
    e = {
        "scratch": {"mean": 70.0},
        "arms": {"linear_probe": {"mean": 65.0}, "finetune_full": {"mean": 78.0}},
    }
    assert validation.regret(e, "finetune_full") == 0
    assert validation.regret(e, "scratch") == 8
    assert validation.regret(e, "linear_probe") == 13
    assert validation.choose({"linear_probe": -2.0, "finetune_full": -0.1}) == "scratch"
    assert validation.choose({"linear_probe": 3.0, "finetune_full": 4.0}) == "finetune_full"
    table = [e, {**e, "scratch": {"mean": 90.0}}]
    table = [{**t, "target": f"t{i}"} for i, t in enumerate(table)]
    r = validation.regret_table(
        table,
        {"always scratch": ["scratch"] * 2, "always finetune_full": ["finetune_full"] * 2,
         "advisor": ["finetune_full", "scratch"]},
    )  # fmt: skip
    assert r["always scratch"]["value"] == pytest.approx(4.0)  # (8 + 0) / 2
    assert r["always finetune_full"]["value"] == pytest.approx(6.0)  # (0 + 12) / 2
    assert r["advisor"]["value"] == 0 and r["advisor"]["best_fixed"] == "always scratch"
    assert r["advisor"]["minus_best_fixed"]["value"] == pytest.approx(-4.0)


@pytest.mark.parametrize("scheme", list(validation.SCHEMES))
def test_cross_validation_never_sees_the_held_out_groups_results(scheme):
    rows, records = _bench()
    table = table_lib.build(rows, records)
    group_of = validation.SCHEMES[scheme]
    before = validation.cross_validate(table, group_of)
    held = group_of(table[0])
    # Change every measured outcome of one group wildly: its own out-of-fold predictions
    # (and intervals) must not move by a single bit; other groups' must.
    poisoned = [
        {**e, "gain": {a: g * -7 + 100 for a, g in e["gain"].items()}}
        if group_of(e) == held else e
        for e in table
    ]  # fmt: skip
    after = validation.cross_validate(poisoned, group_of)
    mine = [i for i, e in enumerate(table) if group_of(e) == held]
    others = [i for i, e in enumerate(table) if group_of(e) != held]
    assert mine and others
    for i in mine:
        assert after[i] == before[i]
    assert any(after[i]["pred"] != before[i]["pred"] for i in others)


def test_the_fit_also_never_passes_held_out_rows_to_the_fitter():
    rows, records = _bench(sources=3, targets=4)
    table = table_lib.build(rows, records)
    seen = []

    def spy(train, arms, names):
        seen.append({e["target"] for e in train})
        return model_lib.fit(train, arms, names)

    validation.cross_validate(table, validation.SCHEMES["leave-one-target-out"], fit=spy)
    targets = sorted({e["target"] for e in table})
    assert sorted(set(targets) - s for s in seen) == [{t} for t in targets]


def test_advisor_learns_the_law_and_beats_fixed_policies_on_it():
    rows, records = _bench()
    table = table_lib.build(rows, records)
    result = validation.validate(table)
    loto = result["schemes"]["leave-one-target-out"]
    assert loto["metrics"]["pearson"]["value"] > 0.8
    assert loto["metrics"]["weighted_tau_sources"]["value"] > 0.6
    lo, hi = loto["metrics"]["pearson"]["ci"]
    assert lo <= loto["metrics"]["pearson"]["value"] <= hi
    regret = loto["regret"]
    best = regret["advisor"]["best_fixed"]
    assert regret["advisor"]["value"] < regret[best]["value"]
    assert regret["oracle"]["value"] == 0
    assert set(regret) >= {
        "always scratch",
        "LogME alone",
        "k-NN alone",
        "source accuracy (static)",
    }
    # "Probe or scratch?" on every triple: each policy picks between those two arms only.
    two = loto["regret_probe_or_scratch"]
    assert set(two) >= {"advisor", "always scratch", "always linear_probe", "oracle"}
    assert two["oracle"]["value"] == 0
    choices = [validation.choose({"linear_probe": p["pred"]["linear_probe"]})
               for p in loto["predictions"]]  # fmt: skip
    mine = np.mean([
        max(e["scratch"]["mean"], e["arms"]["linear_probe"]["mean"])
        - (e["scratch"]["mean"] if c == "scratch" else e["arms"]["linear_probe"]["mean"])
        for e, c in zip(table, choices, strict=True)
    ])  # fmt: skip
    assert two["advisor"]["value"] == pytest.approx(mine)


def test_advice_refuses_outside_the_benchmark_and_says_why():
    rows, records = _bench()
    table = table_lib.build(rows, records)
    fitted = {"model": model_lib.fit(table, ARMS), "modalities": ["image"]}
    inside = advisor.advice(fitted, records[0])
    assert inside["covered"] and set(inside["gains"]) == set(ARMS)
    g = inside["gains"]["finetune_full"]
    assert g["low"] < g["gain"] < g["high"]
    assert inside["recommendation"] in (*ARMS, "scratch")
    far = {**records[0], "probe_accuracy": 5.0}
    out = advisor.advice(fitted, far)
    assert not out["covered"] and any("probe_gap" in r for r in out["reasons"])
    text = advisor.advice(fitted, {**records[0], "modality": "text"})
    assert not text["covered"] and "no text rows" in text["reasons"][-1]


def test_catch_up_size_within_or_beyond_the_measured_sizes():
    rows, records = _bench()
    table = table_lib.build(rows, records)
    model = model_lib.fit(table, ARMS)
    weak = min(records, key=lambda r: r["probe_accuracy"])
    strong = max(records, key=lambda r: r["probe_accuracy"])
    assert advisor.catch_up(model, {**strong, "per_class": 10})["per_class"] is None
    assert "beyond the sizes measured (up to 100" in advisor.catch_up(model, strong)["text"]
    assert advisor.catch_up(model, {**weak, "per_class": 10})["per_class"] in (10, 20, 50, 100)


def test_advisor_fit_cli_writes_model_and_validation(tmp_path, capsys):
    rows, records = _bench(sources=4, targets=5)
    study = tmp_path / "bench"
    study.mkdir()
    (study / "results.json").write_text(json.dumps({"rows": rows, "study": {"advise": records}}))
    out, rep = tmp_path / "fitted.json", tmp_path / "rep"
    assert (
        main(["advisor", "fit", "--study", str(study), "--out", str(out), "--report", str(rep)])
        == 0
    )
    fitted = json.loads(out.read_text())
    assert fitted["provenance"]["entries"] == 40
    assert set(fitted["model"]["arms"]) == set(ARMS)
    assert "Kendall tau" in (rep / "benchmark.md").read_text()
    assert "## What was measured" in (rep / "benchmark.md").read_text()
    assert (rep / "benchmark_gain_heatmap.png").exists()
    assert (rep / "benchmark_predicted_vs_measured.png").exists()
    assert "leave-one-target-out" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.json").write_text(json.dumps({"rows": [], "study": {}}))
    assert main(["advisor", "fit", "--study", str(empty), "--out", str(tmp_path / "x.json")]) == 2


def test_reproducibility_ranks_seed_0_against_seed_1_whatever_the_row_order():
    rows, records = _bench(noise=0.0)  # both seeds measure the same gains
    table = table_lib.build(rows[::-1], records)  # seeds align by their ids, not row order
    r = validation.reproducibility(table)
    assert r["entries"] == len(table)
    assert r["kendall_tau_sources"]["value"] == pytest.approx(1.0)
    assert r["implied_ceiling_kendall_tau_sources"] == pytest.approx(1.0)
    # Seed 1's gains the negative of seed 0's: every ranking flips.
    for e in table:
        sc = e["scratch"]["values"][0]
        for s in e["arms"].values():
            s["values"] = sorted(s["values"])  # equal values: any order
            k1 = s["seeds"].index(1)
            s["values"][k1] = 2 * sc - s["values"][1 - k1]
    r = validation.reproducibility(table)
    assert r["kendall_tau_sources"]["value"] == pytest.approx(-1.0)
    assert r["weighted_tau_sources"]["value"] == pytest.approx(-1.0)
    assert math.isnan(r["implied_ceiling_kendall_tau_sources"])
    # A triple with one seed has no seed-vs-seed agreement to give.
    one = [{**e, "scratch": {**e["scratch"], "n": 1}} for e in table]
    assert validation.reproducibility(one) == {"entries": 0}


def test_measured_summary_on_a_hand_made_table():
    from jtl.report.benchmark import measured_summary

    def entry(source, target, size, gains, sig=(), capped=()):
        return {"source": source, "target": target, "size": size, "scratch": {"mean": 80.0},
                "gain": gains, "significant": {a: a in sig for a in gains},
                "converged": {a: a not in capped for a in gains}}  # fmt: skip

    table = [
        entry(
            "a",
            "t",
            "10/class",
            {"lp_ft": 5.0, "linear_probe": -2.0},
            sig=("lp_ft",),
            capped=("lp_ft",),
        ),  # fmt: skip
        entry("b", "t", "10/class", {"lp_ft": -1.0, "linear_probe": 3.0}),
        entry("a", "u", "10/class", {"lp_ft": 2.0}),
        entry("a", "t", "100/class", {"lp_ft": 0.0}),
    ]
    m = measured_summary(table, ["linear_probe", "lp_ft"])
    lp = next(r for r in m["by_arm"] if r["arm"] == "lp_ft" and r["size"] == "10/class")
    assert lp["triples"] == 3 and lp["mean_gain"] == pytest.approx(2.0)
    assert (lp["positive"], lp["significant"], lp["best"]) == (2, 1, (5.0, "a", "t"))
    assert lp["not_converged"] == 1
    assert [r["size"] for r in m["by_arm"]] == ["10/class", "10/class", "100/class"]
    t10 = next(r for r in m["by_target"] if (r["target"], r["size"]) == ("t", "10/class"))
    assert t10 == {"target": "t", "size": "10/class", "scratch": 80.0,
                   "linear_probe": (3.0, "b"), "lp_ft": (5.0, "a")}  # fmt: skip
    u10 = next(r for r in m["by_target"] if r["target"] == "u")
    assert "linear_probe" not in u10  # not measured there: no number
