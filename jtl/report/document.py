"""The report document (one block list rendered to Markdown and to self-contained HTML),
number formatting and the accuracy table."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jtl.report.aggregate import TIE, _at, _isnan, arms_of, sizes_of


class _Doc:
    """A tiny block list rendered both to Markdown and to self-contained HTML."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def ul(self, items: Sequence[str]) -> None:
        self.blocks.append(("ul", list(items)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Cells are strings or (text, bold) pairs."""
        self.blocks.append(("table", (list(header), [list(r) for r in rows])))

    def img(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def markdown(self) -> str:
        out = []
        for kind, b in self.blocks:
            if kind == "h":
                out.append("#" * b[0] + " " + b[1])
            elif kind == "p":
                out.append(b)
            elif kind == "code":
                out.append("```\n" + b + "\n```")
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in b))
            elif kind == "table":
                header, rows = b
                lines = [
                    "| " + " | ".join(_md_cell(c) for c in header) + " |",
                    "|" + "---|" * len(header),
                ]
                lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
                out.append("\n".join(lines))
            elif kind == "img":
                out.append(f"![{b[1]}]({b[0].name})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{_CSS}</style></head><body>",
        ]
        for kind, b in self.blocks:
            if kind == "h":
                out.append(f"<h{b[0]}>{html.escape(b[1])}</h{b[0]}>")
            elif kind == "p":
                out.append(f"<p>{html.escape(b)}</p>")
            elif kind == "code":
                out.append(f"<pre><code>{html.escape(b)}</code></pre>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in b) + "</ul>")
            elif kind == "table":
                header, rows = b
                head = "".join(f"<th>{_html_cell(c)}</th>" for c in header)
                body = "".join(
                    "<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in r) + "</tr>" for r in rows
                )
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "img":
                data = base64.b64encode(Path(b[0]).read_bytes()).decode("ascii")
                out.append(f'<img alt="{html.escape(b[1])}" src="data:image/png;base64,{data}">')
        out.append("</body></html>")
        return "\n".join(out) + "\n"


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
    "color:#222;line-height:1.45}table{border-collapse:collapse;margin:0.8em 0}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}"
    "pre{background:#f6f6f6;padding:0.6em;overflow-x:auto}img{max-width:100%}"
)


def _md_cell(c: Any) -> str:
    text, bold = c if isinstance(c, tuple) else (str(c), False)
    text = text.replace("|", "\\|")
    return f"**{text}**" if bold else text


def _html_cell(c: Any) -> str:
    text, bold = c if isinstance(c, tuple) else (str(c), False)
    return f"<b>{html.escape(text)}</b>" if bold else html.escape(text)


def _pct(a: dict[str, Any]) -> str:
    text = f"{100 * a['mean']:.1f}"
    return text + (f" ± {100 * a['std']:.1f}" if a["n"] > 1 else "")


def _ex(n: float) -> str:
    return f"{n:,.0f}"


# --------------------------------------------------------------------------- tables


def accuracy_table(agg: Sequence[dict[str, Any]], target: str) -> tuple[list[str], list[list]]:
    """Header and rows (arms x sizes) of mean ± std (n) test accuracy; best per column bold.

    A cell whose runs did not all converge is marked "†" (not converged: a lower bound).
    """
    sizes = sizes_of(agg, target)
    cell = {(a["arm"], a["size"]): a for a in agg if a["target"] == target}
    best = {s: max(a["mean"] for a in _at(agg, target, s)) for s in sizes}
    header = ["arm"] + [
        f"{s} ({_ex(np.mean([a['train_examples'] for a in _at(agg, target, s)]))} ex.)"
        for s in sizes
    ]
    rows = []
    for arm in arms_of(agg, target):
        r: list[Any] = [arm]
        for s in sizes:
            a = cell.get((arm, s))
            if a is None:
                r.append("–")
            else:
                mark = "" if a.get("converged") else " †"
                r.append((f"{_pct(a)} (n={a['n']}){mark}", a["mean"] >= best[s] - TIE))
        rows.append(r)
    return header, rows


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "–" if v is None or _isnan(v) else format(v, spec)


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"
