"""The trainer: config -> data + model + optimizer -> jitted sharded steps -> checkpoints/metrics.

One code path for 1..N devices and 1..M hosts: `jax.jit` over a `data` mesh with params
replicated and batches sharded. A run restarted on the same workdir resumes from its latest
checkpoint (params, optimizer state, step; the data position and RNG are functions of the step)
and reaches the same final numbers as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
from absl import logging
from etils import epath

from jtl import config as config_lib
from jtl.data import transforms
from jtl.data.pipeline import model_inputs
from jtl.data.target import SHIFT, TargetData
from jtl.evaluation import calibration, costs, run_summary
from jtl.evaluation.metrics import MetricWriter
from jtl.models import get_model, peft
from jtl.optim import format_group_table, groups_to_json, make_optimizer, trainable_mask
from jtl.run import config_check, guard
from jtl.run.early_stopping import EarlyStopping, resolve_budget
from jtl.runtime import preemption, sharding
from jtl.runtime.code_version import code_version
from jtl.runtime.dispatch import InFlight
from jtl.runtime.errors import DivergedError
from jtl.runtime.paths import as_path, write_text_atomic
from jtl.transfer.strategies import Plan, ProbePlan, plan_strategy, recorded_run_diff
from jtl.weights import checkpoint as ckpt
from jtl.weights import source_model
from jtl.weights.slim_checkpoint import absolute

State = dict[str, Any]


class WorkdirConflictError(RuntimeError):
    """The workdir already holds a different experiment; refusing to mix or overwrite it."""


# ----------------------------------------------------------------------------- steps


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def make_train_step(
    model: Any,
    tx: optax.GradientTransformation,
    mask: Any,
    plan: Plan,
    nonfinite: str = "stop",
) -> Callable[[State, dict], tuple[State, dict]]:
    """One SGD step. Gradient norms read the trainable partition only (frozen grads stay dead).

    `metrics["finite"]` flags a finite loss and gradient norm; with `nonfinite="skip"` a
    non-finite step keeps the previous state (see jtl.run.guard).
    """

    def step(state: State, batch: dict) -> tuple[State, dict]:
        has_bs = bool(state["batch_stats"])

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
            variables = {"params": params}
            if has_bs:
                variables["batch_stats"] = state["batch_stats"]
            logits, updates = plan.apply_train(model, variables, model_inputs(batch), has_bs)
            loss = cross_entropy(logits, batch["label"]).mean()
            loss = loss + plan.penalty(params)
            return loss, (logits, updates.get("batch_stats", state["batch_stats"]))

        (loss, (logits, new_bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        trainable_grads = jax.tree.map(lambda g, m: g if m else None, grads, mask)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "grad_norm": optax.global_norm(trainable_grads),
        }
        metrics["finite"] = guard.finite_flag(loss, metrics["grad_norm"])
        if nonfinite == "skip":
            params, new_bs, opt_state = guard.keep_if_finite(
                metrics["finite"],
                (params, new_bs, opt_state),
                (state["params"], state["batch_stats"], state["opt_state"]),
            )
        new_state = {
            "step": state["step"] + 1,
            "params": params,
            "batch_stats": new_bs,
            "opt_state": opt_state,
        }
        return new_state, metrics

    return step


def init_state(params: Any, batch_stats: Any, tx: optax.GradientTransformation) -> State:
    """The train state a step consumes: a plain dict, so orbax saves and restores it as is."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": tx.init(params),
    }


def jit_train_step(
    model: Any,
    tx: optax.GradientTransformation,
    mask: Any,
    plan: Plan,
    mesh: Any,
    nonfinite: str = "stop",
) -> Any:
    """The step jitted over `mesh`: state replicated (and donated), batch split on `data`."""
    repl, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(
        make_train_step(model, tx, mask, plan, nonfinite),
        in_shardings=(repl, batched),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )


def make_eval_step(model: Any, logits: bool = False) -> Callable[[dict, dict], dict]:
    """Sums for loss and accuracy; with `logits`, also the global batch's logits, labels and
    mask (for calibration: gathering them costs collectives, so periodic validation does not)."""

    def step(variables: dict, batch: dict) -> dict:
        out = model.apply(variables, model_inputs(batch), train=False)
        mask = batch["mask"]
        loss = cross_entropy(out, batch["label"])
        correct = (jnp.argmax(out, -1) == batch["label"]).astype(jnp.float32)
        sums = {
            "loss_sum": jnp.sum(loss * mask),
            "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask),
        }
        if logits:
            sums.update(logits=out.astype(jnp.float32), label=batch["label"], mask=mask)
        return sums

    return step


