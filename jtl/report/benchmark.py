"""The benchmark section: measured gain heat maps, predicted vs measured, regret, trends.

Reads only the advisor's benchmark table and validation (`jtl advisor fit`'s result rows):
one entry per (source, target, size) with measured gains per transfer arm, and out-of-fold
predictions per CV scheme. Writes `benchmark.md` and its PNGs into a directory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jtl.report.plots import _colors

Entry = dict[str, Any]
# Sources below this accuracy on their own task (random-init and under-trained controls) are
# left out of the block-size trend: it compares trained sources that differ only in shuffling.
MIN_TREND_SOURCE_ACCURACY = 0.5
_METRICS = (
    ("kendall_tau_sources", "Kendall tau, ranking sources per (target, size, arm)"),
    ("weighted_tau_sources", "weighted tau, ranking sources per (target, size, arm)"),
    ("kendall_tau_arms", "Kendall tau, ranking arms per triple"),
    ("weighted_tau_arms", "weighted tau, ranking arms per triple"),
    ("pearson", "Pearson r, predicted vs measured gain"),
    ("sign_accuracy", "sign accuracy (helps significantly or not)"),
    ("interval_coverage", "measured gain inside the predicted interval"),
)


def _ci(m: dict[str, Any] | None, spec: str = "+.2f") -> str:
    if not m or not math.isfinite(m["value"]):
        return "n/a"
    lo, hi = m["ci"]
    return f"{m['value']:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def _sizes(table: Sequence[Entry]) -> list[str]:
    return sorted({e["size"] for e in table}, key=lambda s: (not s[0].isdigit(), _num(s)))


def _num(size: str) -> float:
    m = re.match(r"\d+", size)
    return float(m.group()) if m else math.inf


def plot_gain_heatmaps(table: Sequence[Entry], arms: Sequence[str], path: Path) -> bool:
    """One heat map per (size, arm): sources x targets, the measured gain in points."""
    from matplotlib.figure import Figure

    if not table:
        return False
    sources = sorted({e["source"] for e in table})
    targets = sorted({e["target"] for e in table})
    sizes = _sizes(table)
    fig = Figure(
        figsize=(1.0 + 0.75 * len(targets) * len(arms), 0.5 + 0.45 * len(sources) * len(sizes))
    )
    axes = fig.subplots(len(sizes), len(arms), squeeze=False)
    lim = max(abs(g) for e in table for g in e["gain"].values()) or 1.0
    for i, size in enumerate(sizes):
        for j, arm in enumerate(arms):
            ax = axes[i][j]
            grid = np.full((len(sources), len(targets)), np.nan)
            for e in table:
                if e["size"] == size and arm in e["gain"]:
                    grid[sources.index(e["source"]), targets.index(e["target"])] = e["gain"][arm]
            ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
            for (r, c), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    ax.text(c, r, f"{v:+.0f}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(targets)), targets, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(sources)), sources, fontsize=7)
            ax.set_title(f"{arm}, {size}: gain over scratch (points)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def plot_predicted_vs_measured(
    predictions: Sequence[dict], arms: Sequence[str], path: Path
) -> bool:
    """Out-of-fold predicted gain (with its interval) against the measured gain, per arm."""
    from matplotlib.figure import Figure

    if not predictions:
        return False
    colors = _colors(list(arms))
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    values = []
    for arm in arms:
        pts = [(p["pred"][arm], p["gain"][arm], p["interval"][arm]) for p in predictions
               if arm in p["pred"]]  # fmt: skip
        if not pts:
            continue
        x, y, h = map(np.array, zip(*pts, strict=True))
        values += [*x, *y]
        ax.errorbar(x, y, xerr=h, fmt="o", ms=3, alpha=0.6, color=colors[arm], label=arm,
                    elinewidth=0.5)  # fmt: skip
    lo, hi = (min(values), max(values)) if values else (-1, 1)
    ax.plot([lo, hi], [lo, hi], "k:", lw=1)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("predicted gain over scratch (points, leave-one-target-out)")
    ax.set_ylabel("measured gain (points)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def block_size(dataset: str | None, image_size: int = 28) -> int | None:
    """The block size of a source trained on `NAME|block_shuffle(k)` (the image size for an
    unshuffled source of the same family; None when the source is not such a data set)."""
    if not dataset:
        return None
    m = re.search(r"block_shuffle\((\d+)", dataset)
    return int(m.group(1)) if m else (image_size if "|" not in dataset else None)


def block_shuffle_trend(table: Sequence[Entry], base: str = "mnist") -> list[dict[str, Any]]:
    """Neyshabur et al.'s question: the gain as the source's block size shrinks (same base data
    set, unshuffled = the image size), per (target, size, arm)."""
    out = []
    for e in table:
        ds = e.get("source_dataset") or ""
        if ds.split("|")[0] != base or (("|" in ds) and "block_shuffle" not in ds):
            continue
        acc = e.get("source_accuracy")
        if isinstance(acc, int | float) and acc < MIN_TREND_SOURCE_ACCURACY:
            continue  # an under-trained or random control is no point of the trend
        k = block_size(ds)
        for arm, g in e["gain"].items():
            out.append({"target": e["target"], "size": e["size"], "arm": arm, "block": k,
                        "gain": g, "source": e["source"]})  # fmt: skip
    return out


def plot_block_trend(trend: Sequence[dict[str, Any]], path: Path) -> bool:
    from matplotlib.figure import Figure

    if not trend:
        return False
    arms = sorted({t["arm"] for t in trend})
    sizes = sorted({t["size"] for t in trend}, key=_num)
    fig = Figure(figsize=(5 * len(arms), 3.8 * len(sizes)))
    axes = fig.subplots(len(sizes), len(arms), squeeze=False)
    targets = sorted({t["target"] for t in trend})
    colors = _colors(targets)
    for i, size in enumerate(sizes):
        for j, arm in enumerate(arms):
            ax = axes[i][j]
            for target in targets:
                key = (target, size, arm)
                pts = sorted(
                    (t["block"], t["gain"])
                    for t in trend
                    if (t["target"], t["size"], t["arm"]) == key
                )
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", color=colors[target], label=target)
            ax.set_xscale("log", base=2)
            ax.axhline(0, color="k", lw=0.5)
            ax.set_xlabel("source block size (pixels; 28 = unshuffled)")
            ax.set_ylabel("gain over scratch (points)")
            ax.set_title(f"{arm}, {size}", fontsize=9)
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def markdown(
    validation: dict[str, Any],
    studies: Sequence[str],
    files: dict[str, str],
    table: Sequence[Entry] = (),
) -> str:
    """The validation tables and the section's figures (what docs/results.md quotes)."""
    lines = [
        "# Transferability benchmark and advisor validation",
        "",
        f"Studies: {', '.join(studies)}; {validation['entries']} (source, target, size) triples, "
        f"transfer arms {', '.join(validation['arms'])}. Regret: over the "
        f"{validation['regret_entries']} triples that measured every arm, and for the choice "
        "between the linear probe and scratch over every triple. Intervals: 95 % bootstrap over "
        "targets.",
    ]
    for label, name in (
        ("Measured gain over the best scratch arm", "heatmap"),
        ("Predicted (leave-one-target-out) against measured gain", "predicted"),
        ("Gain against the source's block size (Neyshabur et al. 2020)", "blocks"),
    ):
        if name in files:
            lines += ["", f"![{label}]({files[name]})"]
    lines += _measured_lines(table, validation["arms"])
    lines += _reproducibility_lines(validation.get("reproducibility") or {})
    for scheme, s in validation["schemes"].items():
        m = s["metrics"]
        lines += ["", f"## {scheme}", "", "| metric | value [95 % CI] |", "|---|---|"]
        lines += [f"| {label} | {_ci(m[key])} |" for key, label in _METRICS]
        lines.append(
            "| share of (triple, arm) measured as significant gains | "
            f"{m['sign_accuracy']['base_rate_significant']:.2f} |"
        )
        n_all, n_two = validation["regret_entries"], validation["entries"]
        lines += _regret_lines(s["regret"], f"Every arm ({n_all} triples)")
        two = s.get("regret_probe_or_scratch") or {}
        lines += _regret_lines(two, f"Linear probe or scratch (all {n_two} triples)")
    return "\n".join(lines) + "\n"


