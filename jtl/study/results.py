"""A study's results: one row per finished cell, diverged cells, transferability scores.

The report package reads only these rows (`jtl.report.build_report`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections as mlc
from absl import logging

from jtl.evaluation import costs, run_summary
from jtl.study import sweep as sweep_lib
from jtl.study.finished import is_foreign
from jtl.study.grid import Cell, source_dir


def advise_scores(study: mlc.ConfigDict, root: Path, cells: Sequence[Cell]) -> list[dict]:
    """Transferability scores per (source, target, size), cached in `advise/`.

    Each size is scored on at most as many labelled examples per class as its cells train on
    (`jtl.advisor.advise.advise(per_class=...)`), capped at `advise_sample`: a score uses no
    label the user would not have. The report and the advisor's benchmark table read these records.
    """
    if not study.advise_sample or not study.sources:
        return []
    from jtl.advisor.advise import advise

    out = []
    # Only (target, size) pairs with a finished cell: a partial (or resumed) study scores what
    # it can report, and the rest once its cells finish.
    sizes = {(c.target, c.size): c for c in cells if (c.workdir(root) / "summary.json").exists()}
    for (target, size), cell in sizes.items():  # target outer: its data set loads once
        for source in study.sources:
            label = size.replace("/class", "").replace("%", "pct")
            cache = root / "advise" / f"{source}__{target}__{label}.json"
            if cache.exists():
                out.append(json.loads(cache.read_text()))
                continue
            config = cell.config()
            try:
                result = advise(
                    source_dir(root, source, study),
                    config.dataset,
                    sample=study.advise_sample,
                    image_size=config.image_size,
                    per_class=int(label) if label.isdigit() else None,
                )
            except Exception as e:  # noqa: BLE001 - a model advise cannot score is reported
                logging.warning("advise %s -> %s failed: %s", source, target, e)
                continue
            record = {
                "source": source,
                "target": target,
                "size": size,
                "dataset": config.dataset,
                **{k: float(v) for k, v in result["pretrained"].items()},
                "random_init": result["random_init"],
                **{k: result[k] for k in ("sample", "per_class", "num_classes")},
                **{k: result[k] for k in ("source_accuracy", "source_dataset")},
                "recommendation": result["recommendation"],
                "reasons": result["reasons"],
            }
            record["hscore"] = record.get("h_score", float("nan"))
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(record, indent=2) + "\n")
            out.append(record)
    return out


CALIBRATION_FIELDS = (
    "temperature",
    *(f"{split}_{m}{ts}" for split in ("val", "test") for m in ("nll", "brier", "ece")
      for ts in ("", "_ts")),
    "test_reliability",
    "shifts",
    "wise_ft",
)  # fmt: skip


def diverged_step(workdir: Path) -> int | None:
    """The step a finished cell diverged at (summary.json `diverged`), else None."""
    s = run_summary.read(workdir)
    if s is None:
        return None
    return int(s.get("diverged_step") or 0) if s.get("diverged") else None


def diverged_cells(cells: Sequence[Cell], root: Path) -> list[str]:
    """`cell id: diverged at step N` for every diverged cell (the report lists them)."""
    out = []
    for cell in cells:
        step = diverged_step(cell.workdir(root))
        if step is not None:
            out.append(f"{cell.id}: diverged at step {step}")
    return out


def _curve(workdir: Path) -> dict[str, list[list[float]]]:
    from jtl.evaluation.metrics import read_metrics

    curve: dict[str, list[list[float]]] = {"train": [], "val": []}
    for r in read_metrics(workdir):
        if r.get("split") in curve and "loss" in r:
            curve[r["split"]].append([r["step"], r["loss"], r.get("accuracy")])
    return curve


def collect(cells: Sequence[Cell], root: Path) -> list[dict[str, Any]]:
    """One row per finished cell: its identity, summary numbers, cost, convergence and curves.

    A swept cell gives one row, from the trial chosen on validation (jtl.study.sweep), once
    its whole grid has finished and been selected.
    """
    rows, other = [], []
    by_group = sweep_lib.groups(cells)  # each sweep's trials at their current attempts
    for cell in cells:
        workdir = cell.workdir(root)
        if is_foreign(workdir, cell.config()):
            if (workdir / "summary.json").exists():
                other.append(cell.id)  # a run of another config (e.g. copied in): not this cell's
            continue
        result = sweep_lib.cell_result(cell, root, by_group.get(sweep_lib.group_id(cell)))
        if result is None:
            continue
        cell_id, s, sweep = result
        if s.get("diverged"):  # no accuracy to average in; see diverged_cells
            continue
        flops = s.get("flops_per_step")
        steps_run = s.get("steps_run", s.get("steps", 0))
        num_classes = s.get("num_classes") or 0
        rows.append(
            {
                "cell": cell_id,
                "target": cell.target,
                "source": cell.source,
                "strategy": cell.strategy,
                "model": cell.model or s.get("model", ""),
                "arm": cell.arm,
                "size": cell.size,
                "train_examples": int(s["train_examples"]),
                "per_class": s["train_examples"] / num_classes if num_classes else None,
                "seed": cell.seed,
                "fold": cell.fold,
                "test_accuracy": float(s["test_accuracy"]),
                "val_accuracy": float(s.get("val_accuracy", float("nan"))),
                "test_loss": float(s.get("test_loss", float("nan"))),
                "val_loss": float(s.get("val_loss", float("nan"))),
                "steps": int(steps_run),
                "wall_time_s": float(s.get("wall_time_s", float("nan"))),
                "images_seen": int(s.get("images_seen", 0)),
                "train_flops": flops * steps_run if flops else None,
                # Cost of the run (jtl.evaluation.costs); older summaries lack some: None.
                **{k: s.get(k) for k in costs.COST_FIELDS},
                "early_stopped_step": (s.get("early_stopping") or {}).get("stopped_step"),
                # Runs from before converged budgets were equal-step runs.
                "budget": s.get("budget", "equal_steps"),
                "converged": bool(s.get("converged", False)),
                "cap_doublings": cell.attempt,  # re-runs at a doubled cap (jtl.study.budget)
                "best_step": s.get("best_step"),
                "epochs_run": s.get("epochs_run"),
                "probe_grid": len(s.get("probe_val_accuracy") or {}) or None,
                **_probe_choice(s),
                # calibration (jtl.evaluation.calibration); None for runs from before it
                **{k: s.get(k) for k in CALIBRATION_FIELDS},
                **sweep,
                "curve": _curve(cell.workdir(root)),
            }
        )
        if cell.trial:
            rows.extend(_soup_row(rows[-1], cell, cells, root))
    if other:
        logging.warning(
            "%d cell(s) hold a run of another config, left out of the report: %s%s",
            len(other), ", ".join(other[:3]), " ..." if len(other) > 3 else "",
        )  # fmt: skip
    return rows


def _soup_row(chosen: dict[str, Any], cell: Cell, cells: Sequence[Cell], root: Path) -> list:
    """The greedy soup of `cell`'s sweep (`study.soups`) as its own arm, beside the chosen
    trial's row: the same identity, the soup's numbers, the sweep's cost (the soup trains none)."""
    gid = sweep_lib.group_id(cell)
    s = run_summary.read(sweep_lib.soup_dir(root, gid, sweep_lib.groups(cells)[gid]))
    if s is None or s.get("test_accuracy") is None:
        return []
    numbers = ("test_accuracy", "val_accuracy", "test_loss", "val_loss", *CALIBRATION_FIELDS)
    return [
        {
            **chosen,
            "cell": f"{gid}/soup",
            "strategy": f"soup_{cell.strategy}",
            "arm": chosen["arm"].replace(cell.strategy, f"soup_{cell.strategy}", 1),
            **{k: s.get(k) for k in numbers},
            "soup_kept": len(s["soup"]["kept"]),
            "soup_max_error_barrier": max(b["error_barrier"] for b in s["soup"]["barriers"]),
            "curve": {},
        }
    ]


def _probe_choice(summary: dict[str, Any]) -> dict[str, Any]:
    """A linear probe's own validation choice (probe kind and L2), shown with the sweeps."""
    if "probe" not in summary:
        return {}
    return {"chosen": {"probe": summary["probe"], "l2": summary.get("probe_hyper")}}