SUMS = ("loss_sum", "correct", "count")


def evaluate(
    eval_step: Callable,
    variables: dict,
    data: TargetData,
    split: str,
    batch_size: int,
    mesh: Any,
    keep: list | None = None,
) -> dict[str, float]:
    """Loss and accuracy of a split; `keep` (a list) also receives its (logits, labels)."""
    totals = dict.fromkeys(SUMS, 0.0)
    for batch in data.eval_batches(split, batch_size):
        out = eval_step(variables, sharding.shard_batch(batch, mesh))
        for k in totals:
            totals[k] += float(out[k])
        if keep is not None:
            rows = np.asarray(out["mask"]) > 0
            keep.append((np.asarray(out["logits"])[rows], np.asarray(out["label"])[rows]))
    n = max(totals["count"], 1.0)
    return {"loss": totals["loss_sum"] / n, "accuracy": totals["correct"] / n, "examples": int(n)}


class WeightsEvaluator:
    """Loss, accuracy and (with `keep`) logits of any weights of one run's architecture on its
    target's splits: the one evaluation of weights after training (the sweep's test evaluation
    of a chosen trial, WiSE-FT curves, soups). Full and PEFT runs alike: LoRA factors and
    adapters in `variables` are applied through `peft.PeftModel`, a no-op for plain weights."""

    def __init__(self, config: mlc.ConfigDict) -> None:
        self.config = config
        self.mesh = sharding.make_mesh()
        self.data = source_model.target_data(config)
        base = build_model(config, self.data.num_classes)
        self.model = peft.PeftModel(base, peft.lora_scale(config.strategy_args))
        self._steps = _eval_steps(self.model, self.mesh)

    def __call__(self, variables: dict, split: str = "val", keep: list | None = None) -> dict:
        v = {"params": sharding.replicate(variables["params"], self.mesh)}
        if variables.get("batch_stats"):
            v["batch_stats"] = sharding.replicate(variables["batch_stats"], self.mesh)
        step = self._steps[0] if keep is None else self._steps[1]
        batch = int(self.config.eval_batch_size)
        return evaluate(step, v, self.data, split, batch, self.mesh, keep)


def evaluate_shifts(
    evaluate_split: Callable[..., dict], variables: dict, data: TargetData, temperature: float
) -> dict[str, dict[str, float]]:
    """Accuracy, loss, NLL / Brier / ECE raw and at `temperature` on each `eval_shifts` set."""
    out = {}
    for name in data.shifts:
        keep: list = []
        r = evaluate_split(variables, f"{SHIFT}{name}", keep)
        logits, labels = kept_arrays(keep)
        out[name] = calibration.shift_fields(
            logits, labels, temperature, accuracy=r["accuracy"], loss=r["loss"]
        )
        out[name]["examples"] = r["examples"]
    return out


def kept_arrays(keep: list) -> tuple[np.ndarray, np.ndarray]:
    """`evaluate(keep=...)`'s batches as one (logits, labels) pair (empty for an empty split)."""
    if not keep:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate([lg for lg, _ in keep]), np.concatenate([y for _, y in keep])


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of one compiled step from XLA's cost analysis (None where a backend lacks it)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None else None


# ----------------------------------------------------------------------------- run


def _check_workdir(workdir: epath.Path, config: mlc.ConfigDict) -> None:
    """Refuse to resume a workdir that holds a different experiment (never mix results)."""
    existing = workdir / "config.json"
    if not existing.exists() or not _has_results(workdir):
        return  # nothing trained yet (e.g. a start that failed on a config error): no conflict
    scale = source_model.resolve_input_scale(config)
    diff = recorded_run_diff(json.loads(existing.read_text()), config, scale)
    if diff:
        raise WorkdirConflictError(
            f"{workdir} already holds a run with a different config (differs in: "
            f"{', '.join(diff) or 'details'}). Nothing was changed; use a new --workdir, or the "
            "same config to resume."
        )


def _save_finish_weights(workdir: epath.Path, weights: dict[str, Any]) -> None:
    """Weights a strategy's finish needs again later (WiSE-FT's w0), as `NAME.npz` (process 0;
    written then renamed, so a kill leaves the old file or the new one)."""
    if jax.process_index() != 0:
        return
    for name, tree in weights.items():
        tmp = workdir / f"{name}.npz.tmp"
        with tmp.open("wb") as f:
            np.savez(f, **ckpt.flatten(jax.tree.map(np.asarray, tree)))
        tmp.replace(workdir / f"{name}.npz")