def measured_summary(table: Sequence[Entry], arms: Sequence[str]) -> dict[str, Any]:
    """What was measured, before any prediction: per (arm, size) the mean gain over scratch and
    how often it was positive or significant, and per (target, size) the best scratch arm's
    accuracy with each transfer arm's best source. The numbers the findings quote."""
    by_arm: dict[tuple[str, str], list[Entry]] = {}
    for e in table:
        for arm in e["gain"]:
            by_arm.setdefault((arm, e["size"]), []).append(e)
    overall = []
    for size in _sizes(table):
        for arm in arms:
            es = by_arm.get((arm, size), [])
            if not es:
                continue
            gains = [e["gain"][arm] for e in es]
            best = max(es, key=lambda e: e["gain"][arm])
            overall.append({
                "arm": arm, "size": size, "triples": len(es), "mean_gain": float(np.mean(gains)),
                "positive": sum(g > 0 for g in gains),
                "significant": sum(bool(e["significant"].get(arm)) for e in es),
                # the arm or scratch hit its cap still improving: a lower bound, no verdict
                "not_converged": sum(not e.get("converged", {}).get(arm, True) for e in es),
                "best": (best["gain"][arm], best["source"], best["target"]),
            })  # fmt: skip
    per_target = []
    for target in sorted({e["target"] for e in table}):
        for size in _sizes(table):
            es = [e for e in table if e["target"] == target and e["size"] == size]
            if not es:
                continue
            row = {"target": target, "size": size, "scratch": es[0]["scratch"]["mean"]}
            for arm in arms:
                have = [e for e in es if arm in e["gain"]]
                if have:
                    b = max(have, key=lambda e: e["gain"][arm])
                    row[arm] = (b["gain"][arm], b["source"])
            per_target.append(row)
    return {"by_arm": overall, "by_target": per_target}


