"""`make_optimizer`: config + parameter rules -> one optax transformation and a group table.

Structure of the returned transformation (per step):

    masked(clip_by_global_norm(clip_norm), trainable)        # only if clip_norm > 0
    partition({
        "frozen": set_to_zero(),
        "g0":  chain(<preconditioner>, add_decayed_weights(wd * wd_mult),
                     scale_by_learning_rate(lr * lr_mult * schedule(step))),
        "g1":  ...                                            # one group per distinct
    })                                                        # (lr_mult, wd_mult, schedule)

Why it is built this way:
- Frozen parameters get `set_to_zero`, so their gradients are never read. Clipping (and the
  trainer's grad-norm metric, `global_norm_trainable`) read the *trainable* partition only:
  anything that reads a frozen gradient, even a norm, keeps the whole frozen backward pass alive,
  while with nothing reading it XLA removes it and a head-only step costs about one forward pass.
- Weight decay is decoupled (`add_decayed_weights`, AdamW / big_vision style): added to the
  preconditioned update, before the learning-rate scaling, so the per-step decay is
  `lr * lr_mult * weight_decay * wd_mult * param`. For `momentum` / `nesterov` that is SGDW
  (the decay does not enter the momentum buffer); for `sgd` it equals L2 regularization; for
  `lamb` it sits before the trust ratio as in the LAMB paper. `adam` is the exception: it adds
  the decay to the gradient *before* the moment estimates (coupled L2, like
  `torch.optim.Adam(weight_decay=...)`), which is what distinguishes it from `adamw`.
- By default only parameters with ndim > 1 (conv / dense kernels, embeddings) are decayed;
  biases and normalization scales/offsets are not. `wd_mults` rules override this per
  parameter (a mult of 0 switches decay off; > 0 switches it on, also for biases).
- Frozen parameters take no lr / wd multipliers and hold no optimizer state.

Config fields (`cfg` is a dict or ConfigDict; defaults in `DEFAULTS`): name, lr, momentum, b1,
b2, eps, rms_decay, weight_decay, schedule, schedule_kw, warmup_steps, clip_norm, frozen,
lr_mults, wd_mults, schedules.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jtl.optim import rules as rules_lib
from jtl.optim import schedules as schedules_lib
from jtl.runtime.errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "lamb", "rmsprop")

DEFAULTS: dict[str, Any] = {
    "momentum": 0.9,  # momentum / nesterov
    "b1": 0.9,  # adam / adamw / lamb
    "b2": 0.999,
    "eps": None,  # None: the optimizer's usual value (1e-8; lamb 1e-6)
    "rms_decay": 0.9,  # rmsprop's moving-average decay (rmsprop uses no momentum)
    "weight_decay": 0.0,
    "schedule": "constant",
    "schedule_kw": {},  # extra arguments of the schedule, e.g. {"end_factor": 0.01}
    "warmup_steps": 0,
    "clip_norm": 0.0,  # 0 = no clipping
    "frozen": (),
    "lr_mults": (),
    "wd_mults": (),
    "schedules": (),
}
REQUIRED = ("name", "lr")
FROZEN_LABEL = "frozen"


@dataclasses.dataclass(frozen=True)
class GroupRow:
    """One parameter group: what the optimizer does to it and which rules put it there."""

    label: str
    rules: tuple[str, ...]
    num_tensors: int
    num_params: int
    frozen: bool
    lr_mult: float
    wd_mult: float
    schedule: str
    weight_decay: float = 0.0  # effective decay coefficient: cfg.weight_decay * wd_mult
    paths: tuple[str, ...] = ()


def _cfg_dict(cfg: Any) -> dict[str, Any]:
    """Validated config fields with defaults filled in; unknown fields are an error."""
    raw = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    unknown = set(raw) - set(DEFAULTS) - set(REQUIRED)
    if unknown:
        raise ConfigError(
            f"optimizer config: unknown field(s) {sorted(unknown)}; known: "
            f"{', '.join(REQUIRED + tuple(DEFAULTS))}"
        )
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise ConfigError(f"optimizer config: missing field(s) {missing}")
    out = {**DEFAULTS, **raw}
    if out["name"] not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {out['name']!r}; valid: {', '.join(OPTIMIZERS)}")
    for key in ("weight_decay", "clip_norm"):
        if float(out[key]) < 0:
            raise ConfigError(f"optimizer config: {key} must be >= 0, got {out[key]!r}")
    return out


def _frozen_flags(params: Any, cfg: dict[str, Any]) -> list[tuple[bool, str | None]]:
    return rules_lib.frozen_flags(rules_lib.tree_paths(params), cfg["frozen"])


def trainable_mask(params: Any, cfg: Any) -> Any:
    """Pytree like `params` of Python bools: True where the parameter is trained (not frozen)."""
    flags = _frozen_flags(params, _cfg_dict(cfg))
    treedef = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_unflatten(treedef, [not f for f, _ in flags])


def global_norm_trainable(grads: Any, mask: Any) -> jax.Array:
    """L2 norm over the trainable gradients only, so that no frozen gradient is ever read."""
    leaves = [g for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(mask), strict=True) if m]
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return optax.global_norm(leaves)


def _preconditioner(cfg: dict[str, Any]) -> tuple[list[Any], list[Any], bool]:
    """(transforms before weight decay, transforms after it, decay is coupled L2)."""
    name = cfg["name"]
    eps = cfg["eps"]
    if name == "sgd":
        return [], [], False
    if name in ("momentum", "nesterov"):
        trace = optax.trace(decay=float(cfg["momentum"]), nesterov=name == "nesterov")
        return [trace], [], False
    if name in ("adam", "adamw"):
        adam = optax.scale_by_adam(
            b1=float(cfg["b1"]), b2=float(cfg["b2"]), eps=1e-8 if eps is None else float(eps)
        )
        return [adam], [], name == "adam"
    if name == "lamb":
        adam = optax.scale_by_adam(
            b1=float(cfg["b1"]), b2=float(cfg["b2"]), eps=1e-6 if eps is None else float(eps)
        )
        return [adam], [optax.scale_by_trust_ratio()], False
    if name == "rmsprop":
        rms = optax.scale_by_rms(
            decay=float(cfg["rms_decay"]), eps=1e-8 if eps is None else float(eps)
        )
        return [rms], [], False
    raise AssertionError(name)


def _group_tx(
    cfg: dict[str, Any], lr_mult: float, wd: float, schedule: optax.Schedule, step_offset: int
) -> optax.GradientTransformation:
    pre, post, coupled = _preconditioner(cfg)
    decay = [optax.add_decayed_weights(wd)] if wd > 0 else []
    parts = (decay + pre + post) if coupled else (pre + decay + post)
    base_lr = float(cfg["lr"]) * lr_mult

    def lr(count: Any) -> Any:
        return base_lr * schedule(count + step_offset)

    return optax.chain(*parts, optax.scale_by_learning_rate(lr))


def _schedule_spec(cfg: dict[str, Any], override: Any) -> dict[str, Any]:
    spec = {"name": cfg["schedule"], "warmup_steps": int(cfg["warmup_steps"])}
    spec.update(rules_lib.as_mapping(cfg["schedule_kw"] or {}, what="schedule_kw"))
    if override is not None:
        over = rules_lib.as_mapping(override, what="schedules")
        if "name" in over and over["name"] != spec["name"]:
            # A different schedule does not inherit the global schedule's arguments.
            spec = {"name": over["name"], "warmup_steps": spec["warmup_steps"]}
        spec.update(over)
    return spec


def _wd_default(ndim: int) -> str:
    return "ndim>1: decay" if ndim > 1 else "ndim<=1: no decay"


def _build_schedule(spec: dict[str, Any], total_steps: int) -> optax.Schedule:
    kw = {k: v for k, v in spec.items() if k not in ("name", "warmup_steps")}
    return schedules_lib.make_schedule(
        spec["name"], 1.0, total_steps, int(spec.get("warmup_steps", 0)), **kw
    )


def _describe(spec: dict[str, Any]) -> str:
    kw = {k: v for k, v in spec.items() if k not in ("name", "warmup_steps")}
    return schedules_lib.describe(spec["name"], int(spec.get("warmup_steps", 0)), **kw)


@dataclasses.dataclass(frozen=True)
class _RuleAssignment:
    """Per-leaf outcome of the config's rules, so grouping code need not re-resolve them."""

    frozen: list[tuple[bool, str | None]]  # (is frozen, matching rule) per leaf
    lr_of: list[tuple[Any, str | None]]  # (lr_mult, matching rule) per leaf
    wd_of: list[tuple[Any, str | None]]  # (wd_mult, matching rule) per leaf
    sched_of: list[tuple[Any, str | None]]  # (schedule override, matching rule) per leaf
    ndim: dict[str, int]  # path -> ndim, for the default weight-decay rule