def _has_results(workdir: epath.Path) -> bool:
    """Whether a workdir holds anything a different config could mix with or overwrite."""
    if (workdir / "summary.json").exists():
        return True
    ckpts = workdir / "checkpoints"
    return ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir())


def _per_class(data: TargetData) -> dict[str, int]:
    """Training examples per class actually used (what a "N per class" label must match)."""
    counts = np.bincount(data.dataset.labels("train")[data.train_idx], minlength=data.num_classes)
    names = list(data.dataset.class_names) or [str(i) for i in range(data.num_classes)]
    return {str(names[i]) if i < len(names) else str(i): int(n) for i, n in enumerate(counts)}


def _log_and_write(workdir: epath.Path, name: str, text: str) -> None:
    logging.info("%s:\n%s", name, text)
    if jax.process_index() == 0:
        (workdir / name).write_text(text + "\n")


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not (enabled and sys.stderr.isatty() and jax.process_index() == 0):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def build_model(config: mlc.ConfigDict, num_classes: int) -> Any:
    """The configured classifier; `compute_dtype` reaches every layer, params stay float32."""
    kwargs = dict(config.model.kwargs)
    if config.compute_dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"compute_dtype={config.compute_dtype!r}: use float32 or bfloat16")
    if config.compute_dtype != "float32":
        kwargs["dtype"] = config.compute_dtype
    return get_model(config.model.name, num_classes, **kwargs)


def _init_variables(model: Any, config: mlc.ConfigDict, example: Any = None) -> dict[str, Any]:
    """Fresh variables; `example` is one model input (default: an image of the config's size)."""
    if example is not None:
        dummy = example
    else:
        dummy = jnp.zeros((1, config.image_size, config.image_size, config.channels), jnp.float32)
    rng = jax.random.PRNGKey(config.seed)
    variables = jax.jit(lambda r: model.init(r, dummy, train=False))(rng)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _count(params: Any, mask: Any) -> tuple[int, int]:
    sizes = [np.size(x) for x in jax.tree.leaves(params)]
    trainable = sum(s for s, m in zip(sizes, jax.tree.leaves(mask), strict=True) if m)
    return int(trainable), int(sum(sizes) - trainable)


def _write_summary(workdir: epath.Path, summary: dict[str, Any]) -> None:
    if jax.process_index() == 0:
        write_text_atomic(workdir / "summary.json", run_summary.dumps(summary))
    logging.info("Finished: test accuracy %s (%s)", summary["test_accuracy"], workdir)


def _stop_requested(preempt: preemption.Preemption, step: int, log_every: int) -> bool:
    """Whether to stop after `step`: at once in one process; across processes only at the
    logging steps, where every process agrees (a checkpoint is collective)."""
    if jax.process_count() == 1:
        return preempt.requested
    return step % log_every == 0 and preemption.agreed(preempt.requested)


def _preempted(
    step: int, preempt: preemption.Preemption, checkpoints: ckpt.RunCheckpoints, writer: Any
) -> None:
    """After `step`'s checkpoint: waits for it to be written, then raises `Preempted`."""
    checkpoints.wait()
    checkpoints.close()
    writer.close()
    raise preemption.Preempted(step, preempt.signal_name or "SIGTERM")


def _eval_variables(state: State) -> dict:
    v = {"params": state["params"]}
    if state["batch_stats"]:
        v["batch_stats"] = state["batch_stats"]
    return v


def _optimizer(plan: Plan, config: mlc.ConfigDict, step: int) -> tuple[Any, Any, list]:
    """(tx, trainable mask, param groups) for the stage of `step`: gradual unfreezing freezes
    per stage, and the LR schedule continues across stages."""
    optim = mlc.ConfigDict(plan.optim.to_dict())
    optim.frozen = tuple(plan.frozen_at(step) if plan.frozen_at else plan.optim.frozen)
    params = plan.variables["params"]
    tx, groups = make_optimizer(
        params, optim, config.total_steps, step_offset=plan.stage_start(step)
    )
    return tx, trainable_mask(params, optim), groups


def _fresh_state(plan: Plan, config: mlc.ConfigDict, mesh: Any, step: int) -> State:
    """A new state whose optimizer state has the structure a checkpoint of `step` holds: the
    one the stage of the last step it finished built."""
    tx = _optimizer(plan, config, max(step - 1, 0))[0]
    variables = plan.variables
    return sharding.replicate(init_state(variables["params"], variables["batch_stats"], tx), mesh)


