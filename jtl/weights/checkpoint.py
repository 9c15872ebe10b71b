"""Orbax checkpoints: save/resume a run, write imported weights, load weights for transfer.

One layout everywhere: `<dir>/checkpoints/<step>/{state,meta}`. A run's `state` holds
`params`, `batch_stats`, `opt_state`, `step`; an imported model's holds `params` and
`batch_stats`. Loading weights for transfer restores only those two collections, and reports
missing, unexpected and shape-mismatched keys: an error by default, never a silent partial load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from jtl.runtime.errors import (
    CheckpointError,
    CheckpointWriteError,
    MissingFileError,
    UserError,
    one_line,
)
from jtl.runtime.paths import as_path

WEIGHT_COLLECTIONS = ("params", "batch_stats")


class CheckpointMismatchError(UserError, ValueError):
    """Raised when a checkpoint does not fit the model it is loaded into."""


def _handlers(state_handler: ocp.CheckpointHandler | None = None) -> dict[str, Any]:
    return {
        "state": state_handler or ocp.StandardCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
    }


def state_digest(tree: Any) -> str:
    """sha256 of every leaf's dtype, shape and bytes, in tree order: catches silent bit flips.

    Reads one addressable shard per array (replicated state), so it also works multi-host.
    """
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array):
            leaf = leaf.addressable_data(0)
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    """A short cause: tensorstore appends a page of spec after 'See full TensorStore details'."""
    full = str(e)
    reason = re.search(r":\s*([^:\[]+?)\s*\[os_error_code", full)
    if reason:  # tensorstore write errors: the OS reason and the file it was writing
        where = re.search(r'Failed writing: "([^"]+)"', full)
        return f"{reason.group(1)}" + (f" writing {where.group(1)}" if where else "")
    text = full.split("See full TensorStore details")[0]
    text = one_line(text) or type(e).__name__
    return f"{type(e).__name__}: {text[:240]}"


def _is_orbax_coroutine(obj: Any) -> bool:
    code = getattr(obj, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _silence_failed_orbax_reads() -> None:
    """A failed orbax read leaves coroutines in orbax's event loop; whenever they are collected
    (inside the read, or minutes later) Python prints 'Exception ignored in: <coroutine ...>'
    tracebacks or 'coroutine ... was never awaited' warnings that bury the one warning line and
    say nothing it does not. Installed once the first read has failed, for the rest of the
    process: only orbax's own coroutines are dropped, every other unraisable still prints."""
    if getattr(sys.unraisablehook, "_jtl_orbax_filter", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _is_orbax_coroutine(unraisable.object):
            previous(unraisable)

    hook._jtl_orbax_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    # jtl itself runs no coroutines: after a failed orbax read, an un-awaited one is orbax's.
    warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited")


class RunCheckpoints:
    """Save every N steps and at the end, keep K, asynchronously; resume from the latest.

    Each checkpoint's meta carries `state_sha256`; a restore that does not reproduce it (bit
    flips) or fails to read (truncation) falls back to the next older checkpoint, moving the
    bad ones to `corrupt_checkpoints/` beside `checkpoints/` (kept, never deleted). A failed
    write raises `CheckpointWriteError` naming the path and the last intact step.
    """

    def __init__(self, directory: str | Path, keep: int = 2, save_every: int = 0) -> None:
        self.directory = as_path(directory)
        self.save_every = save_every
        self.keep = keep
        self._manager = self._new_manager()
        self._in_flight: int | None = None

    def _new_manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True),
            item_handlers=_handlers(),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.save_every > 0 and step % self.save_every == 0

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        if step in self._manager.all_steps():
            return
        self.wait()  # orbax waits for the previous save anyway; its failure is named as its own
        meta = {**meta, "state_sha256": state_digest(state)}
        with self._write_errors(step):
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
            )
        self._in_flight = step

    @contextlib.contextmanager
    def _write_errors(self, step: int) -> Any:
        """Turns any failure of a checkpoint write into one `CheckpointWriteError`."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - orbax/tensorstore raise many types
            intact = [s for s in self._finalized_steps() if s != step]
            last = f"step {max(intact)}" if intact else "none"
            raise CheckpointWriteError(
                f"could not write checkpoint step {step} to {self.directory} ({_first_line(exc)})",
                f"last intact checkpoint: {last}; free space or use another --workdir, then "
                "re-run the same command to resume from it",
            ) from exc

    def _finalized_steps(self) -> list[int]:
        """Step directories orbax finished (a write in progress or failed lives in a tmp dir)."""
        try:
            return sorted(
                int(p.name)
                for p in self.directory.iterdir()
                if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists()
            )
        except OSError:
            return []

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        state, meta = restored["state"], dict(restored["meta"])
        expected = meta.get("state_sha256")
        if expected and state_digest(state) != expected:
            raise CheckpointError(f"checkpoint step {step} does not match its sha256 (bit flip)")
        return state, meta

    def restore_usable(
        self, abstract_for: Callable[[int], Any]
    ) -> tuple[int, Any | None, dict[str, Any]]:
        """(step, state, meta) of the newest checkpoint that restores intact; (0, None, {})
        when there is none. `abstract_for(step)` is the abstract state saved at that step.

        Bad newer checkpoints are moved to `corrupt_checkpoints/` and named in one warning.
        If none restores, nothing is moved and a `CheckpointError` names the directory.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        bad: list[tuple[int, BaseException]] = []
        for step in steps:
            try:
                state, meta = self.restore(abstract_for(step), step)
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
                _silence_failed_orbax_reads()
                bad.append((step, e))
                gc.collect()  # most of orbax's leftovers go now, before the warning line
                continue
            if bad:
                self._quarantine([b for b, _ in bad])
                logging.warning(
                    "checkpoint step %s in %s is unreadable (%s); resumed from step %d "
                    "(bad checkpoint moved to %s)",
                    ", ".join(str(b) for b, _ in bad),
                    self.directory,
                    _first_line(bad[0][1]),
                    step,
                    self.directory.parent / "corrupt_checkpoints",
                )
            return step, state, meta
        if bad:
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be restored (steps "
                f"{', '.join(str(b) for b, _ in bad)}; newest: {_first_line(bad[0][1])})",
                "move the directory aside to start over, or use a new --workdir",
            )
        return 0, None, {}

    def _quarantine(self, steps: Sequence[int]) -> None:
        """Moves bad step directories aside (kept for inspection) and re-reads the steps."""
        self._manager.close()
        target = self.directory.parent / "corrupt_checkpoints"
        target.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for step in steps:
            (self.directory / str(step)).rename(target / f"{step}-{stamp}")
        self._manager = self._new_manager()

    def wait(self) -> None:
        """Blocks until the in-flight save is on disk (raises `CheckpointWriteError` if not)."""
        if self._in_flight is None:
            self._manager.wait_until_finished()
            return
        step, self._in_flight = self._in_flight, None
        with self._write_errors(step):
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
    raise MissingFileError(
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

    def problems(self) -> str:
        """The missing, unexpected and mismatched keys as an indented listing ("" if none)."""
        return (
            _listing("missing in checkpoint", self.missing)
            + _listing("unexpected in checkpoint", self.unexpected)
            + _listing("shape mismatch", self.mismatched)
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
    arrays: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], LoadReport]:
    """Restores `params`/`batch_stats` from a checkpoint (see `_load_variables`); `arrays`
    (flat, host) replaces what the checkpoint stores (a PEFT run's weights with its base filled
    in, `jtl.weights.slim_checkpoint.load_variables`), matched by the same rules.

    A checkpoint that cannot be read at all (truncated, corrupt, not orbax) is one
    `CheckpointError` naming the path, never a library traceback.
    """
    try:
        return _load_variables(path, target, exclude, strict, step, arrays)
    except (CheckpointMismatchError, UserError):
        raise
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
        raise CheckpointError(
            f"cannot use checkpoint {path}: {_first_line(e)}",
            "point --config.init.checkpoint at a run workdir or a `jtl import` directory "
            "with an intact checkpoint",
        ) from e


