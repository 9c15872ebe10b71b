"""Transfer strategies: one `strategy` config field expands into weights, rules and steps.

A strategy decides (1) which weights the run starts from, (2) the optimizer rules (frozen
subtrees, LR multipliers), (3) how the forward pass runs in training (frozen parts may run in
inference mode), (4) extra loss terms, (5) stage changes during training and (6) evaluations
after training. Everything it sets is an ordinary config field, so each part stays overridable.

| strategy | starts from | trains |
|---|---|---|
| scratch | He init | everything |
| linear_probe | pretrained | nothing by SGD: cached features -> logistic / ridge / SVM |
| head_only | pretrained | the new head, through the frozen network (SGD) |
| finetune_top | pretrained | the blocks above the first `freeze_blocks` + head |
| finetune_full | pretrained | everything, backbone at `backbone_lr_mult` (0.1) x LR |
| lp_ft | pretrained + probed head | everything (linear probe first, then fine-tune) |
| l2sp | pretrained | everything, + alpha ||w - w0||^2 (backbone) + beta ||w||^2 (head) |
| wise_ft | as lp_ft | as lp_ft, then evaluates (1 - a) w0 + a w for each a in `wise_alphas` |
| reinit_top | pretrained, top `reinit_blocks` re-initialized | everything |
| layer_transfer | first `transfer_blocks` pretrained, rest re-initialized | all, or the rest only |
| gradual_unfreeze | pretrained | head, then one more block from the top per `unfreeze_every` |
| lora | pretrained | head + low-rank factors (alpha/r) a@b on `lora_targets` kernels |
| bitfit | pretrained | head + every bias and normalisation scale/offset |
| adapter | pretrained | head + bottleneck adapters after `adapter_blocks` |
| norm_only | pretrained | head + BN/LN/GN scale and offset (BN statistics update) |

Any fine-tuning strategy also takes `layer_decay` (layer-wise LR decay per depth level) or
`discriminative` (ULMFiT's division of the LR per level, e.g. 2.6).

The parameter-efficient strategies (`PEFT_PLANS`) are one function each: adding one means
one function here, one table row and one test (tests/test_peft.py). Their mechanics live in
`jtl.peft`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from absl import logging

from jtl import checkpoint as ckpt
from jtl import peft
from jtl.errors import ConfigError
from jtl.models import TEXT_MODELS
from jtl.optim import network_rules, trainable_mask
from jtl.slim_checkpoint import SlimCheckpoint

STRATEGIES = (
    "scratch",
    "linear_probe",
    "head_only",
    "finetune_top",
    "finetune_full",
    "lp_ft",
    "l2sp",
    "wise_ft",
    "reinit_top",
    "layer_transfer",
    "gradual_unfreeze",
    "lora",
    "bitfit",
    "adapter",
    "norm_only",
)


def _zero_penalty(params: Any) -> jax.Array:
    del params
    return jnp.zeros((), jnp.float32)


def default_apply(model: Any, variables: dict, x: jax.Array, has_bs: bool) -> tuple[Any, dict]:
    if has_bs:
        return model.apply(variables, x, train=True, mutable=["batch_stats"])
    return model.apply(variables, x, train=True), {}


@dataclasses.dataclass
class Plan:
    """What the trainer needs from a strategy; the defaults describe plain training."""

    variables: dict[str, Any]
    optim: mlc.ConfigDict
    apply_train: Callable[[Any, dict, jax.Array, bool], tuple[Any, dict]] = default_apply
    penalty: Callable[[Any], jax.Array] = _zero_penalty
    # step -> frozen regexes for that step (gradual unfreezing); None: fixed rules.
    frozen_at: Callable[[int], tuple[str, ...]] | None = None
    stage_at: Callable[[int], int] = lambda step: 0  # noqa: E731
    # First step of the stage containing `step`: the LR schedule continues across stages.
    stage_start: Callable[[int], int] = lambda step: 0  # noqa: E731
    # (final state, evaluate(variables, split) -> metrics) -> extra summary fields.
    finish: Callable[[dict, Callable[[dict, str], dict]], dict[str, Any]] = (
        lambda state, evaluate: {}  # noqa: E731
    )
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The model the trainer applies (train and eval) when the params tree carries extra
    # subtrees (PEFT: `jtl.peft.PeftModel`); None: the model the trainer built.
    model: Any = None
    # Checkpoints without the frozen base (PEFT: `jtl.slim_checkpoint`); None: full state.
    checkpoint: Any = None


def _blocks(model: Any) -> list[str]:
    return list(model.block_names())


def _block_regexes(blocks: list[str]) -> list[str]:
    return [f"backbone/{b}/.*" for b in blocks]


def load_pretrained(
    config: mlc.ConfigDict, variables: dict[str, Any], extra_exclude: tuple[str, ...] = ()
) -> tuple[dict[str, Any], ckpt.LoadReport]:
    """Imported weights merged into the fresh init; excluded keys (the head) keep their init."""
    loaded, report = ckpt.load_variables(
        config.init.checkpoint,
        variables,
        exclude=tuple(config.init.exclude) + tuple(extra_exclude),
        strict=config.init.strict,
    )
    logging.info("Transfer init: %s", report.summary())
    return loaded, report


def _check_count(name: str, value: int, blocks: list[str]) -> int:
    if not 0 <= value <= len(blocks):
        raise ConfigError(
            f"strategy_args.{name}={value} is out of range: the model has {len(blocks)} backbone "
            f"blocks ({', '.join(blocks)}); use 0..{len(blocks)}"
        )
    return int(value)


def _depth_lr_rules(args: mlc.ConfigDict, blocks: list[str]) -> list[tuple[str, float]]:
    if args.layer_decay and args.discriminative:
        raise ConfigError("set either strategy_args.layer_decay or .discriminative, not both")
    if args.layer_decay:
        return list(network_rules.layerwise_lr_mults(blocks, float(args.layer_decay)))
    if args.discriminative:
        return list(network_rules.discriminative_lr_mults(blocks, float(args.discriminative)))
    return []


def _l2sp_penalty(w0: Any, alpha: float, beta: float) -> Callable[[Any], jax.Array]:
    """alpha ||w - w0||^2 over imported backbone weights + beta ||w||^2 over the new head."""
    w0 = jax.tree.map(jnp.asarray, w0)

    def penalty(params: Any) -> jax.Array:
        sp = sum(
            jnp.sum((w - r) ** 2)
            for w, r in zip(
                jax.tree.leaves(params["backbone"]), jax.tree.leaves(w0["backbone"]), strict=True
            )
        )
        head = sum(jnp.sum(w**2) for w in jax.tree.leaves(params["head"]))
        return alpha * sp + beta * head

    return penalty


def interpolate(w0: Any, w1: Any, alpha: float) -> Any:
    """WiSE-FT weight-space ensemble: (1 - alpha) w0 + alpha w1, leaf by leaf."""
    return jax.tree.map(lambda a, b: (1.0 - alpha) * np.asarray(a) + alpha * np.asarray(b), w0, w1)


def _wise_finish(start: dict, alphas: tuple[float, ...]) -> Callable[..., dict[str, Any]]:
    def finish(state: dict, evaluate: Callable[[dict, str], dict]) -> dict[str, Any]:
        final = {"params": state["params"], "batch_stats": state["batch_stats"]}
        final = jax.tree.map(np.asarray, final)
        rows = []
        for a in alphas:
            v = interpolate(start, final, a)
            if not v["batch_stats"]:
                v = {"params": v["params"]}
            val, test = evaluate(v, "val"), evaluate(v, "test")
            rows.append(
                {"alpha": a, "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"]}
            )
            logging.info(
                "WiSE-FT alpha=%.2f val %.4f test %.4f", a, val["accuracy"], test["accuracy"]
            )
        best = max(rows, key=lambda r: r["val_accuracy"])
        return {
            "wise_ft": rows,
            "wise_best_alpha": best["alpha"],
            # The ensemble picked on validation is the strategy's answer.
            "test_accuracy": best["test_accuracy"],
            "val_accuracy": best["val_accuracy"],
        }

    return finish


def _scratch_head(variables: dict[str, Any], kind: str, seed: int) -> dict[str, Any]:
    """The scratch head: zeros (the `Classifier` default) or PyTorch's nn.Linear default.

    Why: a zero head passes no gradient to the backbone on the first step and starts every
    class from the same logit; trained from scratch for a short budget it lagged a uniform
    head (issue 11). Transfer strategies keep the zero head (no random features injected into
    the first fine-tuning gradients).
    """
    if kind == "zeros":
        return variables
    if kind != "uniform":
        raise ValueError(f"strategy_args.scratch_head_init={kind!r}: use 'uniform' or 'zeros'")
    head = variables["params"]["head"]
    fan_in = head["kernel"].shape[0]
    bound = 1.0 / np.sqrt(fan_in)
    k1, k2 = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 0x4EAD))
    new_head = {
        "kernel": jax.random.uniform(k1, head["kernel"].shape, jnp.float32, -bound, bound),
        "bias": jax.random.uniform(k2, head["bias"].shape, jnp.float32, -bound, bound),
    }
    params = {**variables["params"], "head": new_head}
    return {**variables, "params": params}


def plan_strategy(
    config: mlc.ConfigDict, model: Any, variables: dict[str, Any], data: Any, workdir: Path
) -> Plan:
    """Expands `config.strategy` into a `Plan`; unknown names fail with the list of valid ones."""
    del workdir
    name = config.strategy
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    optim = mlc.ConfigDict(config.optim.to_dict())
    args = config.strategy_args
    info: dict[str, Any] = {}
    if name == "scratch":
        if config.init.checkpoint:
            raise ConfigError(
                "strategy 'scratch' trains from random init but init.checkpoint is set; use a "
                "transfer strategy (e.g. --config.strategy=finetune_full) or set "
                "--config.init.checkpoint=''"
            )
        variables = _scratch_head(variables, args.scratch_head_init, config.seed)
        return Plan(variables=variables, optim=optim, info=info)
    if not config.init.checkpoint:
        raise ConfigError(
            f"strategy {name!r} needs pretrained weights: set --config.init.checkpoint=DIR "
            "(a run workdir or a `jtl import` output)"
        )

    blocks = _blocks(model)
    extra_exclude: tuple[str, ...] = ()
    if name == "reinit_top":
        k = _check_count("reinit_blocks", args.reinit_blocks, blocks)
        extra_exclude = tuple(_block_regexes(blocks[len(blocks) - k :]))
    elif name == "layer_transfer":
        n = _check_count("transfer_blocks", args.transfer_blocks, blocks)
        extra_exclude = tuple(_block_regexes(blocks[n:]))
    fresh = variables
    variables, report = load_pretrained(config, variables, extra_exclude)
    info["init"] = report.summary()
    if name in PEFT_PLANS:
        plan = PEFT_PLANS[name](config, model, variables, data, optim)
        plan.info = {**info, **plan.info}
        if args.freeze_batch_stats:  # every PEFT plan freezes the base: BN runs on its stats
            plan.apply_train = frozen_bn_apply(blocks, list(plan.optim.frozen), None)
        params = plan.variables["params"]
        plan.checkpoint = SlimCheckpoint.from_params(
            params, trainable_mask(params, plan.optim), config.init.checkpoint
        )
        return plan

    frozen = list(optim.frozen)
    lr_mults = list(optim.lr_mults)
    plan = Plan(variables=variables, optim=optim, info=info)

    if name == "head_only":
        frozen = ["backbone/.*"] + frozen
    elif name == "finetune_top":
        k = _check_count("freeze_blocks", args.freeze_blocks, blocks)
        frozen = _block_regexes(blocks[:k]) + frozen
    elif name == "layer_transfer" and args.transfer_frozen:
        frozen = _block_regexes(blocks[: args.transfer_blocks]) + frozen
    elif name == "gradual_unfreeze":
        if args.unfreeze_every <= 0:
            raise ConfigError(
                "gradual_unfreeze needs strategy_args.unfreeze_every > 0 (steps per stage)"
            )
        stages = network_rules.gradual_unfreeze_stages(blocks, int(args.unfreeze_every))
        plan.frozen_at = lambda step: tuple(stages.frozen_at(step)) + tuple(frozen)
        plan.stage_at = stages.stage_at
        plan.stage_start = lambda step: stages.stage_at(step) * int(args.unfreeze_every)
        info["unfreeze_every"] = int(args.unfreeze_every)

    fine_tunes_backbone = name in (
        "finetune_full",
        "lp_ft",
        "l2sp",
        "wise_ft",
        "reinit_top",
        "finetune_top",
        "gradual_unfreeze",
    ) or (name == "layer_transfer" and not args.transfer_frozen)
    if fine_tunes_backbone:
        depth_rules = _depth_lr_rules(args, blocks)
        if depth_rules:
            lr_mults = depth_rules + lr_mults
        elif args.backbone_lr_mult != 1.0 and name != "layer_transfer":
            lr_mults = [("backbone/.*", float(args.backbone_lr_mult))] + lr_mults

    if name in ("lp_ft", "wise_ft"):
        from jtl.linear_probe import fit_probe_on_target

        head, probe_info = fit_probe_on_target(config, model, variables, data)
        probe_info.pop("fitted")
        params = dict(variables["params"])
        params["head"] = {"kernel": jnp.asarray(head.kernel), "bias": jnp.asarray(head.bias)}
        variables = {**variables, "params": params}
        plan.variables = variables
        info.update({f"lp_{k}": v for k, v in probe_info.items()})
        info["lp_val_accuracy"] = head.val_accuracy
    if name == "l2sp":
        plan.penalty = _l2sp_penalty(
            variables["params"], float(args.l2sp_alpha), float(args.l2sp_beta)
        )
        optim.weight_decay = 0.0  # L2-SP replaces decay towards zero
    if name == "wise_ft":
        start = jax.tree.map(
            np.asarray, {"params": variables["params"], "batch_stats": variables["batch_stats"]}
        )
        plan.finish = _wise_finish(start, tuple(float(a) for a in args.wise_alphas))
    if args.freeze_batch_stats:
        plan.apply_train = frozen_bn_apply(blocks, frozen, plan.frozen_at)
    del fresh
    optim.frozen = tuple(frozen)
    optim.lr_mults = tuple(tuple(r) for r in lr_mults)
    return plan


def frozen_bn_apply(
    blocks: list[str], frozen: list[str], frozen_at: Callable[[int], tuple[str, ...]] | None
) -> Callable[[Any, dict, jax.Array, bool], tuple[Any, dict]]:
    """Runs the blocks whose parameters are all frozen in inference mode (running BN stats)."""
    if frozen_at is not None:
        raise ConfigError("freeze_batch_stats with gradual_unfreeze is not supported yet")
    pats = [re.compile(p) for p in frozen]
    inference = tuple(b for b in blocks if any(p.fullmatch(f"backbone/{b}/x") for p in pats))

    def apply(model: Any, variables: dict, x: jax.Array, has_bs: bool) -> tuple[Any, dict]:
        if not has_bs:
            return model.apply(variables, x, train=True, inference_blocks=inference), {}
        return model.apply(
            variables, x, train=True, inference_blocks=inference, mutable=["batch_stats"]
        )

    return apply


# ----------------------------------------------------------------------------- PEFT


def _peft_rng(config: mlc.ConfigDict) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x9EF7)


def _frozen_first(optim: mlc.ConfigDict, *rules: str) -> mlc.ConfigDict:
    optim.frozen = tuple(rules) + tuple(optim.frozen)
    return optim


def lora_plan(
    config: mlc.ConfigDict, model: Any, variables: dict, data: Any, optim: mlc.ConfigDict
) -> Plan:
    """LoRA: frozen base, trainable head + `lora/...` factors (see jtl.peft for the transform).

    Default targets: BERT's attention query and value kernels (the LoRA paper's choice);
    every backbone conv / Dense kernel for image models.
    """
    args = config.strategy_args
    targets = tuple(args.lora_targets)
    if not targets:
        text = config.model.name in TEXT_MODELS
        targets = (r"backbone/block\d+/(query|value)/kernel",) if text else (r"backbone/.*/kernel",)
    params = dict(variables["params"])
    rank = int(args.lora_rank)
    keys = peft.lora_targets(params, targets)
    params[peft.LORA] = peft.init_lora(params, keys, rank, _peft_rng(config))
    scale = float(args.lora_alpha) / rank
    return Plan(
        variables={**variables, "params": params},
        optim=_frozen_first(optim, "backbone/.*"),
        model=peft.PeftModel(model, scale),
        info={"lora_rank": rank, "lora_alpha": float(args.lora_alpha), "lora_kernels": len(keys)},
    )


def bitfit_plan(
    config: mlc.ConfigDict, model: Any, variables: dict, data: Any, optim: mlc.ConfigDict
) -> Plan:
    """BitFit: trains every `bias` and norm `scale` in the backbone (and the head), nothing else."""
    del config, model, data
    return Plan(variables=variables, optim=_frozen_first(optim, BITFIT_FROZEN))


# Every backbone leaf whose own name is not `bias` or `scale` (flax norms: scale + bias).
BITFIT_FROZEN = r"backbone/.*/(?!(bias|scale)$)[^/]+"


def adapter_plan(
    config: mlc.ConfigDict, model: Any, variables: dict, data: Any, optim: mlc.ConfigDict
) -> Plan:
    """Bottleneck adapters after `adapter_blocks` (default: every block but the stem)."""
    args = config.strategy_args
    blocks = list(args.adapter_blocks) or _blocks(model)[1:]
    dims = peft.adapter_dims(model, variables, data.example_inputs(), blocks)
    params = dict(variables["params"])
    params[peft.ADAPTER] = peft.init_adapters(dims, int(args.adapter_reduction), _peft_rng(config))
    return Plan(
        variables={**variables, "params": params},
        optim=_frozen_first(optim, "backbone/.*"),
        model=peft.PeftModel(model),
        info={"adapter_blocks": blocks, "adapter_reduction": int(args.adapter_reduction)},
    )


def norm_only_plan(
    config: mlc.ConfigDict, model: Any, variables: dict, data: Any, optim: mlc.ConfigDict
) -> Plan:
    """Trains the normalisation layers' scale and offset (and the head), nothing else.

    BatchNorm statistics update by default (`freeze_batch_stats=False`): re-estimating them on
    the target is what adapts the normalisation to a new input distribution (AdaBN), and it is
    the same default as every other strategy. `freeze_batch_stats=True` runs the backbone in
    inference mode instead (source statistics, only scale and offset learn).
    """
    del config
    norms = peft.norm_module_paths(model, variables, data.example_inputs())
    inside = [p[len("backbone/") :] for p in norms if p.startswith("backbone/")]
    if not inside:
        raise ConfigError(
            "norm_only: the backbone has no normalisation layer with parameters",
            "use a model with BatchNorm/LayerNorm/GroupNorm, e.g. --config.model.kwargs.norm=batch",
        )
    keep = "|".join(re.escape(p) for p in inside)
    frozen = f"backbone/(?!({keep})/).*"
    return Plan(
        variables=variables, optim=_frozen_first(optim, frozen), info={"norm_layers": len(inside)}
    )


PEFT_PLANS: dict[str, Callable[..., Plan]] = {
    "lora": lora_plan,
    "bitfit": bitfit_plan,
    "adapter": adapter_plan,
    "norm_only": norm_only_plan,
}