def _resolve_rules(c: dict[str, Any], leaves: list[tuple[str, Any]]) -> _RuleAssignment:
    """Validates the frozen / lr / wd / schedule rules and matches them to every leaf.

    Kept apart from grouping so rule errors surface in one fixed order (frozen, lr_mults,
    wd_mults, schedules) before anything is built.
    """
    paths = [p for p, _ in leaves]
    frozen = rules_lib.frozen_flags(paths, c["frozen"])
    lr_rules = rules_lib.normalize_rules(c["lr_mults"], what="lr_mults")
    rules_lib.check_mults(lr_rules, what="lr_mults", allow_zero=False)
    wd_rules = rules_lib.normalize_rules(c["wd_mults"], what="wd_mults")
    rules_lib.check_mults(wd_rules, what="wd_mults", allow_zero=True)
    sched_rules = rules_lib.normalize_rules(c["schedules"], what="schedules")
    ndim = {p: getattr(leaf, "ndim", len(getattr(leaf, "shape", ()))) for p, leaf in leaves}
    lr_of = rules_lib.assign(paths, lr_rules, what="lr_mults", default=1.0)
    wd_of = rules_lib.assign(
        paths, wd_rules, what="wd_mults", default=lambda p: 1.0 if ndim[p] > 1 else 0.0
    )
    sched_of = rules_lib.assign(paths, sched_rules, what="schedules", default=None)
    return _RuleAssignment(frozen=frozen, lr_of=lr_of, wd_of=wd_of, sched_of=sched_of, ndim=ndim)