def _saved(plan: Plan, state: State) -> State:
    """What a checkpoint holds: PEFT's slim checkpoints leave out the frozen base weights."""
    return plan.checkpoint.strip(state) if plan.checkpoint is not None else state


def _restore(
    config: mlc.ConfigDict,
    workdir: epath.Path,
    mesh: Any,
    plan: Plan,
    checkpoints: ckpt.RunCheckpoints,
) -> tuple[int, State, dict[str, Any]]:
    """(start step, state, checkpoint metadata): the newest checkpoint that restores intact
    (older ones if it is corrupt, with a warning), or a fresh state at step 0."""
    start_step, restored, meta = checkpoints.restore_usable(
        lambda s: ckpt.abstract_like(_saved(plan, _fresh_state(plan, config, mesh, s)))
    )
    slim = plan.checkpoint
    if restored is not None and slim is not None:
        slim.check(meta, str(workdir))  # refuses a base that is not the one it trained on
        restored = sharding.replicate(slim.fill(restored), mesh)
    state = restored if start_step else _fresh_state(plan, config, mesh, 0)
    if start_step:
        logging.info(
            "Resumed from step %d (stage %s) in %s", start_step, meta.get("stage"), workdir
        )
    return start_step, state, meta


def _eval_steps(model: Any, mesh: Any) -> tuple[Any, Any]:
    """Jitted eval steps: sums only (periodic validation), and with the logits (calibration)."""
    repl, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    sums = jax.jit(make_eval_step(model), in_shardings=(repl, batched), out_shardings=repl)
    logits = jax.jit(
        make_eval_step(model, logits=True), in_shardings=(repl, batched), out_shardings=repl
    )
    return sums, logits


@dataclasses.dataclass
class _Run:
    """One SGD run: its fixed pieces, then what the step loop carries from step to step."""

    config: mlc.ConfigDict
    workdir: epath.Path
    t_start: float
    mesh: Any
    data: TargetData
    model: Any  # the model the steps apply (PEFT: the plan's own)
    plan: Plan
    base: dict[str, Any]  # summary.json fields known before training
    policy: str  # nonfinite: "stop" or "skip"
    checkpoints: ckpt.RunCheckpoints
    early: EarlyStopping
    writer: MetricWriter
    start_step: int
    eval_steps: tuple[Any, Any]  # (sums, sums and logits)
    batches: Any  # the training batches from start_step on
    batch: Any = None  # the next step's (sharded); None once no step is left
    skipped_steps: int = 0  # nonfinite="skip": steps skipped so far (checkpointed)
    # The current stage (gradual unfreezing): set by `_enter_stage` only.
    stage: int = 0
    mask: Any = None
    groups: list = dataclasses.field(default_factory=list)
    step_fn: Any = None  # the compiled train step
    flops_log: list[float] = dataclasses.field(default_factory=list)
    # Since the last sync: per-step finite flags, and train metrics since the last log.
    flags: list[Any] = dataclasses.field(default_factory=list)
    pending: list[dict] = dataclasses.field(default_factory=list)
    bar: Any = None  # tqdm on a TTY, else None and `progress_line` logs
    progress_line: guard.ProgressLine | None = None
    # A bounded dispatch queue: unbounded ones deadlock on CPU devices.
    inflight: InFlight = dataclasses.field(default_factory=InFlight)

    def evaluate_split(self, v: dict, split: str, keep: list | None = None) -> dict[str, float]:
        step_fn = self.eval_steps[0] if keep is None else self.eval_steps[1]
        return evaluate(step_fn, v, self.data, split, self.config.eval_batch_size, self.mesh, keep)

    def meta(self, step: int) -> dict[str, Any]:
        """The metadata of `step`'s checkpoint: what an exact resume needs beside the state."""
        slim = self.plan.checkpoint
        return {
            "step": step,
            "stage": self.plan.stage_at(max(step - 1, 0)),
            "data": {"next_batch": step, "seed": self.config.seed},
            "fingerprint": config_lib.fingerprint(self.config),
            "skipped_steps": self.skipped_steps,
            **self.early.meta(),
            **({"base": slim.ref} if slim is not None else {}),
        }


