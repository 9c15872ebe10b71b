"""The calibration section: ECE and NLL per arm before and after temperature scaling, and
reliability diagrams (rows carry each run's jtl.evaluation.calibration fields; older rows have
none).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jtl.report.document import _Doc
from jtl.report.plots import _colors, label_panel, panels, save

FIELDS = ("temperature", "test_ece", "test_ece_ts", "test_nll", "test_nll_ts", "test_brier")


def _groups(rows: Sequence[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("test_ece") is not None:
            out[(r["target"], r["size"], r["arm"])].append(r)
    return out


def calibration_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (target, size, arm): mean over seeds of T, test ECE / NLL raw and scaled, Brier."""
    out = []
    for (target, size, arm), runs in _groups(rows).items():
        mean = {k: float(np.mean([r[k] for r in runs if r.get(k) is not None] or [np.nan]))
                for k in FIELDS}  # fmt: skip
        out.append({"target": target, "size": size, "arm": arm, "n": len(runs), **mean})
    return sorted(out, key=lambda a: (a["target"], a["size"], a["arm"]))


def pooled_reliability(runs: Sequence[dict[str, Any]], split: str = "test") -> dict[str, list]:
    """Reliability bins summed over runs (counts add; confidence and accuracy weighted)."""
    bins = [r[f"{split}_reliability"] for r in runs if r.get(f"{split}_reliability")]
    if not bins:
        return {}
    count = np.sum([b["count"] for b in bins], axis=0).astype(float)

    def weighted(key: str) -> list[float | None]:
        num = np.sum([[c * (v or 0.0) for c, v in zip(b["count"], b[key], strict=True)]
                      for b in bins], axis=0)  # fmt: skip
        return [float(x / n) if n else None for x, n in zip(num, count, strict=True)]

    return {"count": count.tolist(), "confidence": weighted("confidence"),
            "accuracy": weighted("accuracy")}  # fmt: skip


def plot_reliability(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """Per (target, size): accuracy against confidence per arm, test split, pooled over seeds."""
    groups = _groups(rows)
    keys = sorted({(t, s) for t, s, _ in groups})
    if not keys:
        return False
    colors = _colors(sorted({a for *_, a in groups}))
    fig, axes = panels(len(keys))
    for ax, (target, size) in zip(axes, keys, strict=True):
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        for (t, s, arm), runs in sorted(groups.items()):
            if (t, s) != (target, size):
                continue
            b = pooled_reliability(runs)
            pts = [
                (c, a) for c, a in zip(b["confidence"], b["accuracy"], strict=True) if c is not None
            ]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, color=colors[arm], label=arm)
        label_panel(ax, "confidence", "accuracy", f"{target}, {size}")
    return save(fig, path)


def calibration_section(doc: _Doc, rows: Sequence[dict[str, Any]], plot_path: Path) -> None:
    table = calibration_table(rows)
    if not table:
        return
    doc.h(2, "Calibration")
    doc.p(
        "Test ECE (15 equal-width confidence bins), NLL and Brier per arm, mean over seeds; "
        "'→' gives the value after temperature scaling with T fitted on validation by NLL "
        "(jtl.evaluation.calibration)."
    )
    doc.table(
        ["target", "size", "arm", "n", "T", "ECE %", "NLL", "Brier"],
        [
            [a["target"], a["size"], a["arm"], str(a["n"]), f"{a['temperature']:.2f}",
             f"{100 * a['test_ece']:.1f} → {100 * a['test_ece_ts']:.1f}",
             f"{a['test_nll']:.3f} → {a['test_nll_ts']:.3f}", f"{a['test_brier']:.3f}"]
            for a in table
        ],
    )  # fmt: skip
    if plot_reliability(rows, plot_path):
        doc.img(plot_path, "reliability diagrams")