def _leaf_group_key(
    c: dict[str, Any], i: int, path: str, r: _RuleAssignment
) -> tuple[tuple, list[str], dict[str, Any] | None]:
    """(group key, rules that explain it, schedule spec or None if frozen) for leaf `i`.

    Leaves with equal keys share one optax transform; the key is everything that changes the
    update (lr_mult, wd_mult, schedule), so equal settings from different rules merge.
    """
    is_frozen, frozen_rule = r.frozen[i]
    if is_frozen:
        return (FROZEN_LABEL,), [f"frozen: {frozen_rule}"], None
    spec = _schedule_spec(c, r.sched_of[i][0])
    (lr_mult, lr_rule), (wd_mult, wd_rule) = r.lr_of[i], r.wd_of[i]
    key = (float(lr_mult), float(wd_mult), json.dumps(spec, sort_keys=True, default=str))
    why = [
        f"lr_mults: {lr_rule}" if lr_rule else "lr_mults: default 1",
        f"wd_mults: {wd_rule}" if wd_rule else f"wd_mults: default ({_wd_default(r.ndim[path])})",
    ]
    if r.sched_of[i][1]:
        why.append(f"schedules: {r.sched_of[i][1]}")
    return key, why, spec


def _group_leaves(
    c: dict[str, Any], leaves: list[tuple[str, Any]], r: _RuleAssignment
) -> tuple[dict[tuple, dict[str, Any]], list[str]]:
    """Groups leaves by key: (key -> group info, in order of first appearance; label per leaf).

    Trainable groups are labelled g0, g1, ... in order of first appearance, so labels (and the
    group table) are stable for a given parameter tree and config.
    """
    keys: dict[tuple, dict[str, Any]] = {}  # group key -> info, in order of first appearance
    labels: list[str] = []
    for i, (path, leaf) in enumerate(leaves):
        key, why, spec = _leaf_group_key(c, i, path, r)
        is_frozen = key == (FROZEN_LABEL,)
        if key not in keys:
            n_train = sum(1 for k in keys if k != (FROZEN_LABEL,))
            keys[key] = {
                "label": FROZEN_LABEL if is_frozen else f"g{n_train}",
                "rules": [],
                "paths": [],
                "size": 0,
                "spec": spec,
            }
        info = keys[key]
        info["rules"].extend(rule for rule in why if rule not in info["rules"])
        info["paths"].append(path)
        info["size"] += int(getattr(leaf, "size", 1))
        labels.append(info["label"])
    return keys, labels


