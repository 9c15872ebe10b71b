"""The advisor fitted on the transferability benchmark: predicted gains before any training.

| module | what |
|---|---|
| `table` | finished studies' rows + per-size scores -> one entry per (source, target, size) |
| `model` | the predictor: per transfer arm, ridge on the scores (fit, predict, coverage) |
| `validation` | leave-one-group-out CV, tau / weighted tau / Pearson / sign / regret, baselines |

`jtl advisor fit` builds the table, fits the model, validates it, and writes the JSON that
ships as `jtl/advisor/fitted.json`; `jtl advise` reads it (`advice`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from jtl.advisor import model as model_lib
from jtl.advisor.table import SCRATCH
from jtl.advisor.validation import choose
from jtl.runtime.errors import MissingFileError

FITTED = Path(__file__).with_name("fitted.json")
CATCH_UP_GRID = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def load(path: str | Path | None = None) -> dict[str, Any] | None:
    """The fitted advisor (model, provenance and validation headline), or None if none ships."""
    if path and not Path(path).exists():
        raise MissingFileError(f"advisor {path} not found", "give a `jtl advisor fit --out` file")
    path = Path(path) if path else FITTED
    if not path.exists():
        return None
    return json.loads(path.read_text())


def catch_up(model: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The smallest size per class (within the benchmark's sizes) where no transfer arm is
    predicted to beat scratch; the scores stay those of the sample, only the size moves."""
    lo, hi = model.get("per_class_range", [math.nan, math.nan])
    start = float(record.get("per_class") or lo)
    for n in CATCH_UP_GRID:
        if n < start or n > hi:
            continue
        preds = model_lib.predict(model, [{**record, "per_class": n}])
        if max(float(v[0]) for v in preds.values()) <= 0:
            return {"per_class": n, "text": f"scratch catches up by about {n} per class"}
    return {"per_class": None, "text": f"beyond the sizes measured (up to {hi:g} per class)"}


def advice(fitted: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Predicted gain per transfer arm (points, with the model's interval), the recommended arm
    and the catch-up size, or `covered: False` with the reasons the benchmark cannot answer."""
    model = fitted["model"]
    reasons = model_lib.out_of_range(model, record)
    if record.get("modality", "image") not in fitted.get("modalities", ["image"]):
        reasons.append(f"the benchmark has no {record['modality']} rows")
    if reasons:
        return {"covered": False, "reasons": reasons}
    preds = {arm: float(v[0]) for arm, v in model_lib.predict(model, [record]).items()}
    gains = {
        arm: {"gain": p, "low": p - model["arms"][arm]["interval"],
              "high": p + model["arms"][arm]["interval"]}
        for arm, p in preds.items()
    }  # fmt: skip
    return {
        "covered": True,
        "gains": gains,
        "recommendation": choose(preds),
        "baseline": SCRATCH,
        "catch_up": catch_up(model, record),
        "coverage": model.get("coverage"),
    }
