"""Orbax checkpoints: save/resume a run, write imported weights, load weights for transfer.

One layout everywhere: `<dir>/checkpoints/<step>/{state,meta}`. A run's `state` holds
`params`, `batch_stats`, `opt_state`, `step`; an imported model's holds `params` and
`batch_stats`. Loading weights for transfer restores only those two collections, and reports
missing, unexpected and shape-mismatched keys: an error by default, never a silent partial load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from jtl.paths import as_path

WEIGHT_COLLECTIONS = ("params", "batch_stats")


class CheckpointMismatchError(ValueError):
    """Raised when a checkpoint does not fit the model it is loaded into."""


def _handlers(state_handler: ocp.CheckpointHandler | None = None) -> dict[str, Any]:
    return {
        "state": state_handler or ocp.StandardCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
    }


class RunCheckpoints:
    """Save every N steps and at the end, keep K, asynchronously; resume from the latest."""

    def __init__(self, directory: str | Path, keep: int = 2, save_every: int = 0) -> None:
        self.directory = as_path(directory)
        self.save_every = save_every
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_handlers=_handlers(),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.save_every > 0 and step % self.save_every == 0

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding skeleton that orbax restores into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def checkpoints_dir(path: str | Path) -> epath.Path:
    """Accepts a run workdir, an import dir, or a `checkpoints/` dir itself (local or gs://)."""
    path = as_path(path)
    if (path / "checkpoints").is_dir():
        return path / "checkpoints"
    if path.is_dir() and any(p.name.isdigit() for p in path.iterdir()):
        return path
    raise FileNotFoundError(
        f"no orbax checkpoint under {path}: expected a run workdir (with checkpoints/), a "
        "directory written by `jtl import`, or a checkpoints/ directory. Train a source model with "
        "`jtl train ... --workdir DIR` or import one with `jtl import --from FILE --model NAME "
        "--out DIR`."
    )


def save_variables(directory: str | Path, variables: dict[str, Any], meta: dict[str, Any]) -> None:
    """Writes model weights as an orbax checkpoint plus `import.json`; never overwrites.

    Everything is written into a temporary sibling first and renamed at the end, so an error
    leaves nothing partial behind.
    """
    directory = Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(
            f"{directory} exists and is not empty; nothing was written. Choose a new --out "
            "directory (jtl never overwrites checkpoints)."
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        weights = {k: variables.get(k, {}) for k in WEIGHT_COLLECTIONS}
        weights = jax.tree.map(np.asarray, weights)
        manager = ocp.CheckpointManager(tmp / "checkpoints", item_handlers=_handlers())
        manager.save(
            0,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(weights), meta=ocp.args.JsonSave(meta)
            ),
        )
        manager.wait_until_finished()
        manager.close()
        (tmp / "import.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if directory.exists():
            directory.rmdir()
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a/b/c": leaf}; the path convention used by rules and reports."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict) or hasattr(tree, "items"):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}/"))
    elif tree is not None:
        out[prefix.rstrip("/")] = tree
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = out
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return out


@dataclasses.dataclass
class LoadReport:
    """What a transfer load did, key by key (paths like `params/backbone/block1/conv/kernel`)."""

    source: str
    step: int
    loaded: list[str]
    excluded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]
    source_meta: dict[str, Any]

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} arrays from {self.source} (step {self.step}); "
            f"excluded {len(self.excluded)}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape-mismatched {len(self.mismatched)}"
        )


def _listing(title: str, items: list[str], limit: int = 15) -> str:
    if not items:
        return ""
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:limit]) + more


def load_variables(
    path: str | Path,
    target: dict[str, Any],
    exclude: Sequence[str] = (),
    strict: bool = True,
    step: int | None = None,
) -> tuple[dict[str, Any], LoadReport]:
    """Restores `params`/`batch_stats` from a checkpoint into the structure of `target`.

    Only the arrays that are asked for are read (orbax partial restore). `exclude` holds regexes
    (fullmatch on paths without the collection prefix, e.g. `head/.*`) whose target values are
    kept as initialized. Missing, unexpected or shape-mismatched keys raise
    `CheckpointMismatchError` unless `strict=False`, in which case they are logged and the target
    values kept.
    """
    ckpt_dir = checkpoints_dir(path)
    manager = ocp.CheckpointManager(ckpt_dir, item_handlers=_handlers())
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{ckpt_dir} holds no finished checkpoint step")
    metadata = manager.item_metadata(step)
    try:
        meta_item = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        source_meta = dict(meta_item["meta"] or {})
    except (FileNotFoundError, KeyError, ValueError):
        source_meta = {}
    state_md = metadata["state"]
    state_md = state_md.tree if hasattr(state_md, "tree") else state_md
    manager.close()

    source = {
        k: v
        for k, v in flatten({c: state_md.get(c, {}) for c in WEIGHT_COLLECTIONS}).items()
        if v is not None
    }
    wanted = flatten({c: target.get(c, {}) for c in WEIGHT_COLLECTIONS})
    patterns = [re.compile(p) for p in exclude]

    def is_excluded(p: str) -> bool:
        rel = p.split("/", 1)[1]
        return any(r.fullmatch(rel) or r.fullmatch(p) for r in patterns)

    excluded = sorted(p for p in set(wanted) | set(source) if is_excluded(p))
    missing = sorted(p for p in wanted if p not in source and not is_excluded(p))
    unexpected = sorted(p for p in source if p not in wanted and not is_excluded(p))
    mismatched = sorted(
        f"{p}: checkpoint {tuple(source[p].shape)} vs model {tuple(np.shape(wanted[p]))}"
        for p in wanted
        if p in source
        and not is_excluded(p)
        and tuple(source[p].shape) != tuple(np.shape(wanted[p]))
    )
    bad_shape = {m.split(":")[0] for m in mismatched}
    to_load = sorted(p for p in wanted if p in source and not is_excluded(p) and p not in bad_shape)
    report = LoadReport(
        str(ckpt_dir), int(step), to_load, excluded, missing, unexpected, mismatched, source_meta
    )
    problems = (
        _listing("missing in checkpoint", missing)
        + _listing("unexpected in checkpoint", unexpected)
        + _listing("shape mismatch", mismatched)
    )
    if problems:
        hint = (
            "\nFix: exclude the parts you re-initialize (e.g. --config.init.exclude='head/.*' "
            "for a new head), check that --config.model matches the source model, or set "
            "--config.init.strict=False to keep the initial values of these keys."
        )
        if strict:
            raise CheckpointMismatchError(
                f"checkpoint {ckpt_dir} does not fit the model:{problems}{hint}"
            )
        logging.warning("Partial load from %s:%s", ckpt_dir, problems)

    abstract = unflatten(
        {p: jax.ShapeDtypeStruct(tuple(source[p].shape), source[p].dtype) for p in to_load}
    )
    restored_flat: dict[str, Any] = {}
    if to_load:
        reader = ocp.CheckpointManager(
            ckpt_dir, item_handlers={"state": ocp.PyTreeCheckpointHandler()}
        )
        restored = reader.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=abstract,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                    partial_restore=True,
                )
            ),
        )["state"]
        reader.close()
        restored_flat = flatten(restored)
    merged = dict(wanted)
    for p in to_load:
        merged[p] = np.asarray(restored_flat[p]).astype(np.asarray(wanted[p]).dtype)
    out = unflatten(merged)
    for c in WEIGHT_COLLECTIONS:
        out.setdefault(c, {})
    return out, report