def _group_transforms(
    c: dict[str, Any], keys: dict[tuple, dict[str, Any]], total_steps: int, step_offset: int
) -> tuple[dict[str, optax.GradientTransformation], list[GroupRow]]:
    """One optax transform per group (set_to_zero if frozen) and the matching `GroupRow`s."""
    transforms: dict[str, optax.GradientTransformation] = {}
    groups: list[GroupRow] = []
    wd = float(c["weight_decay"])
    for key, info in keys.items():
        if key == (FROZEN_LABEL,):
            transforms[FROZEN_LABEL] = optax.set_to_zero()
            lr_mult = wd_mult = 0.0
            sched_name = "-"
        else:
            lr_mult, wd_mult, _ = key
            schedule = _build_schedule(info["spec"], total_steps)
            transforms[info["label"]] = _group_tx(c, lr_mult, wd * wd_mult, schedule, step_offset)
            sched_name = _describe(info["spec"])
        groups.append(
            GroupRow(
                label=info["label"],
                rules=tuple(info["rules"]),
                num_tensors=len(info["paths"]),
                num_params=info["size"],
                frozen=key == (FROZEN_LABEL,),
                lr_mult=lr_mult,
                wd_mult=wd_mult,
                schedule=sched_name,
                weight_decay=wd * wd_mult,
                paths=tuple(info["paths"]),
            )
        )
    return transforms, groups


def _assemble(
    params: Any,
    transforms: dict[str, optax.GradientTransformation],
    labels: list[str],
    frozen: list[tuple[bool, str | None]],
    clip: float,
) -> optax.GradientTransformation:
    """The final partition over group labels, behind trainable-only clipping if clip > 0."""
    label_tree = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), labels)
    tx = optax.partition(transforms, label_tree)
    if clip > 0:
        mask = jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(params), [not f for f, _ in frozen]
        )
        # Clip by the norm of the trainable gradients only (see the module docstring).
        tx = optax.chain(optax.masked(optax.clip_by_global_norm(clip), mask), tx)
    return tx


def make_optimizer(
    params: Any, cfg: Any, total_steps: int, *, step_offset: int = 0
) -> tuple[optax.GradientTransformation, list[GroupRow]]:
    """The optimizer for `params` under `cfg`'s rules, and one `GroupRow` per parameter group.

    `step_offset` shifts every schedule: a trainer that rebuilds the optimizer (fresh state,
    count 0) at a gradual-unfreezing boundary passes the global step so the LR schedule carries
    on instead of restarting (warmup included).
    """
    c = _cfg_dict(cfg)
    leaves = rules_lib.leaves_with_paths(params)
    resolved = _resolve_rules(c, leaves)
    keys, labels = _group_leaves(c, leaves, resolved)
    transforms, groups = _group_transforms(c, keys, total_steps, step_offset)
    tx = _assemble(params, transforms, labels, resolved.frozen, float(c["clip_norm"]))
    return tx, groups


def format_group_table(groups: Sequence[GroupRow]) -> str:
    """A fixed-width table of the parameter groups for the log and `param_groups.txt`."""
    header = ("group", "frozen", "lr_mult", "wd_mult", "wd", "schedule", "tensors", "params")
    rows = [
        (
            g.label,
            "yes" if g.frozen else "no",
            "-" if g.frozen else f"{g.lr_mult:g}",
            "-" if g.frozen else f"{g.wd_mult:g}",
            "-" if g.frozen else f"{g.weight_decay:g}",
            g.schedule,
            str(g.num_tensors),
            f"{g.num_params:,}",
        )
        for g in groups
    ]
    total_t = sum(g.num_tensors for g in groups)
    total_p = sum(g.num_params for g in groups)
    train_p = sum(g.num_params for g in groups if not g.frozen)
    footer = ("total", "", "", "", "", f"{train_p:,} trainable", str(total_t), f"{total_p:,}")
    widths = [max(len(r[i]) for r in [header, *rows, footer]) for i in range(len(header))]
    right = {2, 3, 4, 6, 7}

    def line(r: Sequence[str]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    sep = "  ".join("-" * w for w in widths)
    out = [line(header), sep, *(line(r) for r in rows), sep, line(footer), "", "rules per group:"]
    for g in groups:
        out.append(f"  {g.label}: " + "; ".join(g.rules))
    return "\n".join(out) + "\n"


def groups_to_json(groups: Sequence[GroupRow]) -> list[dict[str, Any]]:
    """JSON-ready rows (lists instead of tuples) for `param_groups.json` and summaries."""
    return [
        {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(g).items()}
        for g in groups
    ]
