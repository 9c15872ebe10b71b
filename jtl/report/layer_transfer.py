"""Yosinski et al. (2014) curves: test accuracy against the number of transferred blocks n,
frozen (AnB) and fine-tuned (AnB+), beside the scratch baseline, per target and size.

Rows come from `configs/studies/layer_transfer.py` (arm labels `A{n}B` and `A{n}B+`); a study
without such arms gets no section.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jtl.report.document import _Doc
from jtl.report.plots import label_panel, panels, save

ARM = re.compile(r"A(\d+)B(\+?)(?:@.*)?$")


def layer_transfer_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (target, size): scratch mean and, per n, AnB and AnB+ means and spreads."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        m = ARM.match(str(r["arm"]))
        kind = ("AnB+" if m.group(2) else "AnB", int(m.group(1))) if m else None
        if kind is None and r.get("strategy") == "scratch":
            kind = ("scratch", 0)
        if kind is not None:
            acc[(r["target"], r["size"], *kind)].append(float(r["test_accuracy"]))
    panels = sorted({(t, s) for t, s, k, _ in acc if k != "scratch"})
    out = []
    for target, size in panels:
        base = acc.get((target, size, "scratch", 0), [])
        ns = sorted({n for t, s, k, n in acc if (t, s) == (target, size) and k != "scratch"})
        entry: dict[str, Any] = {"target": target, "size": size, "n": ns,
                                 "scratch": float(np.mean(base)) if base else None}  # fmt: skip
        for kind in ("AnB", "AnB+"):
            vals = [acc.get((target, size, kind, n), []) for n in ns]
            entry[kind] = [float(np.mean(v)) if v else None for v in vals]
            entry[f"{kind}_spread"] = [float(np.ptp(v)) if v else None for v in vals]
        out.append(entry)
    return out


def plot_layer_transfer(table: Sequence[dict[str, Any]], path: Path) -> bool:
    if not table:
        return False
    fig, axes = panels(len(table), height=3.8)
    for ax, e in zip(axes, table, strict=True):
        for kind, style in (("AnB", "o-"), ("AnB+", "s--")):
            pts = [(n, 100 * a) for n, a in zip(e["n"], e[kind], strict=True) if a is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=kind)
        if e["scratch"] is not None:
            ax.axhline(100 * e["scratch"], color="k", lw=1, ls=":", label="scratch (B)")
        ax.set_xticks(e["n"])
        label_panel(ax, "blocks transferred (n)", "test accuracy %", f"{e['target']}, {e['size']}")
    return save(fig, path)


def layer_transfer_section(doc: _Doc, rows: Sequence[dict[str, Any]], path: Path) -> None:
    table = layer_transfer_table(rows)
    if not table:
        return
    doc.h(2, "Transferred blocks (Yosinski et al. 2014)")
    doc.p(
        "Test accuracy with the first n blocks from the source, frozen (AnB: the rest "
        "re-initialized and trained) or fine-tuned (AnB+), mean over seeds (max - min in "
        "brackets); the dotted line is scratch on the target (B)."
    )
    header = ["target", "size", "scratch %"]
    header += [f"A{n}B %" for n in table[0]["n"]] + [f"A{n}B+ %" for n in table[0]["n"]]

    def cell(mean: float | None, spread: float | None) -> str:
        return "-" if mean is None else f"{100 * mean:.1f} ({100 * (spread or 0):.1f})"

    doc.table(
        header,
        [
            [e["target"], e["size"],
             "-" if e["scratch"] is None else f"{100 * e['scratch']:.1f}",
             *[cell(m, s) for m, s in zip(e["AnB"], e["AnB_spread"], strict=True)],
             *[cell(m, s) for m, s in zip(e["AnB+"], e["AnB+_spread"], strict=True)]]
            for e in table
        ],
    )  # fmt: skip
    if plot_layer_transfer(table, path):
        doc.img(path, "AnB and AnB+ against n")
