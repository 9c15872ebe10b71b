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
| lp_ft | pretrained + probed head (AdaBN stats) | everything (linear probe, then fine-tune) |
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

Adding a strategy is one `@register`ed function below (it gets a `Setup`, returns a `Plan`,
or a `ProbePlan` when it takes no SGD steps), one row in README.md's strategy table and one
test; tests/test_strategies.py::test_registry_matches_readme_and_tests checks all three. The
trainer never tests a strategy name. PEFT mechanics live in `jtl.models.peft`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from absl import logging
from etils import epath

from jtl import config as config_lib
from jtl.models import TEXT_MODELS, peft
from jtl.optim import network_rules, trainable_mask
from jtl.runtime.errors import ConfigError
from jtl.weights import checkpoint as ckpt
from jtl.weights import slim_checkpoint
from jtl.weights.slim_checkpoint import SlimCheckpoint, absolute


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
    # (final state, evaluate(variables, split) -> metrics, splits it may read) -> extra summary
    # fields. A sweep trial passes ("val",): the test and shift sets are read after selection.
    finish: Callable[[dict, Callable[..., dict], tuple[str, ...]], dict[str, Any]] = (
        lambda state, evaluate, splits: {}  # noqa: E731
    )
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The model the trainer applies (train and eval) when the params tree carries extra
    # subtrees (PEFT: `jtl.models.peft.PeftModel`); None: the model the trainer built.
    model: Any = None
    # Checkpoints without the frozen base (PEFT: `jtl.weights.slim_checkpoint`); None: full state.
    checkpoint: Any = None


def load_pretrained(
    config: mlc.ConfigDict, variables: dict[str, Any], extra_exclude: tuple[str, ...] = ()
) -> tuple[dict[str, Any], ckpt.LoadReport]:
    """Imported weights merged into the fresh init; excluded keys (the head) keep their init."""
    loaded, report = slim_checkpoint.load_variables(
        config.init.checkpoint,
        variables,
        exclude=tuple(config.init.exclude) + tuple(extra_exclude),
        strict=config.init.strict,
    )
    logging.info("Transfer init: %s", report.summary())
    return loaded, report


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


WISE_START = "wise_start"  # the run's w0 (pretrained + probed head): `wise_start.npz`


def wise_start(workdir: Any) -> dict[str, Any] | None:
    """A WiSE-FT run's saved w0, or None (not a WiSE-FT run, or from before it was kept)."""
    path = epath.Path(workdir) / f"{WISE_START}.npz"
    if not path.exists():
        return None
    with path.open("rb") as f:
        flat = dict(np.load(f))
    tree = ckpt.unflatten(flat)
    return {"params": tree.get("params", {}), "batch_stats": tree.get("batch_stats", {})}


def wise_curve(workdir: Any, config: mlc.ConfigDict, final: dict, evaluate: Callable) -> dict:
    """The full WiSE-FT curve (validation, test, shifts) of a finished run, from its saved w0
    and its final weights: what a sweep evaluates once the trial has been chosen."""
    start = wise_start(workdir)
    if start is None:
        raise ValueError(f"{workdir}: no {WISE_START}.npz (not a WiSE-FT run)")
    alphas = tuple(float(a) for a in config.strategy_args.wise_alphas)
    shifts = tuple(config.get("eval_shifts") or ())
    full = {"params": final["params"], "batch_stats": final.get("batch_stats", {})}
    return _wise_finish(start, alphas, shifts)(full, evaluate, ("val", "test"))


