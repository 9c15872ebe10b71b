"""build_report: runs every analysis and writes report.md/.html, results.csv/.json and PNGs."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jtl.report.advisor import advise_vs_gain
from jtl.report.aggregate import aggregate, arms_of, cost_table, targets_of
from jtl.report.analysis import crossover_by_target, negative_transfer, overfitting_flags
from jtl.report.calibration import calibration_section
from jtl.report.convergence import budget_label
from jtl.report.curves import learning_curves
from jtl.report.document import _Doc, _fmt_time
from jtl.report.layer_transfer import layer_transfer_section
from jtl.report.sections import (
    _advisor_section,
    _cost_section,
    _curve_section,
    _results_sections,
    _tuning_section,
)
from jtl.report.shift import shift_section
from jtl.report.summary import summarize

CSV_FIELDS = (
    "cell",
    "target",
    "source",
    "strategy",
    "model",
    "arm",
    "size",
    "train_examples",
    "per_class",
    "seed",
    "fold",
    "test_accuracy",
    "val_accuracy",
    "test_loss",
    "val_loss",
    "steps",
    "wall_time_s",
    "images_seen",
    "train_flops",
    "early_stopped_step",
    "budget",
    "converged",
    "best_step",
    "epochs_run",
)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """One line per cell: the contract's fields first, any extra ones after; curves left out."""
    extra = sorted({k for r in rows for k in r} - set(CSV_FIELDS) - {"curve"})
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*CSV_FIELDS, *extra], extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in (*CSV_FIELDS, *extra)})


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, dict | list | tuple):
        return json.dumps(_jsonable(v))
    return v


def _jsonable(v: Any) -> Any:
    """Strict JSON: NaN/inf become null, numpy scalars and paths become plain values."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


def _diverged_section(doc: Any, diverged: list[str]) -> None:
    """Cells whose training diverged (non-finite loss): listed, never averaged in."""
    if not diverged:
        return
    doc.h(2, "Diverged cells")
    doc.p(
        f"{len(diverged)} cell(s) stopped on a non-finite loss or gradient norm; they have no "
        "accuracy and are left out of every table and plot below."
    )
    doc.ul(list(diverged))


def _report_paths(outdir: Path) -> dict[str, Path]:
    """Every file a report may write, by key: the one place that names them."""
    return {
        "md": outdir / "report.md",
        "html": outdir / "report.html",
        "csv": outdir / "results.csv",
        "json": outdir / "results.json",
        "accuracy_plot": outdir / "accuracy_vs_examples.png",
        "curves_plot": outdir / "learning_curves.png",
        "cost_plot": outdir / "accuracy_vs_cost.png",
        "reliability_plot": outdir / "reliability.png",
        "ood_plot": outdir / "id_vs_ood.png",
        "wise_plot": outdir / "wise_ft.png",
        "layer_plot": outdir / "layer_transfer.png",
    }


def _header_section(
    doc: _Doc, title: str, study: dict[str, Any], rows: Sequence[dict], agg: Sequence[dict]
) -> None:
    """Title, the question, the command and what ran where: the report's first lines."""
    doc.h(1, title)
    doc.p("Fine-tune a pretrained network or train from scratch, and at what cost?")
    doc.p("Command:")
    doc.code(str(study.get("command", "")))
    doc.ul(
        [
            f"machine: {study.get('machine', '')}",
            f"wall time: {_fmt_time(study.get('wall_time_s'))}"
            + (
                f" (summed over {study['wall_time_runs']} invocations: resumed)"
                if (study.get("wall_time_runs") or 0) > 1
                else ""
            ),
            *([f"code: {', '.join(study['code_versions'])}"] if study.get("code_versions") else []),
            f"study: {study.get('name', '')}, {len(rows)} finished cells",
            f"budget: {budget_label(agg)}",
        ]
    )


def _summary_section(doc: _Doc, rows: Sequence[dict], summaries: dict[str, str]) -> None:
    """One summary paragraph per target, or why there is nothing to summarize yet."""
    doc.h(2, "Summary")
    if not rows:
        doc.p("No finished cells: nothing to report yet.")
    for t, summary in summaries.items():
        doc.h(3, t)
        doc.p(summary)


def build_report(
    study: dict[str, Any], rows: list[dict[str, Any]], outdir: Path
) -> dict[str, Path]:
    """Writes report.md/.html, results.csv/.json and the PNGs for a study; returns their paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = _report_paths(outdir)
    agg = aggregate(rows)
    targets = targets_of(agg)
    crosses = crossover_by_target(agg)
    negative = negative_transfer(agg)
    over_cells, over_summary = overfitting_flags(rows)
    curves = learning_curves(rows, agg)
    costs = cost_table(rows)
    advisor = advise_vs_gain(study.get("advise") or [], agg)
    summaries = {t: summarize(agg, t, crosses[t], negative) for t in targets}

    title = study.get("title") or study.get("name") or "Study"
    doc = _Doc()
    _header_section(doc, title, study, rows, agg)
    _diverged_section(doc, study.get("diverged_cells") or [])
    _summary_section(doc, rows, summaries)
    if rows:
        _results_sections(doc, agg, crosses, paths, negative, over_summary, len(over_cells), rows)
        _curve_section(doc, curves, paths, arms_of(agg))
        _tuning_section(doc, agg, rows)
        _cost_section(doc, costs, study, agg, paths["cost_plot"])
        calibration_section(doc, rows, paths["reliability_plot"])
        shift_section(doc, rows, paths)
        layer_transfer_section(doc, rows, paths["layer_plot"])
        _advisor_section(doc, advisor)

    paths["md"].write_text(doc.markdown())
    paths["html"].write_text(doc.html(title))
    write_csv(rows, paths["csv"])
    payload = {
        "study": study,
        "rows": rows,
        "aggregate": agg,
        "crossover": crosses,
        "flags": {
            "negative_transfer": negative,
            "overfitting": over_summary,
            "overfitting_cells": over_cells,
        },
        "advise_vs_gain": advisor,
        "learning_curves": curves,
        "cost": costs,
        "summary": summaries,
    }
    paths["json"].write_text(json.dumps(_jsonable(payload), indent=1, allow_nan=False) + "\n")
    return {k: p for k, p in paths.items() if p.exists()}