def _enter_stage(
    run: _Run, state: State, step: int, fresh_opt_state: bool, groups_file: str
) -> State:
    """The one place the optimizer, trainable mask and compiled step are (re)built: at the
    start, and at each gradual-unfreezing stage change (with a fresh optimizer state)."""
    run.stage = run.plan.stage_at(step)
    tx, run.mask, run.groups = _optimizer(run.plan, run.config, step)
    if fresh_opt_state:
        host_params = sharding.to_host(state["params"])
        state["opt_state"] = sharding.replicate(tx.init(host_params), run.mesh)
    _log_and_write(run.workdir, groups_file, format_group_table(run.groups))
    if run.batch is not None:  # else no step is left to run (a finished run resumed)
        t = time.time()
        step_fn = jit_train_step(run.model, tx, run.mask, run.plan, run.mesh, run.policy)
        run.step_fn = step_fn.lower(state, run.batch).compile()
        flops = compiled_flops(run.step_fn)  # per device: the SPMD program runs on each
        flops = flops * run.mesh.devices.size if flops is not None else None
        logging.info("Compiled train step in %.1fs; %.3g FLOPs/step", time.time() - t, flops or 0)
        run.flops_log.append(flops or 0.0)
    return state


def _diverged(
    run: _Run, metrics: dict[str, Any], step: int, skipped: int | None = None, why: str = ""
) -> None:
    """Stops a diverged run: no checkpoint after `step`, summary.json says so, then raises."""
    what = guard.what_was_nonfinite(metrics)
    host = {k: float(np.asarray(jax.device_get(v))) for k, v in metrics.items()}
    run.writer.write(step, "train", **host)
    run.writer.close()
    run.checkpoints.wait()
    run.checkpoints.close()
    last = run.checkpoints.latest_step()
    summary = guard.diverged_summary(run.base, step, what, last, run.policy)
    summary["wall_time_s"] = time.time() - run.t_start
    if skipped is not None:
        summary["skipped_steps"] = int(skipped)
    if jax.process_index() == 0:
        write_text_atomic(run.workdir / "summary.json", run_summary.dumps(summary))
    raise DivergedError(
        f"training diverged at step {step}: non-finite {what}{f' ({why})' if why else ''}; "
        "summary.json records it, "
        f"last finite checkpoint: {f'step {last}' if last else 'none'}",
        "lower --config.optim.lr, set --config.optim.clip_norm, or --config.nonfinite=skip to "
        "skip such steps",
        summary,
    )


def _syncs(run: _Run, step: int) -> bool:
    """Whether `step` syncs with the host anyway (logs, evaluates or checkpoints)."""
    config = run.config
    return (
        step % config.log_every == 0
        or step % config.eval_every == 0
        or run.checkpoints.should_save(step)
        or step == config.total_steps
    )


def _check_flags(run: _Run, step: int) -> None:
    """The finite flags of the steps since the last sync (read at syncs only): "stop" diverges
    at the first bad step; "skip" counts them, and diverges past `nonfinite_max_skipped`."""
    bad = guard.bad_steps(run.flags, step - len(run.flags) + 1)
    run.flags = []
    if bad and run.policy == "skip":
        run.skipped_steps += len(bad)
        logging.warning("Skipped %d non-finite step(s), first %d", len(bad), bad[0])
        limit = run.config.nonfinite_max_skipped
        if guard.too_many_skipped(run.skipped_steps, step, limit):
            _diverged(
                run, run.pending[bad[-1] - step - 1], bad[-1], skipped=run.skipped_steps,
                why=f"skipped {run.skipped_steps} of {step} steps (more than "
                f"nonfinite_max_skipped={limit:g})",
            )  # fmt: skip
    elif bad:
        _diverged(run, run.pending[bad[0] - step - 1], bad[0])


def _check_weights(run: _Run, step: int, state: State) -> None:
    """The loss and gradient were finite, but did the update overflow? Never save (or name as
    the last finite one) a checkpoint holding non-finite weights."""
    if not guard.all_finite(state):
        why = "the update overflowed"
        _diverged(run, {"weights": jnp.nan}, step, skipped=run.skipped_steps, why=why)


def _save(run: _Run, step: int, state: State) -> None:
    """`step`'s checkpoint, with the best weights and metrics it names written first."""
    _check_weights(run, step, state)
    run.early.persist()  # the best weights this checkpoint's metadata names
    run.writer.flush()  # remote workdirs: metrics.jsonl up to the checkpoint
    run.checkpoints.save(step, _saved(run.plan, state), run.meta(step))


def _log_train(run: _Run, step: int) -> None:
    """Mean train metrics since the last log: metrics.jsonl, and the progress bar or line."""
    host = jax.device_get(run.pending)
    means = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    run.writer.write(step, "train", **means)
    run.pending = []
    if run.bar is not None:
        run.bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['accuracy']:.3f}")
    elif jax.process_index() == 0:
        logging.info(run.progress_line.line(step, means["loss"], means["accuracy"]))


