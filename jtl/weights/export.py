"""`jtl export --merge`: a PEFT run -> a plain checkpoint any jtl command loads.

A LoRA run's params hold `lora/<kernel path>/{a, b}` next to the frozen base; merging writes
W + (alpha / r) a@b into each kernel (the same `jtl.models.peft.merge_lora` the trainer applies), so
the exported model computes what the run evaluated, with the base model's own parameter tree.
BitFit and norm-only runs are already plain and are copied as is. Adapters add layers the base
architecture does not have, so they cannot be merged into it: that is refused.

The output is a `jtl import`-style directory (`checkpoints/` + `import.json` with model,
classes, input size, channels and preprocessing), which `jtl predict`, `jtl advise` and
`--config.init.checkpoint` read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jtl.models import peft
from jtl.runtime.errors import MissingFileError
from jtl.weights import checkpoint as ckpt
from jtl.weights import slim_checkpoint, source_model


def _run_state(run: Path, base: str | None = None) -> tuple[dict[str, Any], int]:
    """The latest checkpoint's params and batch_stats; a slim (PEFT) checkpoint gets its frozen
    weights back from its base (`base`, else where it was, else next to the run), whose sha256
    must match."""
    variables, step, _ = slim_checkpoint.read_run_variables(run, base)
    return variables, step


def export_merged(run: str | Path, out: str | Path, base: str | None = None) -> dict[str, Any]:
    """Writes the merged model of run workdir `run` into the new directory `out`; returns meta.
    `base`: where a PEFT run's base is now, when it moved (found by its sha256)."""
    run = Path(run).absolute()
    if not (run / "config.json").exists():
        raise MissingFileError(
            f"{run} is not a run workdir (no config.json)", "pass the --workdir of `jtl train`"
        )
    config = json.loads((run / "config.json").read_text())
    info = source_model.describe(run)
    variables, step = _run_state(run, base)
    variables = peft.merged_variables(config, variables)
    meta = import_meta(info, exported_from=str(run), strategy=config.get("strategy"), step=step)
    ckpt.save_variables(out, variables, meta)
    return meta


def import_meta(info: source_model.SourceModel, **extra: Any) -> dict[str, Any]:
    """`import.json` for a model written from a run (an export, a soup): what loads it."""
    return {
        "model": info.model,
        "model_kwargs": {**info.kwargs, "num_classes": info.num_classes},
        "class_names": info.class_names,
        "image_size": info.image_size,
        "channels": info.channels,
        "preprocess": info.preprocess,
        "input_scale": info.input_scale,
        **extra,
    }
