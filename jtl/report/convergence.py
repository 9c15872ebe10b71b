"""Which numbers may carry a verdict: only those of arms that converged.

A cell trained on an equal-step budget, or one that hit its `max_epochs` cap while validation
accuracy was still improving, gives a lower bound, not the arm's answer. Any verdict that rests
on such a cell (who wins at a size, the crossover, negative transfer) is replaced by the reason
it cannot be given: "inconclusive: ARM not converged at SIZE (raise max_epochs)", or
"equal-step budget, not converged". Rows without a `converged` field count as not converged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jtl.report.aggregate import _at

EQUAL_STEPS = "equal-step budget, not converged"


def converged(a: dict[str, Any]) -> bool:
    """An aggregate (or row) may carry a verdict: every one of its cells converged."""
    return bool(a.get("converged"))


def blocker(a: dict[str, Any]) -> str | None:
    """Why a (target, arm, size) aggregate cannot carry a verdict; None when it can."""
    if converged(a):
        return None
    if a.get("budget") in ("converged", "mixed"):
        return f"inconclusive: {a['arm']} not converged at {a['size']} (raise max_epochs)"
    return EQUAL_STEPS


def blockers(items: Sequence[dict[str, Any]]) -> list[str]:
    """The distinct reasons over `items`, in order; one "equal-step" reason at most."""
    out = [b for b in (blocker(a) for a in items) if b]
    return list(dict.fromkeys(out))


def target_blockers(agg: Sequence[dict[str, Any]], target: str, size: str | None = None) -> list:
    """Reasons against any verdict for a target (at one size, or across its sizes)."""
    items = [a for a in agg if a["target"] == target and (size is None or a["size"] == size)]
    return blockers(items)


def size_blockers(agg: Sequence[dict[str, Any]], target: str, size: str) -> list[str]:
    return blockers(_at(agg, target, size))


def join(reasons: Sequence[str], limit: int = 0) -> str:
    """Reasons joined by "; ", the first `limit` only (0 = all) and a count of the rest."""
    if limit and len(reasons) > limit:
        rest = len(reasons) - limit
        return "; ".join([*reasons[:limit], f"and {rest} more arm/size group(s) not converged"])
    return "; ".join(reasons)


def budget_label(agg: Sequence[dict[str, Any]]) -> str:
    """One line naming the budget the numbers come from."""
    kinds = {a.get("budget") for a in agg if a.get("budget") != "closed_form"}
    if not kinds:
        return "closed-form fits only (converged)"
    if kinds <= {"converged"}:
        n_bad = sum(1 for a in agg if not converged(a))
        doubled = sum(int(a.get("cap_doubled") or 0) for a in agg)
        rerun = f"{doubled} run(s) re-run with their cap doubled; " if doubled else ""
        return (
            "converged budget: each cell trains until validation accuracy stalls; "
            + rerun
            + (
                f"{n_bad} arm/size group(s) hit their cap still improving"
                if n_bad
                else "all converged"
            )
        )
    if kinds <= {"equal_steps", None}:
        return f"{EQUAL_STEPS}: every arm gets the same optimizer steps; no verdicts are stated"
    return "mixed budgets (equal steps and converged); verdicts only where every arm converged"