def _load_variables(
    path: str | Path,
    target: dict[str, Any],
    exclude: Sequence[str] = (),
    strict: bool = True,
    step: int | None = None,
    arrays: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], LoadReport]:
    """Restores `params`/`batch_stats` from a checkpoint into the structure of `target`.

    Only the arrays that are asked for are read (orbax partial restore). `exclude` holds regexes
    (fullmatch on paths without the collection prefix, e.g. `head/.*`) whose target values are
    kept as initialized. Missing, unexpected or shape-mismatched keys raise
    `CheckpointMismatchError` unless `strict=False`, in which case they are logged and the target
    values kept.
    """
    ckpt_dir = checkpoints_dir(path)
    step, source, source_meta = _contents(ckpt_dir, step)
    plain = None if arrays is None else {k: np.asarray(v) for k, v in arrays.items()}
    if plain is not None:
        source = plain
    wanted = flatten({c: target.get(c, {}) for c in WEIGHT_COLLECTIONS})
    report = _match(str(ckpt_dir), step, source, wanted, exclude, source_meta)
    problems = report.problems()
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
    to_load = report.loaded
    restored = plain if plain is not None else _read_arrays(ckpt_dir, step, source, to_load)
    merged = dict(wanted)
    for p in to_load:
        merged[p] = np.asarray(restored[p]).astype(np.asarray(wanted[p]).dtype)
    out = unflatten(merged)
    for c in WEIGHT_COLLECTIONS:
        out.setdefault(c, {})
    return out, report


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The latest checkpoint's metadata (what `save` wrote beside the state)."""
    return _contents(checkpoints_dir(path), None)[2]


