"""Small checkpoints for runs that freeze most of a pretrained model (the PEFT strategies).

A LoRA, adapter, BitFit or norm-only run changes a few percent of its parameters; the rest are
the base checkpoint's weights, bit for bit. Its checkpoints therefore store the train state
*without* the frozen parameters, plus a reference to the base: `{"path", "sha256"}` in the
checkpoint metadata, the sha256 taken over the frozen parameters themselves (path-sorted
dtype, shape and bytes, `jtl.weights.checkpoint.state_digest`). Resuming or exporting re-reads
the base from `path` and refuses, in one line, a base whose frozen weights no longer hash to
`sha256`: an adapter trained on other weights is meaningless on these.

Batch statistics, the optimizer state (which holds nothing for frozen parameters) and the step
stay in the checkpoint; so do early stopping's best weights (`best_weights/`, full).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jtl.runtime.errors import CheckpointError
from jtl.weights import checkpoint as ckpt

BASE_KEY = "base"


def frozen_digest(frozen: dict[str, Any]) -> str:
    """sha256 of `{path: array}` in sorted path order (independent of tree layout)."""
    return ckpt.state_digest([np.asarray(frozen[k]) for k in sorted(frozen)])


def check_base(ref: dict[str, Any] | None, actual: str, where: str) -> None:
    """Raises a one-line `CheckpointError` when `where` was trained on another base."""
    if ref and ref.get("sha256") != actual:
        raise CheckpointError(
            f"{where} was trained on base weights with sha256 {str(ref.get('sha256'))[:12]}, but "
            f"{ref.get('path')} now holds weights with sha256 {actual[:12]}",
            "point --config.init.checkpoint at the base the run was trained from, or use a new "
            "--workdir",
        )


def absolute(path: str | Any) -> str:
    """`path` made absolute (a run found from any directory later); URLs are kept as given."""
    from pathlib import Path

    text = str(path)
    return text if "://" in text else str(Path(text).absolute())


@dataclasses.dataclass
class SlimCheckpoint:
    """Strips the frozen parameters from the train state before saving, and fills them back."""

    frozen: dict[str, np.ndarray]  # "backbone/block1/conv/kernel" -> base weight (host)
    base_path: str
    sha256: str

    @classmethod
    def from_params(cls, params: Any, mask: Any, base_path: str) -> SlimCheckpoint:
        """`mask` (True = trainable) as `jtl.optim.trainable_mask` gives it."""
        flat, flags = ckpt.flatten(params), ckpt.flatten(mask)
        frozen = {k: np.asarray(v) for k, v in flat.items() if not flags[k]}
        return cls(frozen, absolute(base_path), frozen_digest(frozen))

    @property
    def ref(self) -> dict[str, str]:
        return {"path": self.base_path, "sha256": self.sha256}

    def strip(self, state: dict[str, Any]) -> dict[str, Any]:
        flat = ckpt.flatten(state["params"])
        kept = {k: v for k, v in flat.items() if k not in self.frozen}
        return {**state, "params": ckpt.unflatten(kept)}

    def fill(self, state: dict[str, Any]) -> dict[str, Any]:
        flat = {**ckpt.flatten(state["params"]), **self.frozen}
        return {**state, "params": ckpt.unflatten(flat)}

    def check(self, meta: dict[str, Any], where: str) -> None:
        check_base(meta.get(BASE_KEY), self.sha256, where)


def fill_from_base(
    variables: dict[str, Any], ref: dict[str, Any], where: str, base: str | None = None
) -> dict[str, Any]:
    """A slim checkpoint's variables completed with the frozen weights of its base.

    The frozen weights are the base's params that the slim checkpoint lacks; their digest must
    match `ref["sha256"]`. The base is `base` when given, else the recorded `ref["path"]`, else
    a directory of the same name next to the run (`find_base`: a run that moved with its base).
    """
    have = ckpt.flatten(variables["params"])
    tried = []
    for candidate in find_base(ref, where, base):
        params = ckpt.flatten(read_params(candidate))
        frozen = {k: v for k, v in params.items() if k not in have}
        digest = frozen_digest(frozen)
        if digest == ref.get("sha256") or not ref.get("sha256"):
            return {**variables, "params": ckpt.unflatten({**frozen, **have})}
        tried.append((candidate, digest))
    if tried:  # found only other weights: say which, as before
        check_base({**ref, "path": tried[0][0]}, tried[0][1], where)
    raise CheckpointError(
        f"{where} was trained on base {ref.get('path')} (sha256 {str(ref.get('sha256'))[:12]}), "
        "which is not there any more",
        "pass the base's new location (--base PATH, or --config.init.checkpoint when resuming)",
    )


def find_base(ref: dict[str, Any], where: str, base: str | None = None) -> list[str]:
    """Existing candidate directories for a run's base, in the order they are tried."""
    from pathlib import Path

    recorded = str(ref.get("path") or "")
    candidates = [base] if base else []
    candidates += [recorded, str(Path(where).parent / Path(recorded).name)] if recorded else []
    out: list[str] = []
    for c in candidates:
        if c and c not in out and ("://" in c or (Path(c) / "checkpoints").exists()):
            out.append(c)
    return out