def _validate(run: _Run, step: int, state: State) -> None:
    """Validation loss and accuracy at `step`; early stopping decides on the accuracy."""
    val = run.evaluate_split(_eval_variables(state), "val")
    run.writer.write(step, "val", loss=val["loss"], accuracy=val["accuracy"])
    logging.info("step %d: val loss %.4f, accuracy %.4f", step, val["loss"], val["accuracy"])
    if run.early.update(step, val["accuracy"], state, loss=val["loss"]):
        logging.info("Early stop at step %d (best step %s)", step, run.early.best_step)


def _loop(run: _Run, state: State, preempt: preemption.Preemption) -> tuple[State, int]:
    """SGD steps to `total_steps` or an early stop; returns the state and steps run. A stop
    request finishes the step, checkpoints it and raises `Preempted`."""
    config, step = run.config, run.start_step
    while step < config.total_steps and not run.early.stopped:
        if run.plan.stage_at(step) != run.stage:  # gradual unfreezing: a new stage
            groups_file = f"param_groups_stage{run.plan.stage_at(step)}.txt"
            state = _enter_stage(run, state, step, True, groups_file)
        state, metrics = run.step_fn(state, run.batch)
        run.inflight.push(metrics)
        step += 1
        run.flags.append(metrics.pop("finite"))
        run.pending.append(metrics)
        stop_now = _stop_requested(preempt, step, config.log_every)
        if stop_now or _syncs(run, step):  # look at the flags before logging, evaluating, saving
            _check_flags(run, step)
        if step < config.total_steps:
            run.batch = sharding.shard_batch(next(run.batches), run.mesh)
        if step % config.log_every == 0 or step == config.total_steps:
            _log_train(run, step)
        if step % config.eval_every == 0 or step == config.total_steps:
            _validate(run, step, state)
        last = step == config.total_steps or run.early.stopped
        if last:  # with early stopping, the best evaluated weights are what the run reports
            state = run.early.best_into(state, lambda x: sharding.replicate(x, run.mesh))
        if run.checkpoints.should_save(step) or last:
            _save(run, step, state)
        if run.bar is not None:
            run.bar.update(1)
        if stop_now and not last:
            if not run.checkpoints.should_save(step):  # else the cadence just saved this step
                _save(run, step, state)
            _preempted(step, preempt, run.checkpoints, run.writer)
    return state, step


# ----------------------------------------------------------------------------- train


def _prepare_workdir(
    config: mlc.ConfigDict, workdir: str | Path
) -> tuple[mlc.ConfigDict, epath.Path]:
    """Checks the config and records it in the workdir, refusing one of another experiment."""
    config_check.check(config)  # also for train() called from Python (studies, tests)
    config = config_lib.resolve_cadences(config)  # fractions of total_steps -> steps
    if config.init.checkpoint:  # recorded absolute: the run resumes and exports from anywhere
        config = config.copy_and_resolve_references()
        config.init.checkpoint = absolute(config.init.checkpoint)
    workdir = as_path(workdir)  # epath: local dirs absolute, gs:// kept as given
    workdir.mkdir(parents=True, exist_ok=True)
    sharding.maybe_initialize_distributed(config.distributed or "auto")
    _check_workdir(workdir, config)
    if jax.process_index() == 0:
        cfg = config_lib.to_dict(config)
        cfg["_fingerprint"] = config_lib.fingerprint(config)
        write_text_atomic(workdir / "config.json", json.dumps(cfg, indent=2) + "\n")
    return config, workdir


def _load_data(config: mlc.ConfigDict, mesh: Any) -> tuple[mlc.ConfigDict, TargetData]:
    """The target's splits, and the config with its epoch budget resolved to steps."""
    sharding.check_batch_size(config.batch_size, mesh)
    data = source_model.target_data(config)
    config = resolve_budget(config, len(data.train_idx))  # max_epochs / eval_every_epochs -> steps
    logging.info(
        "Data %s: %d train / %d val / %d test examples, %d classes",
        config.dataset,
        len(data.train_idx),
        len(data.val_idx),
        len(data.test_idx),
        data.num_classes,
    )
    return config, data


def _base_summary(config: mlc.ConfigDict, data: TargetData) -> dict[str, Any]:
    """summary.json fields known before any step (also those of a diverged run)."""
    return {
        "dataset": config.dataset,
        "data_transforms": transforms.describe(config.dataset),
        "model": config.model.name,
        "strategy": config.strategy,
        "seed": config.seed,
        "train_examples": int(len(data.train_idx)),
        "train_examples_per_class": _per_class(data),
        "num_classes": int(data.num_classes),
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "input_scale": data.input_scale,
        "code_version": code_version(),  # of the process that finished the run
    }


