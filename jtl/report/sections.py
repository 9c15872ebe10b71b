"""Report sections after the summary: accuracy and crossover, flags, curves, cost, advisor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jtl.report.advisor import SCORES
from jtl.report.aggregate import targets_of
from jtl.report.convergence import blockers, join
from jtl.report.document import _Doc, _ex, _fmt, _fmt_time, accuracy_table
from jtl.report.plots import plot_accuracy, plot_accuracy_vs_cost, plot_learning_curves


def _results_sections(
    doc: _Doc,
    agg: Sequence[dict],
    crosses: dict[str, dict],
    paths: dict[str, Path],
    negative: Sequence[dict],
    over_summary: Sequence[dict],
    n_over: int,
    rows: Sequence[dict],
) -> None:
    """The results in reading order: test accuracy with crossover, then the flags."""
    _accuracy_section(doc, agg, crosses, paths)
    doc.h(2, "Flags")
    _negative_transfer_section(doc, agg, negative)
    _overfitting_section(doc, over_summary, n_over, rows)


def _accuracy_section(
    doc: _Doc, agg: Sequence[dict], crosses: dict[str, dict], paths: dict[str, Path]
) -> None:
    """One accuracy table and crossover line per target, then the accuracy plot."""
    doc.h(2, "Test accuracy")
    doc.p("Test accuracy in %, mean ± std over seeds and folds (n runs); best per column in bold.")
    for t in targets_of(agg):
        doc.h(3, t)
        doc.table(*accuracy_table(agg, t))
        c = crosses[t]
        if c.get("inconclusive"):
            doc.p(f"† not converged. {join(c['inconclusive'])}.")
        doc.p(_crossover_line(c))
    plot_accuracy(agg, crosses, paths["accuracy_plot"])
    doc.img(paths["accuracy_plot"], "test accuracy vs training examples")


def _crossover_line(c: dict) -> str:
    """The crossover sentence under a target's table: a note, no verdict, reached or not."""
    if c.get("reached") is None:
        return f"Crossover: {c.get('note')}."
    if c.get("inconclusive"):
        return (
            f"Crossover: no verdict ({join(c['inconclusive'])}); measured gap at "
            f"{c['largest_size']}: {100 * c['gap_at_largest']:+.1f} points "
            "(scratch − transfer)."
        )
    if c["reached"]:
        return (
            f"Crossover: scratch stays within the pooled standard error of the best "
            f"transfer arm from {c['size']} ({_ex(c['train_examples'])} examples) on; "
            f"gap at {c['largest_size']}: {100 * c['gap_at_largest']:+.1f} points "
            "(scratch − transfer)."
        )
    return (
        f"Crossover: not reached; gap at {c['largest_size']}: "
        f"{100 * c['gap_at_largest']:+.1f} points (scratch − transfer)."
    )


def _negative_transfer_section(doc: _Doc, agg: Sequence[dict], negative: Sequence[dict]) -> None:
    """The negative-transfer flags: the rule, the flagged pairs and where no verdict is given."""
    doc.h(3, "Negative transfer")
    doc.p(
        "A transfer arm below scratch (same model, else the best scratch arm) at a size: "
        "one-sided Welch t-test p < 0.05 with n >= 2 on both sides; with a single run, a gap "
        "of more than 2 points is listed as unconfirmed. Where either arm did not converge "
        "the status says inconclusive instead: not a verdict."
    )
    if negative:
        doc.table(
            [
                "target",
                "size",
                "arm",
                "vs",
                "transfer %",
                "scratch %",
                "gap (points)",
                "p",
                "status",
            ],
            [
                [
                    f["target"],
                    f["size"],
                    f["arm"],
                    f["scratch_arm"],
                    f"{100 * f['transfer_mean']:.1f}",
                    f"{100 * f['scratch_mean']:.1f}",
                    f"{100 * f['gap']:+.1f}",
                    _fmt(f["p_value"], ".2g"),
                    f["status"],
                ]
                for f in negative
            ],
        )
    reasons = blockers(agg)
    if reasons:  # pairs with an unconverged arm carry no verdict, flagged or not
        doc.p(
            "Only pairs of converged arms can be flagged; no verdict elsewhere: "
            f"{join(reasons, 3)}."
        )
    elif not negative:
        doc.p("None detected.")


def _overfitting_section(
    doc: _Doc, over_summary: Sequence[dict], n_over: int, rows: Sequence[dict]
) -> None:
    """The overfitting flags: the rule, how many cells it flagged and where they are."""
    doc.h(3, "Overfitting")
    doc.p(
        "Per cell: the last validation loss is more than 10 % above its minimum while the "
        "training loss is still lower than at that minimum; the start is the step of the "
        f"validation-loss minimum. {n_over} of {len(rows)} cells flagged."
    )
    if over_summary:
        doc.table(
            ["target", "arm", "size", "cells flagged", "median start step"],
            [
                [
                    g["target"],
                    g["arm"],
                    g["size"],
                    f"{g['flagged']} of {g['n']}",
                    f"{g['median_start_step']:.0f}",
                ]
                for g in over_summary
            ],
        )