def read_run_variables(
    path: str | Any, base: str | None = None
) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """`read_variables` of a run, a slim (PEFT) checkpoint completed with its frozen base
    (`fill_from_base`: sha256-checked, `base` or where `find_base` finds it)."""
    variables, step, meta = read_variables(str(path))
    if meta.get(BASE_KEY):
        variables = fill_from_base(variables, meta[BASE_KEY], str(path), base)
    return variables, step, meta


def plain_run_variables(path: str | Any, base: str | None = None) -> dict[str, Any]:
    """A PEFT run's latest weights as its base architecture's variables: the frozen base read
    back (sha256-checked; `base` or the recorded path, see `find_base`) and LoRA merged.
    Adapter runs add layers the base lacks and are refused (`jtl.models.peft.merged_variables`)."""
    import json
    from pathlib import Path

    from jtl.models.peft import merged_variables

    variables, _, _ = read_run_variables(path, base)
    config = json.loads((Path(path) / "config.json").read_text())
    return merged_variables(config, variables)


def load_variables(
    path: str | Any,
    target: dict[str, Any],
    exclude: Any = (),
    strict: bool = True,
    base: str | None = None,
) -> tuple[dict[str, Any], ckpt.LoadReport]:
    """`jtl.weights.checkpoint.load_variables`, reading a PEFT run as its base architecture (base
    filled in by sha256, from `base` when given; LoRA merged): what `jtl predict` and
    `--config.init.checkpoint` load."""
    if ckpt.checkpoint_meta(path).get(BASE_KEY):
        arrays = ckpt.flatten(plain_run_variables(path, base))
        return ckpt.load_variables(path, target, exclude, strict, arrays=arrays)
    return ckpt.load_variables(path, target, exclude, strict)


def read_params(path: str) -> dict[str, Any]:
    """All params of the latest checkpoint under `path` (a run workdir or an import)."""
    return read_variables(path)[0]["params"]


def read_variables(path: str) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """(params + batch_stats as host arrays, step, meta) of the latest checkpoint under `path`,
    whatever device count wrote it; targets come from the checkpoint's own metadata."""
    import orbax.checkpoint as ocp

    mgr = ocp.CheckpointManager(ckpt.checkpoints_dir(path), item_handlers=ckpt._handlers())
    step = mgr.latest_step()
    if step is None:
        mgr.close()
        raise CheckpointError(f"{path} holds no finished checkpoint", "train the run to the end")
    md = mgr.item_metadata(step)["state"]
    try:
        meta = dict(mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        meta = {}
    mgr.close()
    md = md.tree if hasattr(md, "tree") else md
    flat = ckpt.flatten({c: md.get(c) or {} for c in ("params", "batch_stats")})
    target = ckpt.unflatten({k: np.zeros(m.shape, m.dtype) for k, m in flat.items()})
    target.setdefault("batch_stats", {})
    variables, _ = ckpt.load_variables(path, target, exclude=(), step=step)
    return jax.tree.map(np.asarray, variables), int(step), meta
