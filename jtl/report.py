"""Results tables and plots from run summaries: who wins, at which training-set size.

Input rows are `summary.json` dicts (plus a `size` label); output is `results.csv`,
`results.md` (mean ± std over seeds, best per column in bold) and a PNG of test accuracy vs
number of training examples (log x), one line per strategy, one panel per target.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

KEY_FIELDS = ("dataset", "strategy", "size")


def aggregate(rows: Sequence[dict[str, Any]], metric: str = "test_accuracy") -> list[dict]:
    """Groups runs by (dataset, strategy, size) and reduces over seeds: mean, std, n."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in KEY_FIELDS)].append(r)
    out = []
    for key, runs in groups.items():
        values = np.array([float(r[metric]) for r in runs])
        out.append(
            {
                **dict(zip(KEY_FIELDS, key, strict=True)),
                "train_examples": int(np.mean([r["train_examples"] for r in runs])),
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "n": len(values),
                "wall_time_s": float(np.mean([r.get("wall_time_s", math.nan) for r in runs])),
            }
        )
    return sorted(out, key=lambda a: (a["dataset"], a["train_examples"], a["strategy"]))


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in KEY_FIELDS, k))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def markdown_table(agg: Sequence[dict[str, Any]]) -> str:
    """One table per data set: rows = strategies, columns = training-set sizes."""
    lines: list[str] = []
    by_dataset: dict[str, list[dict]] = defaultdict(list)
    for a in agg:
        by_dataset[a["dataset"]].append(a)
    for dataset, items in by_dataset.items():
        sizes = sorted({(a["train_examples"], a["size"]) for a in items})
        strategies = sorted({a["strategy"] for a in items})
        cell = {(a["strategy"], a["size"]): a for a in items}
        best = {
            size: max((a["mean"] for a in items if a["size"] == size), default=None)
            for _, size in sizes
        }
        header = "| strategy | " + " | ".join(f"{s} ({n} ex.)" for n, s in sizes) + " |"
        lines += [f"### {dataset}", "", header, "|---" * (len(sizes) + 1) + "|"]
        for strategy in strategies:
            cells = []
            for _, size in sizes:
                a = cell.get((strategy, size))
                if a is None:
                    cells.append("–")
                    continue
                text = f"{a['mean']:.3f}" + (f" ± {a['std']:.3f}" if a["n"] > 1 else "")
                cells.append(f"**{text}**" if a["mean"] == best[size] else text)
            lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_accuracy_vs_examples(agg: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({a["dataset"] for a in agg})
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False, sharey=False
    )
    for ax, dataset in zip(axes[0], datasets, strict=True):
        items = [a for a in agg if a["dataset"] == dataset]
        for strategy in sorted({a["strategy"] for a in items}):
            pts = sorted(
                (a for a in items if a["strategy"] == strategy), key=lambda a: a["train_examples"]
            )
            x = [a["train_examples"] for a in pts]
            y = np.array([a["mean"] for a in pts])
            e = np.array([a["std"] for a in pts])
            ax.plot(x, y, marker="o", label=strategy)
            if np.any(e > 0):
                ax.fill_between(x, y - e, y + e, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("training examples")
        ax.set_ylabel("test accuracy")
        ax.set_title(dataset)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(rows: Sequence[dict[str, Any]], outdir: str | Path, title: str = "") -> dict:
    """Writes results.csv, results.md and accuracy_vs_examples.png; returns their paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(rows)
    paths = {
        "csv": outdir / "results.csv",
        "md": outdir / "results.md",
        "plot": outdir / "accuracy_vs_examples.png",
    }
    write_csv(rows, paths["csv"])
    md = [f"# {title or 'Results'}", "", "Test accuracy (mean ± std over seeds).", ""]
    md.append(markdown_table(agg))
    md.append(f"![accuracy vs training examples]({paths['plot'].name})")
    paths["md"].write_text("\n".join(md) + "\n")
    plot_accuracy_vs_examples(agg, paths["plot"], title)
    return paths