def _curve_section(
    doc: _Doc, curves: Sequence[dict], paths: dict[str, Path], arms: Sequence[str]
) -> None:
    doc.h(2, "Learning curves")
    doc.p(
        "Validation accuracy vs step, mean over seeds and folds, at the smallest and the "
        "largest training-set size of each target."
    )
    items = []
    for c in curves:
        parts = [f"{c['target']}, {c['size']}:"]
        imp = c["scratch_improving"]
        if imp and imp["improving"] is not None:
            parts.append(
                f"{c['scratch_arm']} still improving at the end: "
                f"{'yes' if imp['improving'] else 'no'} ({100 * imp['gain']:+.1f} points over "
                "the last 25 % of steps)."
            )
        hs = c["head_start"]
        if hs:
            parts.append(
                f"Head start of {c['transfer_arm']}: {100 * hs['transfer_first']:.1f} % at step "
                f"{hs['transfer_step']:.0f} vs {100 * hs['scratch_first']:.1f} % for "
                f"{c['scratch_arm']} at step {hs['scratch_step']:.0f} ({hs['points']:+.1f} points)."
            )
        if len(parts) > 1:
            items.append(" ".join(parts))
    if items:
        doc.ul(items)
    if any(c["curves"] for c in curves):
        plot_learning_curves(curves, paths["curves_plot"], arms)
        doc.img(paths["curves_plot"], "validation accuracy vs step")
    else:
        doc.p("No curves recorded.")


def _cost_section(
    doc: _Doc,
    costs: Sequence[dict],
    study: dict[str, Any],
    agg: Sequence[dict] = (),
    plot_path: Path | None = None,
) -> None:
    doc.h(2, "Cost")
    doc.p(
        "Mean per cell over all targets and sizes of each arm; FLOPs '–' where not counted "
        "(e.g. linear probe)."
    )
    swept = any((c.get("trials") or 1) > 1 for c in costs)
    header = ["arm", "cells", "wall time / cell", "images seen / cell", "training FLOPs / cell"]
    if swept:
        header += ["trials / cell", "wall time incl. tuning", "images incl. tuning",
                   "FLOPs incl. tuning"]  # fmt: skip
    header.append("total wall time" + (" incl. tuning" if swept else ""))
    rows = []
    for c in costs:
        row = [
            c["arm"],
            str(c["cells"]),
            _fmt_time(c["wall_time_s"]),
            _fmt(c["images_seen"], ",.0f"),
            _fmt(c["train_flops"], ".3g"),
        ]
        if swept:
            row += [
                _fmt(c.get("trials"), ".3g"),  # 1.67 with sweep_tune_seeds=1 of 3 seeds
                _fmt_time(c.get("tuning_wall_time_s")),
                _fmt(c.get("tuning_images_seen"), ",.0f"),
                _fmt(c.get("tuning_train_flops"), ".3g"),
            ]
        total = c["total_tuning_wall_time_s"] if swept else c["total_wall_time_s"]
        rows.append([*row, _fmt_time(total)])
    doc.table(header, rows)
    if swept:
        doc.p(
            "Incl. tuning: every trial of the cell's sweep plus the test evaluation of the "
            "chosen one; the other columns are the chosen run alone."
        )
    cells_total = sum(
        c["total_tuning_wall_time_s"] if swept else c["total_wall_time_s"] for c in costs
    )
    doc.p(
        f"Total study wall time: {_fmt_time(study.get('wall_time_s'))} "
        f"(sum over cells: {_fmt_time(cells_total)})."
    )
    _run_cost_table(doc, costs)
    if plot_path is not None and plot_accuracy_vs_cost(agg, plot_path):
        doc.img(plot_path, "test accuracy vs trainable parameters")


def _mib(v: float | None) -> str:
    return "–" if v is None else f"{v / 2**20:,.2f} MiB"