def _measured_lines(table: Sequence[Entry], arms: Sequence[str]) -> list[str]:
    m = measured_summary(table, arms)
    if not m["by_arm"]:
        return []
    lines = ["", "## What was measured", "",
             "Gain = the arm's mean test accuracy minus the best scratch arm's (points, means "
             "over runs); significant: one-sided Welch p < 0.05 over seeds; not converged: the "
             "arm or scratch hit its cap still improving (a lower bound).", "",
             "| arm | size | triples | mean gain | positive | significant | not converged "
             "| best: source -> target |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in m["by_arm"]:
        g, src, tgt = r["best"]
        lines.append(
            f"| {r['arm']} | {r['size']} | {r['triples']} | {r['mean_gain']:+.1f} | "
            f"{r['positive']} | {r['significant']} | {r['not_converged']} | "
            f"{g:+.1f}: {src} -> {tgt} |"
        )
    lines += ["", "Per target: the best scratch arm's test accuracy, and each transfer arm's "
              "best gain over it (its source).", "",
              "| target | size | scratch | " + " | ".join(arms) + " |",
              "|---|---|---|" + "---|" * len(arms)]  # fmt: skip
    for r in m["by_target"]:
        cells = [f"{r[a][0]:+.1f} ({r[a][1]})" if a in r else "–" for a in arms]
        lines.append(
            f"| {r['target']} | {r['size']} | {r['scratch']:.1f} % | " + " | ".join(cells) + " |"
        )
    return lines


def _reproducibility_lines(r: dict[str, Any]) -> list[str]:
    """Seed 0's gains ranked against seed 1's: the yardstick for the advisor's taus."""
    if not r.get("entries"):
        return []
    lines = ["", "## The measurement against itself: seed 0 against seed 1", "",
             f"Over the {r['entries']} triples with 2 seeds of every arm: each seed's gain over "
             "the same seed's scratch run, seed 0 ranked against seed 1 as the advisor is "
             "ranked against the mean. No predictor can be expected to rank the measured "
             "gains much better than the measurement ranks itself.", "",
             "| metric | seed 0 vs seed 1 [95 % CI] |", "|---|---|"]  # fmt: skip
    lines += [f"| {label} | {_ci(r[key])} |" for key, label in _METRICS[:4] if key in r]
    ceiling = r.get("implied_ceiling_kendall_tau_sources", math.nan)
    if math.isfinite(ceiling):
        lines += ["", f"Implied ceiling (an estimate under a normal model, not a measurement): a "
                  f"perfect predictor of the true gain would reach a Kendall tau of about "
                  f"{ceiling:.2f} ranking sources against the 2-seed mean."]  # fmt: skip
    return lines


def _regret_lines(regret: dict[str, Any], title: str) -> list[str]:
    if not regret:
        return []
    lines = ["", f"{title}:", "",
             "| policy | mean top-1 regret, points [95 % CI] | minus best fixed policy |",
             "|---|---|---|"]  # fmt: skip
    for name, r in sorted(regret.items(), key=lambda kv: kv[1]["value"]):
        diff = r.get("minus_best_fixed")
        lines.append(f"| {name} | {_ci(r, '.2f')} | {_ci(diff) if diff else '–'} |")
    return [*lines, "", f"Best fixed policy: {next(iter(regret.values()))['best_fixed']}."]


def write_benchmark_report(
    table: Sequence[Entry], validation: dict[str, Any], studies: Sequence[str], outdir: Path
) -> dict[str, Path]:
    """benchmark.md + heat maps, predicted-vs-measured and block-size plots in `outdir`."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    arms = list(validation["arms"])
    loto = validation["schemes"].get("leave-one-target-out", {})
    names = {
        "heatmap": "benchmark_gain_heatmap.png",
        "predicted": "benchmark_predicted_vs_measured.png",
        "blocks": "benchmark_block_size.png",
    }
    made = {
        "heatmap": plot_gain_heatmaps(table, arms, outdir / names["heatmap"]),
        "predicted": plot_predicted_vs_measured(
            loto.get("predictions") or [], arms, outdir / names["predicted"]
        ),
        "blocks": plot_block_trend(block_shuffle_trend(table), outdir / names["blocks"]),
    }
    files = {k: names[k] for k, ok in made.items() if ok}
    md = outdir / "benchmark.md"
    md.write_text(markdown(validation, studies, files, table))
    return {"md": md, **{k: outdir / v for k, v in files.items()}}