def _wise_finish(
    start: dict, alphas: tuple[float, ...], shifts: tuple[str, ...] = ()
) -> Callable[..., dict[str, Any]]:
    """The WiSE-FT curve: accuracy and ECE at every alpha, on validation, test and each shift
    (`eval_shifts`); alpha is chosen on validation accuracy only (ties: the smallest alpha),
    the whole curve is kept."""
    from jtl.evaluation import calibration

    def measured(v: dict, split: str, evaluate: Callable[..., dict]) -> dict[str, float]:
        keep: list = []
        r = evaluate(v, split, keep)
        if not keep:  # an empty split (val_fraction=0)
            return {"accuracy": r["accuracy"], "ece": None}
        logits = np.concatenate([lg for lg, _ in keep])
        labels = np.concatenate([y for _, y in keep])
        return {"accuracy": r["accuracy"], "ece": calibration.metrics(logits, labels)["ece"]}

    def finish(
        state: dict, evaluate: Callable[..., dict], splits: tuple[str, ...] = ("val", "test")
    ) -> dict[str, Any]:
        final = {"params": state["params"], "batch_stats": state["batch_stats"]}
        final = jax.tree.map(np.asarray, final)
        untested = {"accuracy": None, "ece": None}
        rows = []
        for a in alphas:
            v = interpolate(start, final, a)
            if not v["batch_stats"]:
                v = {"params": v["params"]}
            val = measured(v, "val", evaluate)
            test = measured(v, "test", evaluate) if "test" in splits else untested
            row = {
                "alpha": a,
                "val_accuracy": val["accuracy"],
                "test_accuracy": test["accuracy"],
                "val_ece": val["ece"],
                "test_ece": test["ece"],
            }
            for name in shifts if "test" in splits else ():
                m = measured(v, f"shift:{name}", evaluate)
                row[f"shift_accuracy:{name}"], row[f"shift_ece:{name}"] = m["accuracy"], m["ece"]
            rows.append(row)
            logging.info("WiSE-FT alpha=%.2f val %.4f", a, val["accuracy"])
        # Ties on validation accuracy (common with a few hundred validation images) go to the
        # smallest alpha, the most weight on w0: WiSE-FT's premise is that w0 is the robust end.
        best = max(rows, key=lambda r: r["val_accuracy"])
        chosen = interpolate(start, final, best["alpha"])
        if not chosen["batch_stats"]:
            chosen = {"params": chosen["params"]}
        return {
            "wise_ft": rows,
            "wise_best_alpha": best["alpha"],
            # w0, kept with the run: a sweep evaluates the chosen trial's curve on test later.
            "finish_weights": {WISE_START: start},
            # The trainer reports calibration and shifts of these weights (jtl.run.train).
            "reported_variables": chosen,
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


# ----------------------------------------------------------------------------- the registry


@dataclasses.dataclass
class ProbePlan:
    """A strategy with no SGD steps: `fit()` returns its summary fields (the trainer adds the
    run's data and timing fields and writes summary.json)."""

    fit: Callable[[], dict[str, Any]]


@dataclasses.dataclass
class Setup:
    """What a strategy function gets: the run's config, model and data, the starting weights
    (pretrained already merged in where the strategy asks for them), and a copy of
    `config.optim` that the strategy's rules go into."""

    config: mlc.ConfigDict
    model: Any
    variables: dict[str, Any]
    data: Any
    optim: mlc.ConfigDict
    info: dict[str, Any]

    @property
    def args(self) -> mlc.ConfigDict:
        return self.config.strategy_args

    @property
    def blocks(self) -> list[str]:
        return list(self.model.block_names())

    def count(self, name: str) -> int:
        """`strategy_args.NAME`, a number of backbone blocks, checked against the model."""
        value, blocks = self.args[name], self.blocks
        if not 0 <= value <= len(blocks):
            raise ConfigError(
                f"strategy_args.{name}={value} is out of range: the model has {len(blocks)} "
                f"backbone blocks ({', '.join(blocks)}); use 0..{len(blocks)}"
            )
        return int(value)

    def block_rules(self, blocks: list[str]) -> list[str]:
        return [network_rules.block_regex(b) for b in blocks]

    def sgd_plan(
        self,
        frozen: list[str] | tuple[str, ...] = (),
        *,
        depth_rates: bool = False,
        backbone_rate: bool = False,
        **fields: Any,
    ) -> Plan:
        """A `Plan` whose `frozen` rules come first, then the config's own.

        `depth_rates`: the backbone trains, so `layer_decay` / `discriminative` apply;
        `backbone_rate`: without those, `backbone_lr_mult` applies. `freeze_batch_stats` runs
        the fully frozen blocks in inference mode.
        """
        optim, args = self.optim, self.args
        frozen = [*frozen, *optim.frozen]
        lr_mults = list(optim.lr_mults)
        rules = _depth_lr_rules(args, self.blocks) if depth_rates else []
        if rules:
            lr_mults = rules + lr_mults
        elif backbone_rate and args.backbone_lr_mult != 1.0:
            lr_mults = [("backbone/.*", float(args.backbone_lr_mult))] + lr_mults
        optim.frozen = tuple(frozen)
        optim.lr_mults = tuple(tuple(r) for r in lr_mults)
        fields.setdefault("variables", self.variables)
        plan = Plan(optim=optim, info=self.info, **fields)
        if args.freeze_batch_stats:
            plan.apply_train = frozen_bn_apply(self.blocks, frozen, plan.frozen_at)
        return plan

    def peft_plan(self, frozen: str, model: Any = None, **info: Any) -> Plan:
        """A parameter-efficient plan: `frozen` covers the base, checkpoints leave it out."""
        self.optim.frozen = (frozen, *self.optim.frozen)
        plan = Plan(variables=self.variables, optim=self.optim, model=model)
        plan.info = {**self.info, **info}
        if self.args.freeze_batch_stats:  # the base is frozen: BN runs on its stats
            plan.apply_train = frozen_bn_apply(self.blocks, list(plan.optim.frozen), None)
        params = plan.variables["params"]
        if self.config.init.checkpoint:  # the base the slim checkpoints name (always, in runs)
            plan.checkpoint = SlimCheckpoint.from_params(
                params, trainable_mask(params, plan.optim), self.config.init.checkpoint
            )
        return plan


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A registered strategy: its plan function and what it starts from."""

    name: str
    plan: Callable[[Setup], Plan | ProbePlan]
    pretrained: bool  # needs `init.checkpoint`; merged into the init before `plan` runs
    # Regexes of pretrained weights NOT loaded (they keep their fresh init), from the setup.
    keep_fresh: Callable[[Setup], list[str]] | None
    peft: bool
    # The `strategy_args` only this strategy (and others that list them) reads: changing one
    # cannot change a run of any other strategy, so resuming that run ignores it.
    own_args: tuple[str, ...] = ()
    # Takes SGD steps. False (a closed-form fit): a study neither sweeps its LR nor gives it
    # a step budget to converge in.
    sgd: bool = True


REGISTRY: dict[str, Strategy] = {}


def get(name: str) -> Strategy:
    """The registered strategy `name`; an unknown name fails with the list of valid ones."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown strategy {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def is_baseline(name: str) -> bool:
    """Whether `name` is the baseline every transfer arm is compared with: it starts from
    random init (no pretrained source), and studies give it He et al.'s longer schedule."""
    return not get(name).pretrained


def baseline() -> str:
    """The name of the one baseline strategy (studies' default scratch arm)."""
    (name,) = [s.name for s in REGISTRY.values() if not s.pretrained]
    return name


def register(
    name: str,
    *,
    pretrained: bool = True,
    keep_fresh: Callable[[Setup], list[str]] | None = None,
    peft: bool = False,
    own_args: tuple[str, ...] = (),
    sgd: bool = True,
) -> Callable[[Callable[[Setup], Plan | ProbePlan]], Callable[[Setup], Plan | ProbePlan]]:
    """Adds a strategy function to `REGISTRY` (in the module docstring's table order)."""

    def add(fn: Callable[[Setup], Plan | ProbePlan]) -> Callable[[Setup], Plan | ProbePlan]:
        if name in REGISTRY:
            raise ValueError(f"strategy {name!r} registered twice")
        REGISTRY[name] = Strategy(name, fn, pretrained, keep_fresh, peft, own_args, sgd)
        return fn

    return add


def args_not_read_by(name: str) -> set[str]:
    """`strategy_args` that only other strategies read (`own_args`): a changed default of one
    of these must not orphan the runs of strategy `name` (workdir resume ignores them)."""
    mine = set(REGISTRY[name].own_args) if name in REGISTRY else set()
    owned = {arg for s in REGISTRY.values() for arg in s.own_args}
    return owned - mine


def recorded_run_diff(
    recorded: dict[str, Any], config: mlc.ConfigDict, input_scale: str = "minus_one_one"
) -> list[str]:
    """`config_lib.config_diff` for resuming a run: other strategies' own args do not count.
    `input_scale`: the resolved one (`source_model.resolve_input_scale`)."""
    unread = [f"strategy_args.{a}" for a in sorted(args_not_read_by(config.strategy))]
    diff = config_lib.config_diff(recorded, config, unread=unread, input_scale=input_scale)
    before = str((recorded.get("init") or {}).get("checkpoint") or "")
    if "init.checkpoint" in diff and absolute(before) == absolute(config.init.checkpoint):
        diff.remove("init.checkpoint")  # recorded as typed (relative) by an older jtl
    return diff


def plan_strategy(
    config: mlc.ConfigDict, model: Any, variables: dict[str, Any], data: Any
) -> Plan | ProbePlan:
    """Expands `config.strategy` into a plan; unknown names fail with the list of valid ones."""
    name = config.strategy
    strategy = get(name)
    setup = Setup(config, model, variables, data, mlc.ConfigDict(config.optim.to_dict()), {})
    if strategy.pretrained and not config.init.checkpoint:
        raise ConfigError(
            f"strategy {name!r} needs pretrained weights: set --config.init.checkpoint=DIR "
            "(a run workdir or a `jtl import` output)"
        )
    if not strategy.pretrained and config.init.checkpoint:
        raise ConfigError(
            f"strategy {name!r} trains from random init but init.checkpoint is set; use a "
            "transfer strategy (e.g. --config.strategy=finetune_full) or set "
            "--config.init.checkpoint=''"
        )
    if strategy.pretrained:
        fresh = tuple(strategy.keep_fresh(setup)) if strategy.keep_fresh else ()
        setup.variables, report = load_pretrained(config, variables, fresh)
        setup.info["init"] = report.summary()
    return strategy.plan(setup)


# ----------------------------------------------------------------------------- strategies


@register("scratch", pretrained=False, own_args=("scratch_head_init",))
def scratch(s: Setup) -> Plan:
    """Random init (He for convs), a PyTorch-style uniform head, everything trains."""
    variables = _scratch_head(s.variables, s.args.scratch_head_init, s.config.seed)
    return Plan(variables=variables, optim=s.optim, info=s.info)


@register("linear_probe", own_args=("probe_kinds",), sgd=False)
def linear_probe(s: Setup) -> ProbePlan:
    """Cached bottleneck features, then logistic / ridge / SVM chosen on validation."""
    from jtl.transfer.linear_probe import probe_summary

    return ProbePlan(lambda: {**probe_summary(s.config, s.model, s.variables, s.data), **s.info})


@register("head_only")
def head_only(s: Setup) -> Plan:
    """The new head trains by SGD through the frozen pretrained network."""
    return s.sgd_plan(["backbone/.*"])


@register("finetune_top", own_args=("freeze_blocks",))
def finetune_top(s: Setup) -> Plan:
    """The first `freeze_blocks` blocks (stem first) frozen; the rest and the head train."""
    frozen = network_rules.freeze_first_k(s.blocks, s.count("freeze_blocks"))
    return s.sgd_plan(frozen, depth_rates=True, backbone_rate=True)


@register("finetune_full")
def finetune_full(s: Setup) -> Plan:
    """Everything trains, the backbone at `backbone_lr_mult` (or LLRD / discriminative)."""
    return s.sgd_plan(depth_rates=True, backbone_rate=True)


def target_batch_stats(s: Setup, passes: int = 2) -> dict[str, Any]:
    """BatchNorm running statistics re-estimated on the target's training split (AdaBN, Li et
    al. 2016): the mean over training batches of each BN layer's batch mean and variance, in
    train mode, as fine-tuning will see them.

    Why: a probe fitted on features under the source's statistics can be badly wrong once
    fine-tuning normalises with batch statistics. Measured on ImageNet Lite0 -> digits at 32 px:
    feature cosine 0.04 between the two modes, the probed head's loss 0.19 -> 46 on the first
    batch, and LP-FT lost the probe's accuracy in its first steps (docs/results.md).
    Each batch's statistics are read exactly, whatever each layer's momentum m: flax stores
    m * old + (1 - m) * batch, so running it from old = 0 and old = 1 gives (1 - m) * batch
    and m."""
    bs = s.variables.get("batch_stats")
    if not bs:
        return bs or {}
    model, params = s.model, s.variables["params"]

    def updated(stats: Any, x: jax.Array) -> Any:
        _, new = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return new["batch_stats"]

    @jax.jit
    def batch_stats_of(x: jax.Array) -> Any:
        a = updated(jax.tree.map(jnp.zeros_like, bs), x)  # (1 - m) * batch
        m = jax.tree.map(lambda o, a: o - a, updated(jax.tree.map(jnp.ones_like, bs), x), a)
        return jax.tree.map(lambda a, m: a / (1.0 - m), a, m)

    from jtl.data.pipeline import model_inputs

    n_batches = passes * max(1, -(-len(s.data.train_idx) // int(s.config.batch_size)))
    batches = s.data.train_batches(s.config, 0)
    total = None
    for _ in range(n_batches):
        stats = batch_stats_of(model_inputs(next(batches)))
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    return jax.tree.map(lambda t: np.asarray(t / n_batches), total)


def _probed_head(s: Setup) -> dict[str, Any]:
    """LP-FT's start: the pretrained backbone with a linear probe fitted on the target (on
    features under the target's BN statistics unless `probe_batch_stats="source"`)."""
    from jtl.transfer.linear_probe import fit_probe_on_target

    where = s.args.probe_batch_stats
    if where not in ("target", "source"):
        raise ConfigError(
            f"strategy_args.probe_batch_stats={where!r}: use 'target' (AdaBN) or 'source'"
        )
    if where == "target" and s.variables.get("batch_stats"):
        s.variables = {**s.variables, "batch_stats": target_batch_stats(s)}
        s.info["lp_batch_stats"] = "target"
    head, probe_info = fit_probe_on_target(s.config, s.model, s.variables, s.data)
    probe_info.pop("fitted")
    probe_info.pop("val")
    s.info.update({f"lp_{k}": v for k, v in probe_info.items()})
    s.info["lp_val_accuracy"] = head.val_accuracy
    params = dict(s.variables["params"])
    params["head"] = {"kernel": jnp.asarray(head.kernel), "bias": jnp.asarray(head.bias)}
    return {**s.variables, "params": params}


@register("lp_ft", own_args=("probe_kinds", "probe_batch_stats"))
def lp_ft(s: Setup) -> Plan:
    """Linear probe first, then full fine-tuning from the probed head (Kumar et al. 2022)."""
    return s.sgd_plan(depth_rates=True, backbone_rate=True, variables=_probed_head(s))


@register("l2sp", own_args=("l2sp_alpha", "l2sp_beta"))
def l2sp(s: Setup) -> Plan:
    """Full fine-tuning pulled towards the pretrained weights instead of towards zero."""
    s.optim.weight_decay = 0.0  # L2-SP replaces decay towards zero
    penalty = _l2sp_penalty(
        s.variables["params"], float(s.args.l2sp_alpha), float(s.args.l2sp_beta)
    )
    return s.sgd_plan(depth_rates=True, backbone_rate=True, penalty=penalty)


@register("wise_ft", own_args=("probe_kinds", "wise_alphas", "probe_batch_stats"))
def wise_ft(s: Setup) -> Plan:
    """LP-FT, then the weight-space ensemble with the start picked on validation."""
    variables = _probed_head(s)
    start = jax.tree.map(
        np.asarray, {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    )
    alphas = tuple(float(a) for a in s.args.wise_alphas)
    finish = _wise_finish(start, alphas, tuple(getattr(s.data, "shifts", {})))
    return s.sgd_plan(depth_rates=True, backbone_rate=True, variables=variables, finish=finish)


def _top_blocks(s: Setup) -> list[str]:
    return s.block_rules(s.blocks[len(s.blocks) - s.count("reinit_blocks") :])


@register("reinit_top", keep_fresh=_top_blocks, own_args=("reinit_blocks",))
def reinit_top(s: Setup) -> Plan:
    """The top `reinit_blocks` blocks start from fresh init (a re-init ablation)."""
    return s.sgd_plan(depth_rates=True, backbone_rate=True)


@register(
    "layer_transfer",
    keep_fresh=lambda s: s.block_rules(s.blocks[s.count("transfer_blocks") :]),
    own_args=("transfer_blocks", "transfer_frozen"),
)
def layer_transfer(s: Setup) -> Plan:
    """Yosinski et al.: the first `transfer_blocks` pretrained (frozen if `transfer_frozen`)."""
    if s.args.transfer_frozen:
        return s.sgd_plan(s.block_rules(s.blocks[: s.args.transfer_blocks]))
    return s.sgd_plan(depth_rates=True)


@register("gradual_unfreeze", own_args=("unfreeze_every",))
def gradual_unfreeze(s: Setup) -> Plan:
    """ULMFiT: the head first, then one more block from the top every `unfreeze_every` steps."""
    every = int(s.args.unfreeze_every)
    if every <= 0:
        raise ConfigError(
            "gradual_unfreeze needs strategy_args.unfreeze_every > 0 (steps per stage)"
        )
    stages = network_rules.gradual_unfreeze_stages(s.blocks, every)
    base_frozen = tuple(s.optim.frozen)
    s.info["unfreeze_every"] = every
    return s.sgd_plan(
        depth_rates=True,
        backbone_rate=True,
        frozen_at=lambda step: tuple(stages.frozen_at(step)) + base_frozen,
        stage_at=stages.stage_at,
        stage_start=lambda step: stages.stage_at(step) * every,
    )


def _peft_rng(config: mlc.ConfigDict) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x9EF7)


@register("lora", peft=True, own_args=("lora_rank", "lora_alpha", "lora_targets"))
def lora(s: Setup) -> Plan:
    """LoRA: frozen base, trainable head + `lora/...` factors (jtl.models.peft: the transform).

    Default targets: BERT's attention query and value kernels (the LoRA paper's choice);
    every backbone conv / Dense kernel for image models.
    """
    args = s.args
    targets = tuple(args.lora_targets)
    if not targets:
        text = s.config.model.name in TEXT_MODELS
        targets = (r"backbone/block\d+/(query|value)/kernel",) if text else (r"backbone/.*/kernel",)
    params = dict(s.variables["params"])
    rank = int(args.lora_rank)
    keys = peft.lora_targets(params, targets)
    params[peft.LORA] = peft.init_lora(params, keys, rank, _peft_rng(s.config))
    s.variables = {**s.variables, "params": params}
    return s.peft_plan(
        "backbone/.*",
        peft.PeftModel(s.model, peft.lora_scale(args)),
        lora_rank=rank,
        lora_alpha=float(args.lora_alpha),
        lora_kernels=len(keys),
    )


# Every backbone leaf whose own name is not `bias` or `scale` (flax norms: scale + bias).
BITFIT_FROZEN = r"backbone/.*/(?!(bias|scale)$)[^/]+"


@register("bitfit", peft=True)
def bitfit(s: Setup) -> Plan:
    """BitFit: trains every `bias` and norm `scale` in the backbone (and the head), nothing else."""
    return s.peft_plan(BITFIT_FROZEN)


@register("adapter", peft=True, own_args=("adapter_blocks", "adapter_reduction"))
def adapter(s: Setup) -> Plan:
    """Bottleneck adapters after `adapter_blocks` (default: every block but the stem)."""
    args = s.args
    blocks = list(args.adapter_blocks) or s.blocks[1:]
    dims = peft.adapter_dims(s.model, s.variables, s.data.example_inputs(), blocks)
    params = dict(s.variables["params"])
    params[peft.ADAPTER] = peft.init_adapters(
        dims, int(args.adapter_reduction), _peft_rng(s.config)
    )
    s.variables = {**s.variables, "params": params}
    return s.peft_plan(
        "backbone/.*",
        peft.PeftModel(s.model),
        adapter_blocks=blocks,
        adapter_reduction=int(args.adapter_reduction),
    )


@register("norm_only", peft=True)
def norm_only(s: Setup) -> Plan:
    """Trains the normalisation layers' scale and offset (and the head), nothing else.

    BatchNorm statistics update by default (`freeze_batch_stats=False`): re-estimating them on
    the target is what adapts the normalisation to a new input distribution (AdaBN), and it is
    the same default as every other strategy. `freeze_batch_stats=True` runs the backbone in
    inference mode instead (source statistics, only scale and offset learn).
    """
    norms = peft.norm_module_paths(s.model, s.variables, s.data.example_inputs())
    inside = [p[len("backbone/") :] for p in norms if p.startswith("backbone/")]
    if not inside:
        raise ConfigError(
            "norm_only: the backbone has no normalisation layer with parameters",
            "use a model with BatchNorm/LayerNorm/GroupNorm, e.g. --config.model.kwargs.norm=batch",
        )
    keep = "|".join(re.escape(p) for p in inside)
    return s.peft_plan(f"backbone/(?!({keep})/).*", norm_layers=len(inside))


STRATEGIES = tuple(REGISTRY)
