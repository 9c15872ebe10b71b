"""The distribution-shift section: in- against out-of-distribution accuracy per arm, effective
robustness, and WiSE-FT curves (rows carry each run's `shifts` and `wise_ft` fields).

Why effective robustness: OOD accuracy mostly follows ID accuracy along a line (Taori et al.
2020), so a higher OOD number alone says little. An arm is more robust only where it sits above
the line through the two arms that use no fine-tuning of the source's features in opposite ways:
scratch (no source) and the linear probe (the source's features, frozen) of the same source.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jtl.report.document import _Doc
from jtl.report.plots import _colors, label_panel, panels, save


def shift_points(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (target, size, arm, shift): mean over seeds of test (ID) and shift (OOD) accuracy."""
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    meta: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        for name, s in (r.get("shifts") or {}).items():
            if r.get("test_accuracy") is None or s.get("accuracy") is None:
                continue
            key = (r["target"], r["size"], r["arm"], name)
            groups[key].append((float(r["test_accuracy"]), float(s["accuracy"])))
            meta[key] = {"strategy": r.get("strategy"), "source": r.get("source")}
    out = []
    for (target, size, arm, name), pts in sorted(groups.items()):
        idm, oodm = np.mean(pts, axis=0)
        key = (target, size, arm, name)
        out.append({"target": target, "size": size, "arm": arm, "shift": name, "n": len(pts),
                    "id": float(idm), "ood": float(oodm), **meta[key]})  # fmt: skip
    return _with_effective_robustness(out)


def _with_effective_robustness(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`er`: OOD accuracy above the scratch-probe line of the same source (None without it)."""
    by_panel: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for p in points:
        by_panel[(p["target"], p["size"], p["shift"])].append(p)
    for panel in by_panel.values():
        scratch = next((p for p in panel if p["strategy"] == "scratch"), None)
        for p in panel:
            p["er"] = None
            probe = next(
                (q for q in panel
                 if q["strategy"] == "linear_probe" and q["source"] == p["source"]),
                None,
            )  # fmt: skip
            line = baseline(scratch, probe)
            if line is not None:
                p["er"] = p["ood"] - (line[0] + line[1] * p["id"])
                p["baseline"] = line
    return points


def baseline(scratch: dict | None, probe: dict | None) -> tuple[float, float] | None:
    """(intercept, slope) of the line through the scratch and probe (ID, OOD) points."""
    if scratch is None or probe is None or abs(probe["id"] - scratch["id"]) < 1e-9:
        return None
    slope = (probe["ood"] - scratch["ood"]) / (probe["id"] - scratch["id"])
    return scratch["ood"] - slope * scratch["id"], slope


def wise_curves(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (target, size, arm): the WiSE-FT curve's columns, mean over seeds, by alpha."""
    groups: dict[tuple, list[list[dict]]] = defaultdict(list)
    for r in rows:
        if r.get("wise_ft"):
            groups[(r["target"], r["size"], r["arm"])].append(r["wise_ft"])
    out = []
    for (target, size, arm), curves in sorted(groups.items()):
        alphas = sorted({float(row["alpha"]) for c in curves for row in c})
        cols = sorted({k for c in curves for row in c for k in row if k != "alpha"})
        mean = {
            k: [_mean([row.get(k) for c in curves for row in c if float(row["alpha"]) == a])
                for a in alphas]
            for k in cols
        }  # fmt: skip
        out.append({"target": target, "size": size, "arm": arm, "n": len(curves),
                    "alpha": alphas, **mean})  # fmt: skip
    return out


def _mean(values: Sequence[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def plot_id_vs_ood(points: Sequence[dict[str, Any]], path: Path) -> bool:
    """One panel per (target, size, shift): arms at (ID, OOD), the scratch-probe lines dashed."""
    keys = sorted({(p["target"], p["size"], p["shift"]) for p in points})
    if not keys:
        return False
    colors = _colors(sorted({p["arm"] for p in points}))
    fig, axes = panels(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        pts = [p for p in points if (p["target"], p["size"], p["shift"]) == key]
        xs = np.linspace(min(p["id"] for p in pts), max(p["id"] for p in pts), 2)
        for line in {p["baseline"] for p in pts if p.get("baseline")}:
            ax.plot(xs, line[0] + line[1] * xs, "k--", lw=1)
        for p in pts:
            ax.scatter(p["id"], p["ood"], color=colors[p["arm"]], label=p["arm"], s=25)
        label_panel(ax, "ID accuracy (test)", "OOD accuracy", f"{key[0]}, {key[1]} -> {key[2]}")
    return save(fig, path)


def plot_wise(curves: Sequence[dict[str, Any]], path: Path) -> bool:
    """One panel per (target, size, arm): accuracy against alpha, ID (val, test) and shifts."""
    if not curves:
        return False
    fig, axes = panels(len(curves))
    for ax, c in zip(axes, curves, strict=True):
        for key in [k for k in c if k.endswith("accuracy") or k.startswith("shift_accuracy")]:
            pts = [(a, y) for a, y in zip(c["alpha"], c[key], strict=True) if y is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=key)
        xlabel = "alpha (0: source + probe head, 1: fine-tuned)"
        label_panel(ax, xlabel, "accuracy", f"{c['target']}, {c['size']}, {c['arm']}")
    return save(fig, path)


def shift_section(doc: _Doc, rows: Sequence[dict[str, Any]], paths: dict[str, Path]) -> None:
    points = shift_points(rows)
    curves = wise_curves(rows)
    if not points and not curves:
        return
    doc.h(2, "Distribution shift")
    if points:
        doc.p(
            "Test (ID) and `eval_shifts` (OOD) accuracy per arm, mean over seeds. Effective "
            "robustness: OOD accuracy above the line through the scratch and linear-probe "
            "points of the same source (dashed in the plot; Taori et al. 2020)."
        )
        doc.table(
            ["target", "size", "shift", "arm", "n", "ID %", "OOD %", "eff. robustness"],
            [
                [p["target"], p["size"], p["shift"], p["arm"], str(p["n"]),
                 f"{100 * p['id']:.1f}", f"{100 * p['ood']:.1f}",
                 "-" if p["er"] is None else f"{100 * p['er']:+.1f}"]
                for p in points
            ],
        )  # fmt: skip
        if plot_id_vs_ood(points, paths["ood_plot"]):
            doc.img(paths["ood_plot"], "ID against OOD accuracy")
    if curves:
        doc.p(
            "WiSE-FT: accuracy of (1 - alpha) w0 + alpha w, mean over seeds; alpha is chosen on "
            "validation accuracy only (the reported ensemble), the whole curve is shown."
        )
        if plot_wise(curves, paths["wise_plot"]):
            doc.img(paths["wise_plot"], "WiSE-FT curves")
