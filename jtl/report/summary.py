"""Generated sentences per target: fine-tune or scratch, from which size on, and at what cost.

Verdicts ("wins", "catches up", "negative transfer") are stated only from arms that converged;
otherwise the sentence gives the measured numbers and why there is no verdict
(jtl.report.convergence).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jtl.report.aggregate import TIE, _at, _best, sizes_of
from jtl.report.analysis import welch_p_two_sided
from jtl.report.convergence import join, size_blockers, target_blockers
from jtl.report.document import _ex, _pct

LIMIT = 3  # reasons spelled out per summary sentence; the tables and flags list them all


def _size_sentence(agg: Sequence[dict], target: str, size: str) -> str:
    s, t = _best(_at(agg, target, size, True)), _best(_at(agg, target, size, False))
    n_ex = _ex((s or t)["train_examples"])
    head = f"At {size} ({n_ex} training examples)"
    if s is None or t is None:  # one kind of arm only (e.g. a study without a scratch arm)
        ranked = sorted(_at(agg, target, size, s is not None), key=lambda a: -a["mean"])
        best = ranked[0]
        if len(ranked) == 1:
            return f"{head} only {best['arm']} was run: {_pct(best)} % test accuracy."
        kind = "scratch" if t is None else "transfer"
        others = ", ".join(f"{a['arm']} {_pct(a)} %" for a in ranked[1:])
        return (
            f"{head} the best {kind} arm is {best['arm']} with {_pct(best)} % test accuracy "
            f"(then {others}); no {'transfer' if t is None else 'scratch'} arm was run."
        )
    gap = 100 * (t["mean"] - s["mean"])
    p = welch_p_two_sided(t["values"], s["values"])
    p_text = f", Welch p = {p:.2g}" if p is not None else ", 1 run: no test"
    reasons = size_blockers(agg, target, size)
    if reasons:  # measured numbers, no verdict
        return (
            f"{head} {t['arm']} reached {_pct(t)} % and {s['arm']} {_pct(s)} % test accuracy; "
            f"{join(reasons, LIMIT)}."
        )
    if abs(t["mean"] - s["mean"]) <= TIE:
        return f"{head} {t['arm']} and {s['arm']} tie at {_pct(t)} % vs {_pct(s)} % test accuracy."
    win, lose = (t, s) if gap > 0 else (s, t)
    # "wins" only when the difference is significant; otherwise it is within run-to-run noise.
    verb = "wins with" if p is not None and p < 0.05 else "is ahead, not significantly, with"
    return (
        f"{head} {win['arm']} {verb} {_pct(win)} % test accuracy vs {_pct(lose)} % for "
        f"{lose['arm']} ({abs(gap):.1f} points ahead{p_text})."
    )


def _crossover_sentence(cross: dict[str, Any], smallest: str) -> str:
    if cross.get("reached") is None:
        return f"Crossover: {cross.get('note', 'n/a')}."
    largest, gap = cross["largest_size"], 100 * cross["gap_at_largest"]
    if cross.get("inconclusive"):
        return (
            f"Crossover: no verdict, {join(cross['inconclusive'], LIMIT)} (measured at {largest}: "
            f"scratch − transfer = {gap:+.1f} points)."
        )
    if not cross["reached"]:
        return (
            f"Scratch does not catch up within the sizes run: at {largest} the best scratch "
            f"arm is still {-gap:.1f} points behind the best transfer arm."
        )
    if cross["size"] == smallest:
        return (
            f"Scratch is never significantly behind the best transfer arm (from the smallest "
            f"size, {smallest}, on); at {largest} scratch − transfer = {gap:+.1f} points."
        )
    return (
        f"Scratch catches up from {cross['size']} ({_ex(cross['train_examples'])} examples) on "
        f"(within the pooled standard error of the best transfer arm at every larger size); "
        f"at {largest} scratch − transfer = {gap:+.1f} points."
    )


def _cost_sentence(agg: Sequence[dict], target: str) -> str:
    for size in reversed(sizes_of(agg, target)):
        s, t = _best(_at(agg, target, size, True)), _best(_at(agg, target, size, False))
        if s is None or t is None or not s["wall_time_s"] or t["wall_time_s"] is None:
            continue
        text = (
            f"at {size} a {t['arm']} run took {t['wall_time_s'] / s['wall_time_s']:.2f}× "
            f"the wall time of a {s['arm']} run ({t['wall_time_s']:.1f} s vs "
            f"{s['wall_time_s']:.1f} s"
        )
        if t["train_flops"] and s["train_flops"]:
            text += f"; {t['train_flops'] / s['train_flops']:.2f}× the training FLOPs"
        return text + ")"
    return "cost comparison n/a (no size with both a scratch and a transfer arm)"


def summarize(
    agg: Sequence[dict[str, Any]],
    target: str,
    cross: dict[str, Any],
    negative: Sequence[dict[str, Any]],
) -> str:
    """2-4 generated sentences answering "fine-tune or scratch, and at what cost" for a target."""
    sizes = sizes_of(agg, target)
    sentences = [_size_sentence(agg, target, size) for size in dict.fromkeys([sizes[0], sizes[-1]])]
    kinds = {a["scratch"] for a in agg if a["target"] == target}
    if len(kinds) == 1:  # nothing to compare with: say so once, claim nothing about the other
        missing = "transfer" if True in kinds else "scratch"
        sentences.append(
            f"Crossover, negative transfer and cost: n/a (no {missing} arm in this study)."
        )
        return " ".join(sentences)
    sentences.append(_crossover_sentence(cross, sizes[0]))
    neg = [f for f in negative if f["target"] == target and f.get("verdict", True)]
    reasons = target_blockers(agg, target)
    if neg:
        items = ", ".join(
            f"{f['arm']} at {f['size']} ({100 * f['gap']:+.1f} points vs {f['scratch_arm']}, "
            + (f"p = {f['p_value']:.2g})" if f["p_value"] is not None else f"{f['status']})")
            for f in neg
        )
        first = f"Negative transfer: {items}"
        if reasons:
            first += f"; elsewhere negative transfer: {join(reasons, LIMIT)}"
    elif reasons:
        first = f"Negative transfer: {join(reasons, LIMIT)}"
    else:
        first = "No transfer arm is significantly below scratch at any size"
    sentences.append(f"{first}; cost: {_cost_sentence(agg, target)}.")
    return " ".join(sentences)