def _describe_workdir(
    config: mlc.ConfigDict, workdir: epath.Path, data: TargetData, base: dict[str, Any]
) -> None:
    """The workdir describes its model (jtl predict, advise, export) and the images skipped."""
    if jax.process_index() == 0:
        names = data.dataset.class_names or [str(i) for i in range(data.num_classes)]
        meta = source_model.model_json(
            config.model.name,
            {**config.model.kwargs, "num_classes": int(data.num_classes)},
            names,
            config.image_size,
            config.channels,
            data.input_scale,
            text=data.text,
        )
        meta["dataset"], meta["data_transforms"] = config.dataset, base["data_transforms"]
        write_text_atomic(workdir / source_model.MODEL_JSON, json.dumps(meta, indent=2) + "\n")
    if data.dataset.skipped_images:
        base["skipped_images"] = len(data.dataset.skipped_images)
        if jax.process_index() == 0:
            listing = "\n".join(data.dataset.skipped_images) + "\n"
            (workdir / "skipped_images.txt").write_text(listing)
        logging.warning(
            "Skipped %d unreadable image(s), listed in %s",
            len(data.dataset.skipped_images),
            workdir / "skipped_images.txt",
        )


def _setup(
    config: mlc.ConfigDict,
    workdir: epath.Path,
    t_start: float,
    mesh: Any,
    data: TargetData,
    model: Any,
    plan: Plan,
    base: dict[str, Any],
) -> tuple[_Run, State]:
    """The run restored from its newest usable checkpoint, compiled for its first step."""
    checkpoints = ckpt.RunCheckpoints(
        workdir / "checkpoints", keep=config.keep_checkpoints, save_every=config.checkpoint_every
    )
    policy = guard.check_policy(config.get("nonfinite", "stop"))
    model = plan.model if plan.model is not None else model  # PEFT: applies its own subtrees
    start_step, state, meta = _restore(config, workdir, mesh, plan, checkpoints)
    early = EarlyStopping(
        config.early_stopping_patience,
        meta,
        config.min_delta,
        workdir,
        min_step=config.get("stop_min_steps", 0),
        ties_on_loss=config.get("best_ties_on_val_loss", False),
    )
    writer = MetricWriter(workdir)
    writer.truncate_after(start_step)
    run = _Run(
        config=config,
        workdir=workdir,
        t_start=t_start,
        mesh=mesh,
        data=data,
        model=model,
        plan=plan,
        base=base,
        policy=policy,
        checkpoints=checkpoints,
        early=early,
        writer=writer,
        start_step=start_step,
        eval_steps=_eval_steps(model, mesh),
        batches=data.train_batches(config, start_step),
    )
    if start_step < config.total_steps:
        run.batch = sharding.shard_batch(next(run.batches), mesh)
    # A resume at a stage boundary starts the new stage: its optimizer, from a fresh state.
    new_stage = plan.stage_at(max(start_step - 1, 0)) != plan.stage_at(start_step)
    stage_step = start_step if new_stage else max(start_step - 1, 0)
    state = _enter_stage(run, state, stage_step, new_stage, "param_groups.txt")
    run.bar = _progress(config.total_steps, start_step, config.progress)
    if run.bar is None:
        run.progress_line = guard.ProgressLine(config.total_steps, start_step)
    run.skipped_steps = int(meta.get("skipped_steps", 0))
    return run, state