def _contents(ckpt_dir: epath.Path, step: int | None) -> tuple[int, dict[str, Any], dict]:
    """(step, {path: array metadata} of the weight collections, the checkpoint's meta)."""
    manager = ocp.CheckpointManager(ckpt_dir, item_handlers=_handlers())
    step = manager.latest_step() if step is None else step
    if step is None:
        manager.close()
        raise MissingFileError(f"{ckpt_dir} holds no finished checkpoint step")
    metadata = manager.item_metadata(step)
    try:
        meta_item = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        source_meta = dict(meta_item["meta"] or {})
    except (FileNotFoundError, KeyError, ValueError):
        source_meta = {}
    state_md = metadata["state"]
    state_md = state_md.tree if hasattr(state_md, "tree") else state_md
    manager.close()
    flat = flatten({c: state_md.get(c, {}) for c in WEIGHT_COLLECTIONS})
    return int(step), {k: v for k, v in flat.items() if v is not None}, source_meta


def _match(
    where: str,
    step: int,
    source: dict[str, Any],
    wanted: dict[str, Any],
    exclude: Sequence[str],
    source_meta: dict[str, Any],
) -> LoadReport:
    """Which keys load, and which are excluded, missing, unexpected or of another shape."""
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
    return LoadReport(where, step, to_load, excluded, missing, unexpected, mismatched, source_meta)


def _read_arrays(
    ckpt_dir: epath.Path, step: int, source: dict[str, Any], to_load: Sequence[str]
) -> dict[str, Any]:
    """Only the `to_load` arrays of a checkpoint (orbax partial restore), flat."""
    if not to_load:
        return {}
    abstract = unflatten(
        {p: jax.ShapeDtypeStruct(tuple(source[p].shape), source[p].dtype) for p in to_load}
    )
    reader = ocp.CheckpointManager(ckpt_dir, item_handlers={"state": ocp.PyTreeCheckpointHandler()})
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
    return flatten(restored)
