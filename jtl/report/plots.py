"""PNGs: test accuracy vs training examples (with the crossover), vs cost, learning curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jtl.report.aggregate import arms_of, targets_of


def panels(n: int, height: float = 4.0) -> tuple[Any, list[Any]]:
    """A figure of `n` side-by-side panels (one per target, size or arm)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * n, height))
    return fig, list(fig.subplots(1, n, squeeze=False)[0])


def label_panel(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def save(fig: Any, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def _colors(arms: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {arm: cmap(i % 10) for i, arm in enumerate(arms)}


def plot_accuracy(
    agg: Sequence[dict[str, Any]], crosses: dict[str, dict[str, Any]], path: Path
) -> None:
    """Test accuracy vs training examples (log x), one line per arm, ±std band, crossover line."""
    from matplotlib.figure import Figure

    targets = targets_of(agg)
    colors = _colors(arms_of(agg))
    fig = Figure(figsize=(5.5 * max(1, len(targets)), 4.2))
    axes = fig.subplots(1, max(1, len(targets)), squeeze=False)[0]
    for ax, target in zip(axes, targets, strict=False):
        for arm in arms_of(agg, target):
            pts = sorted(
                (a for a in agg if a["target"] == target and a["arm"] == arm),
                key=lambda a: a["train_examples"],
            )
            x = np.array([a["train_examples"] for a in pts])
            y = 100 * np.array([a["mean"] for a in pts])
            e = 100 * np.array([a["std"] for a in pts])
            ls = "--" if pts[0]["scratch"] else "-"
            ax.plot(x, y, marker="o", ls=ls, color=colors[arm], label=arm)
            if np.any(e > 0):
                ax.fill_between(x, y - e, y + e, color=colors[arm], alpha=0.15)
        c = crosses.get(target, {})
        if c.get("reached") and not c.get("inconclusive"):  # no verdict from unconverged arms
            ax.axvline(c["train_examples"], color="k", ls=":", lw=1)
            ax.annotate(
                f"scratch catches up\n({c['size']})",
                (c["train_examples"], 0.97),
                xycoords=("data", "axes fraction"),
                xytext=(3, 0),
                textcoords="offset points",
                fontsize=8,
                ha="left",
                va="top",
            )
        ax.set_xscale("log")
        ax.set_xlabel("training examples")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(target)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_learning_curves(
    curves: Sequence[dict[str, Any]], path: Path, arms: Sequence[str] | None = None
) -> None:
    """Mean val accuracy vs step per arm: one row per target, smallest and largest size."""
    from matplotlib.figure import Figure

    targets = sorted({c["target"] for c in curves})
    ncols = max([sum(1 for c in curves if c["target"] == t) for t in targets] or [1])
    colors = _colors(arms or sorted({a for c in curves for a in c["curves"]}))
    fig = Figure(figsize=(5.5 * ncols, 3.8 * max(1, len(targets))))
    axes = fig.subplots(max(1, len(targets)), ncols, squeeze=False)
    for i, target in enumerate(targets):
        for j, c in enumerate([c for c in curves if c["target"] == target]):
            ax = axes[i][j]
            for arm, cv in c["curves"].items():
                ax.plot(
                    cv["steps"],
                    100 * np.asarray(cv["val_accuracy"]),
                    color=colors[arm],
                    ls="--" if arm in c["scratch_arms"] else "-",
                    label=arm,
                )
            ax.set_title(f"{target}, {c['size']}")
            ax.set_xlabel("step")
            ax.set_ylabel("val accuracy (%)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_accuracy_vs_cost(agg: Sequence[dict[str, Any]], path: Path) -> bool:
    """Test accuracy vs trainable parameters (log x): one marker per (arm, size), per target.

    Returns False (and writes nothing) when no row records `trainable_params`.
    """
    from matplotlib.figure import Figure

    pts_all = [a for a in agg if a.get("trainable_params")]
    if not pts_all:
        return False
    targets = targets_of(pts_all)
    colors = _colors(arms_of(agg))
    markers = "os^Dvp*hx+"
    fig = Figure(figsize=(5.5 * max(1, len(targets)), 4.2))
    axes = fig.subplots(1, max(1, len(targets)), squeeze=False)[0]
    for ax, target in zip(axes, targets, strict=False):
        pts = [a for a in pts_all if a["target"] == target]
        sizes = sorted({a["size"] for a in pts}, key=lambda z: min(
            b["train_examples"] for b in pts if b["size"] == z))  # fmt: skip
        for a in pts:
            m = markers[sizes.index(a["size"]) % len(markers)]
            ax.errorbar(
                a["trainable_params"], 100 * a["mean"], yerr=100 * a["std"] or None,
                marker=m, color=colors[a["arm"]], ls="none", capsize=2,
            )  # fmt: skip
        for arm in arms_of(pts):
            ax.plot([], [], "o", color=colors[arm], label=arm)
        for size in sizes:
            ax.plot([], [], markers[sizes.index(size) % len(markers)], color="0.4", label=size)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(target)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True