def _summarize(run: _Run, state: State, step: int, train_time: float) -> dict[str, Any]:
    """summary.json of a finished run: the reported weights evaluated, then what the
    strategy's finish adds (WiSE-FT's curve), calibration and shifts."""
    config, checkpoints, early = run.config, run.checkpoints, run.early
    checkpoints.wait()
    checkpoints.close()
    early.prune()
    # eval_test=False (sweep trials): the test split is not read; the study evaluates only the
    # trial chosen on validation, from its checkpoint (jtl.study.sweep).
    splits = ("val", "test") if config.eval_test else ("val",)
    kept: dict[str, list] = {split: [] for split in splits}
    variables = _eval_variables(state)
    final = {split: run.evaluate_split(variables, split, kept[split]) for split in splits}
    final.setdefault("test", {"loss": None, "accuracy": None})
    if run.start_step < config.total_steps and config.eval_test:
        test = final["test"]
        run.writer.write(step, "test", loss=test["loss"], accuracy=test["accuracy"])
    run.writer.close()
    n_trainable, n_frozen = _count(run.plan.variables["params"], run.mask)
    summary = {
        **run.base,
        "steps": int(config.total_steps),
        "test_accuracy": final["test"]["accuracy"],
        "test_loss": final["test"]["loss"],
        "val_accuracy": final["val"]["accuracy"],
        "val_loss": final["val"]["loss"],
        "steps_run": int(step),
        "images_seen": int(step * config.batch_size),
        **early.meta(),
        **early.summary(config, step, len(run.data.train_idx)),
        "trainable_params": n_trainable,
        "frozen_params": n_frozen,
        "flops_per_step": run.flops_log[-1] if run.flops_log else None,
        **costs.cost_fields(state["opt_state"], checkpoints.directory / str(step)),
        "train_time_s": train_time,
        "resumed_from_step": run.start_step,
        "diverged": False,
        "skipped_steps": run.skipped_steps,
        **run.plan.info,
    }
    _finish_strategy(run, state, splits, kept, summary)
    summary["wall_time_s"] = time.time() - run.t_start
    if jax.process_index() == 0:
        groups = json.dumps(groups_to_json(run.groups), indent=2)
        (run.workdir / "param_groups.json").write_text(groups)
    return summary


def _finish_strategy(
    run: _Run, state: State, splits: tuple[str, ...], kept: dict[str, list], summary: dict
) -> None:
    """Adds the strategy's finish (e.g. WiSE-FT's ensembles) to `summary`, then calibration and
    shifts of the weights the run reports (the same ones as its accuracy)."""
    extra = run.plan.finish(sharding.to_host(state), run.evaluate_split, splits)
    _save_finish_weights(run.workdir, extra.pop("finish_weights", {}))
    reported = _eval_variables(state)
    if extra:  # keep the trained model's own numbers next to what the strategy reports
        summary["trained_val_accuracy"] = summary["val_accuracy"]
        summary["trained_test_accuracy"] = summary["test_accuracy"]
        if extra.get("reported_variables") is not None:  # e.g. WiSE-FT's chosen ensemble
            reported = sharding.replicate(extra["reported_variables"], run.mesh)
            kept = {split: [] for split in splits}
            for split in splits:
                run.evaluate_split(reported, split, kept[split])
    extra.pop("reported_variables", None)
    summary.update(extra)
    summary.update(calibration.summary_fields({k: kept_arrays(v) for k, v in kept.items()}))
    if run.data.shifts and run.config.eval_test:
        t = float(summary.get("temperature") or 1.0)
        summary["shifts"] = evaluate_shifts(run.evaluate_split, reported, run.data, t)


def train(config: mlc.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Runs (or resumes) one training run; returns the summary also written to summary.json."""
    t_start = time.time()
    # SIGTERM / SIGINT: finish the step in flight, checkpoint it, stop (jtl.runtime.preemption).
    # Active from the start: a signal during data loading, a probe stage or compilation only
    # sets the flag, and the loop checkpoints at its first step and exits 75 (not 143).
    with preemption.Preemption() as preempt:
        config, workdir = _prepare_workdir(config, workdir)
        if (done := run_summary.read(workdir)) is not None:  # this config's run, finished
            logging.info("%s: finished already; its summary.json is kept", workdir)
            return dict(done)  # re-summarizing would overwrite its wall time and numbers
        mesh = sharding.make_mesh()
        config, data = _load_data(config, mesh)
        model = build_model(config, data.num_classes)
        variables = _init_variables(model, config, data.example_inputs())
        base = _base_summary(config, data)
        _describe_workdir(config, workdir, data, base)
        plan = plan_strategy(config, model, variables, data)
        if isinstance(plan, ProbePlan):  # no SGD steps: the plan's fit is the whole run
            summary = {**base, **plan.fit(), "wall_time_s": time.time() - t_start}
            _write_summary(workdir, summary)
            return summary  # finished: a signal during the fit changes nothing
        run, state = _setup(config, workdir, t_start, mesh, data, model, plan, base)
        t_train = time.time()
        state, step = _loop(run, state, preempt)
    if run.bar is not None:
        run.bar.close()
    summary = _summarize(run, state, step, time.time() - t_train)
    _write_summary(workdir, summary)
    if preempt.requested:  # asked to stop during the last step: done, but tell the caller
        raise preemption.Preempted(step, preempt.signal_name or "SIGTERM")
    return summary
