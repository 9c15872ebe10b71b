"""Whether a workdir holds a finished run of exactly a given config.

Why its own module: training, the sweep's choice and the report all ask it, and each must give
the same answer: a run of another config in a cell's directory (copied in, or left by an edited
study) is never that cell's result, never a trial to choose from and never skipped as done.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections as mlc


def is_finished(workdir: Path, config: mlc.ConfigDict) -> bool:
    """A finished run of exactly this config lives in `workdir` (then it is not re-run)."""
    summary, cfg = workdir / "summary.json", workdir / "config.json"
    if not (summary.exists() and cfg.exists()):
        return False
    from jtl.transfer.strategies import recorded_run_diff
    from jtl.weights.source_model import resolve_input_scale

    recorded = json.loads(cfg.read_text())
    return not recorded_run_diff(recorded, config, resolve_input_scale(config))


def is_foreign(workdir: Path, config: mlc.ConfigDict) -> bool:
    """`workdir` holds a run, but not one of this config (its results are not this config's)."""
    return (workdir / "config.json").exists() and not is_finished(workdir, config)
