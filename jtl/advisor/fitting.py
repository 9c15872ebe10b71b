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
from jtl.runtime.errors import DataError

MIN_ENTRIES = 6


def _fmt_ci(m: dict[str, Any], spec: str = "+.2f") -> str:
    v, (lo, hi) = m["value"], m["ci"]
    if not math.isfinite(v):
        return "n/a"
    return f"{v:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def fit_and_validate(
    studies: list[str],
    out: str | Path,
    report: str | Path | None = None,
    tables: list[str] = (),
) -> dict[str, Any]:
    """Builds the table from `studies` (on top of earlier fits' `tables`), validates, fits on
    everything, writes `out` (and `report/validation.json`, the rows `jtl.report.benchmark`
    renders, which a later fit can take as a table)."""
    rows, records = table_lib.read_studies(studies)
    table = table_lib.build(rows, records, table_lib.read_tables(tables))
    sources = [*map(str, studies), *(f"{t} (table)" for t in tables)]
    if len(table) < MIN_ENTRIES:
        raise DataError(
            f"only {len(table)} (source, target, size) triples with scores, scratch and transfer "
            f"rows in {sources}; the advisor needs at least {MIN_ENTRIES}",
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
            "studies": sources,
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
            "regret_probe_or_scratch": {
                k: {"value": v["value"], "ci": v["ci"]}
                for k, v in loto.get("regret_probe_or_scratch", {}).items()
            },
        },
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fitted, indent=1, allow_nan=True) + "\n")
    if report:
        rdir = Path(report)
        rdir.mkdir(parents=True, exist_ok=True)
        payload = {"validation": result, "table": table, "studies": sources}
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
    return {
        "summary": summary,
        "table": table,
        "validation": result,
        "fitted": fitted,
        "sources": sources,
    }