def _run_cost_table(doc: _Doc, costs: Sequence[dict]) -> None:
    """What one run of each arm holds and needs (summary.json's cost fields,
    jtl.evaluation.costs)."""
    if not any(c.get("trainable_params") is not None for c in costs):
        return
    doc.p(
        "Per run (mean per cell): trainable parameters, optimizer-state and checkpoint bytes, "
        "peak host memory (the process's peak resident set), compiled FLOPs per step."
    )
    header = ["arm", "trainable params", "optimizer state", "checkpoint", "peak host memory",
              "FLOPs / step", "wall time / cell"]  # fmt: skip
    rows = [
        [
            c["arm"],
            _fmt(c.get("trainable_params"), ",.0f"),
            _mib(c.get("opt_state_bytes")),
            _mib(c.get("checkpoint_bytes")),
            _mib(c.get("peak_host_memory_bytes")),
            _fmt(c.get("flops_per_step"), ".3g"),
            _fmt_time(c["wall_time_s"]),
        ]
        for c in costs
    ]
    doc.table(header, rows)


def _advisor_section(doc: _Doc, advisor: dict[str, Any]) -> None:
    doc.h(2, "Advisor vs measured")
    pairs = advisor["pairs"]
    if not pairs:
        doc.p("No transferability scores in this study (`jtl advise` was not run).")
        return
    doc.p(
        "Transferability scores (higher predicts better transfer) next to the measured gain "
        "of the best transfer arm from that source over the best scratch arm, in points."
    )
    doc.table(
        [
            "source",
            "target",
            "recommendation",
            *SCORES,
            "gain (mean over sizes)",
            "gain (smallest size)",
        ],
        [
            [
                p["source"],
                p["target"],
                str(p.get("recommendation") or "–"),
                *[_fmt(p.get(s)) for s in SCORES],
                _fmt(None if p["gain_mean"] is None else 100 * p["gain_mean"], "+.1f"),
                _fmt(None if p["gain_smallest"] is None else 100 * p["gain_smallest"], "+.1f"),
            ]
            for p in pairs
        ],
    )
    doc.p(
        "Spearman rank correlation of each score with the measured gain across "
        "(source, target) pairs."
    )
    rows = []
    for score, by_gain in advisor["spearman"].items():
        row = [score]
        for gain in ("gain_mean", "gain_smallest"):
            r = by_gain[gain]
            row.append(r["note"] or f"{r['rho']:+.2f} (p = {r['p']:.2g})")
        row.append(str(by_gain["gain_mean"]["n"]))
        rows.append(row)
    doc.table(["score", "rho vs mean gain", "rho vs smallest-size gain", "n pairs"], rows)


def _tuning_section(doc: _Doc, agg: Sequence[dict], rows: Sequence[dict]) -> None:
    """Chosen hyperparameters per cell and each arm's sensitivity to them (validation only)."""
    if not any(r.get("sweep_trials") for r in rows):
        return
    doc.h(2, "Tuning")
    doc.p(
        "Every swept arm got the same grid size; each cell's trial was chosen on validation "
        "accuracy only (the k-fold validation fold at tiny sizes) and only the chosen trial was "
        "evaluated on test. Spread: max − min validation accuracy across the grid, in points "
        "(mean over seeds and folds). Linear probes are not swept: they pick their L2 strength "
        "on validation from their own grid."
    )
    reused = sum(1 for r in rows if r.get("tuned_on"))
    if reused:
        doc.p(
            f"{reused} cells (later seeds) did not run the grid: each trained once at the values "
            "with the best mean validation accuracy over the first seeds' grids of the same "
            "target, arm and size (`sweep_tune_seeds`); the cost table counts that one run for "
            "them, and the grid once, on the seeds that ran it. The chosen column lists the "
            "tuning seeds' choices only."
        )
    table = []
    for a in agg:
        if not a.get("chosen"):
            continue
        counts: dict[str, int] = {}
        for values in a["chosen"]:
            key = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in values.items())  # fmt: skip
            counts[key] = counts.get(key, 0) + 1
        chosen = "; ".join(f"{k} ×{n}" if n > 1 else k for k, n in counts.items())
        if a.get("sweep_trials"):
            trials = _fmt(a.get("sweep_trials"), ".0f")
            spread = _fmt(None if a["sweep_spread"] is None else 100 * a["sweep_spread"], ".1f")
        else:  # a linear probe: one run, its own L2 grid chosen on validation
            trials, spread = "1 (own L2 grid)", "–"
        table.append([a["target"], a["arm"], a["size"], chosen, trials, spread])
    doc.table(["target", "arm", "size", "chosen (per seed/fold)", "trials", "spread (points)"],
              table)  # fmt: skip
    by_arm: dict[str, list[float]] = {}
    for r in rows:
        if r.get("sweep_spread") is not None:
            by_arm.setdefault(r["arm"], []).append(100 * r["sweep_spread"])
    doc.p("Sensitivity per arm: validation-accuracy spread across its grid over all its cells.")
    doc.table(
        ["arm", "cells", "mean spread (points)", "max spread (points)"],
        [
            [arm, str(len(v)), f"{sum(v) / len(v):.1f}", f"{max(v):.1f}"]
            for arm, v in by_arm.items()
        ],
    )
