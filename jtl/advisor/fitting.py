"""`jtl advisor fit`: benchmark studies -> the fitted advisor JSON + its validation report.

The JSON holds the model (features, per-arm ridge weights, scaler, ranges, intervals), where it
came from (studies, entries, date) and the validation headline, so `jtl advise` on a fresh
install both predicts and can say how far to trust the prediction.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any

from jtl.advisor import model as model_lib
from jtl.advisor import table as table_lib
from jtl.advisor import validation
from jtl.errors import DataError

MIN_ENTRIES = 6


def _fmt_ci(m: dict[str, Any], scale: float = 1.0, spec: str = "+.2f") -> str:
    v, (lo, hi) = m["value"], m["ci"]
    if not math.isfinite(v):
        return "n/a"
    return f"{scale * v:{spec}} [{scale * lo:{spec}}, {scale * hi:{spec}}]"


def markdown(result: dict[str, Any], studies: list[str]) -> str:
    """The validation tables (the text docs/results.md quotes)."""
    lines = [
        "# Advisor validation",
        "",
        f"Studies: {', '.join(studies)}; {result['entries']} (source, target, size) triples, "
        f"transfer arms {', '.join(result['arms'])}; regret over the "
        f"{result['regret_entries']} triples that measured every arm. 95 % bootstrap "
        f"intervals over targets ({validation.BOOTSTRAP} resamples).",
    ]
    for scheme, s in result["schemes"].items():
        m = s["metrics"]
        lines += ["", f"## {scheme}", "", "| metric | value [95 % CI] |", "|---|---|"]
        for key, label in (
            ("kendall_tau_sources", "Kendall tau, ranking sources per (target, size, arm)"),
            ("weighted_tau_sources", "weighted tau, ranking sources per (target, size, arm)"),
            ("kendall_tau_arms", "Kendall tau, ranking arms per triple"),
            ("weighted_tau_arms", "weighted tau, ranking arms per triple"),
            ("pearson", "Pearson r, predicted vs measured gain"),
            ("sign_accuracy", "sign accuracy (helps significantly or not)"),
            ("interval_coverage", "measured gain inside the predicted interval"),
        ):
            lines.append(f"| {label} | {_fmt_ci(m[key])} |")
        lines.append(
            f"| share of (triple, arm) measured as significant gains | "
            f"{m['sign_accuracy']['base_rate_significant']:.2f} |"
        )
        lines += [
            "",
            "| policy | mean top-1 regret, points [95 % CI] | minus best fixed policy |",
            "|---|---|---|",
        ]
        for name, r in sorted(s["regret"].items(), key=lambda kv: kv[1]["value"]):
            diff = r.get("minus_best_fixed")
            lines.append(
                f"| {name} | {_fmt_ci(r, spec='.2f')} | {_fmt_ci(diff) if diff else '–'} |"
            )
        best = next(iter(s["regret"].values()))["best_fixed"]
        lines.append("")
        lines.append(f"Best fixed policy: {best}.")
    return "\n".join(lines) + "\n"


def fit_and_validate(
    studies: list[str], out: str | Path, report: str | Path | None = None
) -> dict[str, Any]:
    """Builds the table from `studies`, validates, fits on everything, writes `out`."""
    rows, records = table_lib.read_studies(studies)
    table = table_lib.build(rows, records)
    if len(table) < MIN_ENTRIES:
        raise DataError(
            f"only {len(table)} (source, target, size) triples with scores, scratch and transfer "
            f"rows in {studies}; the advisor needs at least {MIN_ENTRIES}",
            "run more of the benchmark (configs/studies/transfer_bench.py)",
        )
    result = validation.validate(table)
    arms = table_lib.transfer_arms(table)
    model = model_lib.fit(table, arms)
    loto = result["schemes"]["leave-one-target-out"]
    fitted = {
        "model": model,
        "modalities": ["image"],
        "provenance": {
            "studies": [str(Path(s)) for s in studies],
            "entries": len(table),
            "sources": sorted({e["source"] for e in table}),
            "targets": sorted({e["target"] for e in table}),
            "fitted": datetime.date.today().isoformat(),
        },
        "validation": {
            "scheme": "leave-one-target-out",
            "weighted_tau_sources": loto["metrics"]["weighted_tau_sources"],
            "pearson": loto["metrics"]["pearson"],
            "regret": {k: {"value": v["value"], "ci": v["ci"]} for k, v in loto["regret"].items()},
        },
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fitted, indent=1, allow_nan=True) + "\n")
    text = markdown(result, [str(s) for s in studies])
    if report:
        rdir = Path(report)
        rdir.mkdir(parents=True, exist_ok=True)
        (rdir / "validation.md").write_text(text)
        payload = {"validation": result, "table": table}
        (rdir / "validation.json").write_text(json.dumps(payload, indent=1) + "\n")
    r = loto["regret"]
    best = next(iter(r.values()))["best_fixed"]
    summary = (
        f"advisor fitted on {len(table)} triples -> {out}\n"
        f"leave-one-target-out: weighted tau (sources) "
        f"{_fmt_ci(loto['metrics']['weighted_tau_sources'])}, Pearson "
        f"{_fmt_ci(loto['metrics']['pearson'])}; regret advisor {_fmt_ci(r['advisor'], spec='.2f')}"
        f" vs {best} {_fmt_ci(r[best], spec='.2f')} points"
    )
    return {"summary": summary, "table": table, "validation": result, "fitted": fitted}
