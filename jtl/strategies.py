"""Transfer strategies: one `strategy` config field expands into weights, rules and steps.

A strategy decides (1) which weights the run starts from, (2) the optimizer rules (frozen
subtrees, LR multipliers), (3) how the forward pass runs in training (e.g. frozen parts in
inference mode), (4) extra loss terms, and (5) post-training evaluations. Everything it sets is
an ordinary config field, so each part stays overridable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
from absl import logging

from jtl import checkpoint as ckpt

STRATEGIES = ("scratch", "finetune_full", "finetune_top", "head_only")


def _zero_penalty(params: Any) -> jax.Array:
    del params
    return jnp.zeros((), jnp.float32)


def _default_apply(model: Any, variables: dict, x: jax.Array, has_bs: bool) -> tuple[Any, dict]:
    if has_bs:
        return model.apply(variables, x, train=True, mutable=["batch_stats"])
    return model.apply(variables, x, train=True), {}


@dataclasses.dataclass
class Plan:
    """What the trainer needs from a strategy; defaults describe plain training."""

    variables: dict[str, Any]
    optim: mlc.ConfigDict
    apply_train: Callable[[Any, dict, jax.Array, bool], tuple[Any, dict]] = _default_apply
    penalty: Callable[[Any], jax.Array] = _zero_penalty
    finish: Callable[..., dict[str, Any]] = lambda *a, **k: {}  # noqa: E731
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def _optim_copy(config: mlc.ConfigDict) -> mlc.ConfigDict:
    optim = mlc.ConfigDict(config.optim.to_dict())
    return optim


def _block_regexes(model: Any, blocks: list[str]) -> list[str]:
    del model
    return [f"backbone/{b}/.*" for b in blocks]


def load_pretrained(
    config: mlc.ConfigDict, variables: dict[str, Any]
) -> tuple[dict[str, Any], ckpt.LoadReport]:
    """Imported weights merged into the fresh init; excluded keys (the head) keep their init."""
    loaded, report = ckpt.load_variables(
        config.init.checkpoint,
        variables,
        exclude=tuple(config.init.exclude),
        strict=config.init.strict,
    )
    logging.info("Transfer init: %s", report.summary())
    return loaded, report


def plan_strategy(
    config: mlc.ConfigDict, model: Any, variables: dict[str, Any], data: Any, workdir: Path
) -> Plan:
    """Expands `config.strategy` into a `Plan`; unknown names fail with the list of valid ones."""
    del data, workdir
    name = config.strategy
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    optim = _optim_copy(config)
    info: dict[str, Any] = {}
    if name == "scratch":
        if config.init.checkpoint:
            raise ValueError(
                "strategy 'scratch' trains from random init but init.checkpoint is set; "
                "use a transfer strategy (e.g. --config.strategy=finetune_full) or clear "
                "--config.init.checkpoint=''"
            )
        return Plan(variables=variables, optim=optim, info=info)

    if not config.init.checkpoint:
        raise ValueError(
            f"strategy {name!r} needs pretrained weights: set --config.init.checkpoint=DIR "
            "(a run workdir or a `jtl import` output)"
        )
    variables, report = load_pretrained(config, variables)
    info["init"] = report.summary()
    blocks = list(model.block_names())
    args = config.strategy_args
    frozen = list(optim.frozen)
    lr_mults = list(optim.lr_mults)
    if name == "finetune_full":
        if args.backbone_lr_mult != 1.0:
            lr_mults = [("backbone/.*", float(args.backbone_lr_mult))] + lr_mults
    elif name == "finetune_top":
        k = int(args.freeze_blocks)
        if not 0 <= k <= len(blocks):
            raise ValueError(
                f"strategy_args.freeze_blocks={k} out of range: the model has {len(blocks)} "
                f"backbone blocks ({', '.join(blocks)})"
            )
        frozen = _block_regexes(model, blocks[:k]) + frozen
    elif name == "head_only":
        frozen = ["backbone/.*"] + frozen
    optim.frozen = tuple(frozen)
    optim.lr_mults = tuple(tuple(r) for r in lr_mults)
    return Plan(variables=variables, optim=optim, info=info)
