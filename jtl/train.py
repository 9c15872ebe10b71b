"""The trainer: config -> data + model + optimizer -> jitted sharded steps -> checkpoints/metrics.

One code path for 1..N devices and 1..M hosts: `jax.jit` over a `data` mesh with params
replicated and batches sharded. A run restarted on the same workdir resumes from its latest
checkpoint (params, optimizer state, step; the data position and RNG are functions of the step)
and reaches the same final numbers as an uninterrupted run.
"""

from __future__ import annotations

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

from jtl import (
    calibration,
    config_check,
    costs,
    guard,
    preemption,
    run_summary,
    sharding,
    source_model,
)
from jtl import checkpoint as ckpt
from jtl import config as config_lib
from jtl.data import transforms
from jtl.data.pipeline import model_inputs
from jtl.data.target import SHIFT, TargetData
from jtl.dispatch import InFlight
from jtl.early_stopping import EarlyStopping, resolve_budget
from jtl.errors import DivergedError
from jtl.metrics import MetricWriter
from jtl.models import get_model
from jtl.optim import format_group_table, groups_to_json, make_optimizer, trainable_mask
from jtl.paths import as_path
from jtl.slim_checkpoint import absolute
from jtl.strategies import Plan, ProbePlan, plan_strategy, recorded_run_diff

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
    non-finite step keeps the previous state (see jtl.guard).
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
    diff = recorded_run_diff(json.loads(existing.read_text()), config)
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


def _atomic_write(path: epath.Path, text: str) -> None:
    """Write then rename: a kill mid-write leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


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
        _atomic_write(workdir / "summary.json", run_summary.dumps(summary))
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


def _diverged(
    workdir: epath.Path,
    base: dict[str, Any],
    metrics: dict[str, Any],
    step: int,
    policy: str,
    checkpoints: ckpt.RunCheckpoints,
    writer: MetricWriter,
    t_start: float,
    skipped: int | None = None,
    why: str = "",
) -> None:
    """Stops a diverged run: no checkpoint after `step`, summary.json says so, then raises."""
    what = guard.what_was_nonfinite(metrics)
    host = {k: float(np.asarray(jax.device_get(v))) for k, v in metrics.items()}
    writer.write(step, "train", **host)
    writer.close()
    checkpoints.wait()
    checkpoints.close()
    last = checkpoints.latest_step()
    summary = guard.diverged_summary(base, step, what, last, policy)
    summary["wall_time_s"] = time.time() - t_start
    if skipped is not None:
        summary["skipped_steps"] = int(skipped)
    if jax.process_index() == 0:
        _atomic_write(workdir / "summary.json", run_summary.dumps(summary))
    raise DivergedError(
        f"training diverged at step {step}: non-finite {what}{f' ({why})' if why else ''}; "
        "summary.json records it, "
        f"last finite checkpoint: {f'step {last}' if last else 'none'}",
        "lower --config.optim.lr, set --config.optim.clip_norm, or --config.nonfinite=skip to "
        "skip such steps",
        summary,
    )


# Long (335 lines): the trainer; issue 21 (open) makes it a short straight-down function.
def train(config: mlc.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Runs (or resumes) one training run; returns the summary also written to summary.json."""
    t_start = time.time()
    config_check.check(config)  # also for train() called from Python (studies, tests)
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
        _atomic_write(workdir / "config.json", json.dumps(cfg, indent=2) + "\n")

    mesh = sharding.make_mesh()
    sharding.check_batch_size(config.batch_size, mesh)
    data = TargetData(config)
    config = resolve_budget(config, len(data.train_idx))  # max_epochs / eval_every_epochs -> steps
    logging.info(
        "Data %s: %d train / %d val / %d test examples, %d classes",
        config.dataset,
        len(data.train_idx),
        len(data.val_idx),
        len(data.test_idx),
        data.num_classes,
    )
    model = build_model(config, data.num_classes)
    variables = _init_variables(model, config, data.example_inputs())
    base = {
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
    }
    if jax.process_index() == 0:  # the workdir describes its model (jtl predict, advise, export)
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
        _atomic_write(workdir / source_model.MODEL_JSON, json.dumps(meta, indent=2) + "\n")
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

    plan = plan_strategy(config, model, variables, data)
    if isinstance(plan, ProbePlan):  # no SGD steps: the plan's fit is the whole run
        summary = {**base, **plan.fit(), "wall_time_s": time.time() - t_start}
        _write_summary(workdir, summary)
        return summary
    model = plan.model if plan.model is not None else model  # PEFT: applies its own subtrees
    params = plan.variables["params"]
    frozen_at = plan.frozen_at or (lambda step: tuple(plan.optim.frozen))

    def optimizer_for(step: int) -> tuple[Any, Any, list]:
        optim = mlc.ConfigDict(plan.optim.to_dict())
        optim.frozen = tuple(frozen_at(step))
        tx, groups = make_optimizer(
            params, optim, config.total_steps, step_offset=plan.stage_start(step)
        )
        return tx, trainable_mask(params, optim), groups

    checkpoints = ckpt.RunCheckpoints(
        workdir / "checkpoints", keep=config.keep_checkpoints, save_every=config.checkpoint_every
    )
    policy = guard.check_policy(config.get("nonfinite", "stop"))

    def fresh_state(step: int) -> State:
        # The optimizer state in a checkpoint was built by the stage of the last step it finished.
        tx = optimizer_for(max(step - 1, 0))[0]
        return sharding.replicate(init_state(params, plan.variables["batch_stats"], tx), mesh)

    # The newest checkpoint that restores intact (older ones if it is corrupt, with a warning).
    slim = plan.checkpoint  # PEFT: checkpoints hold no frozen base weights (jtl.slim_checkpoint)

    def saved(s: State) -> State:
        return slim.strip(s) if slim is not None else s

    start_step, restored, meta = checkpoints.restore_usable(
        lambda s: ckpt.abstract_like(saved(fresh_state(s)))
    )
    if restored is not None and slim is not None:
        slim.check(meta, str(workdir))  # refuses a base that is not the one it trained on
        restored = sharding.replicate(slim.fill(restored), mesh)
    tx, mask, groups = optimizer_for(max(start_step - 1, 0))
    state = restored if start_step else fresh_state(0)
    if start_step:
        logging.info(
            "Resumed from step %d (stage %s) in %s", start_step, meta.get("stage"), workdir
        )
    early = EarlyStopping(
        config.early_stopping_patience,
        meta,
        config.min_delta,
        workdir,
        min_step=config.get("stop_min_steps", 0),
    )
    writer = MetricWriter(workdir)
    writer.truncate_after(start_step)
    repl, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    eval_step = jax.jit(make_eval_step(model), in_shardings=(repl, batched), out_shardings=repl)
    eval_logits = jax.jit(
        make_eval_step(model, logits=True), in_shardings=(repl, batched), out_shardings=repl
    )

    def evaluate_split(v: dict, split: str, keep: list | None = None) -> dict[str, float]:
        step_fn = eval_step if keep is None else eval_logits
        return evaluate(step_fn, v, data, split, config.eval_batch_size, mesh, keep)

    batches = data.train_batches(config, start_step)
    batch = sharding.shard_batch(next(batches), mesh) if start_step < config.total_steps else None

    def compile_step(tx: Any, mask: Any) -> tuple[Any, float | None]:
        t = time.time()
        step_fn = jit_train_step(model, tx, mask, plan, mesh, policy)
        compiled = step_fn.lower(state, batch).compile()
        flops = compiled_flops(compiled)  # per device: the SPMD program runs on each
        flops = flops * mesh.devices.size if flops is not None else None
        logging.info("Compiled train step in %.1fs; %.3g FLOPs/step", time.time() - t, flops or 0)
        return compiled, flops

    stage = plan.stage_at(start_step)
    if plan.stage_at(max(start_step - 1, 0)) != stage:
        tx, mask, groups = optimizer_for(start_step)
        state["opt_state"] = sharding.replicate(tx.init(sharding.to_host(state["params"])), mesh)
    _log_and_write(workdir, "param_groups.txt", format_group_table(groups))
    flops_log: list[float] = []
    compiled = None
    if batch is not None:
        compiled, flops = compile_step(tx, mask)
        flops_log.append(flops or 0.0)

    def eval_variables(s: State) -> dict:
        v = {"params": s["params"]}
        if s["batch_stats"]:
            v["batch_stats"] = s["batch_stats"]
        return v

    def meta_for(step: int) -> dict[str, Any]:
        return {
            "step": step,
            "stage": plan.stage_at(max(step - 1, 0)),
            "data": {"next_batch": step, "seed": config.seed},
            "fingerprint": config_lib.fingerprint(config),
            "skipped_steps": skipped_steps,
            **early.meta(),
            **({"base": slim.ref} if slim is not None else {}),
        }

    bar = _progress(config.total_steps, start_step, config.progress)
    inflight = InFlight()  # a bounded dispatch queue: unbounded ones deadlock on CPU devices
    progress_line = guard.ProgressLine(config.total_steps, start_step) if bar is None else None
    skipped_steps = int(meta.get("skipped_steps", 0))
    flags: list[Any] = []  # per-step finite flags since the last check (read at syncs only)
    pending: list[dict] = []
    t_train = time.time()
    step = start_step
    # SIGTERM / SIGINT: finish the step in flight, checkpoint it, stop (jtl.preemption).
    with preemption.Preemption() as preempt:
        while step < config.total_steps and not early.stopped:
            if plan.stage_at(step) != stage:
                # Gradual unfreezing: a new stage rebuilds the optimizer (fresh state) and the step.
                stage = plan.stage_at(step)
                tx, mask, groups = optimizer_for(step)
                state["opt_state"] = sharding.replicate(
                    tx.init(sharding.to_host(state["params"])), mesh
                )
                _log_and_write(
                    workdir, f"param_groups_stage{stage}.txt", format_group_table(groups)
                )
                compiled, flops = compile_step(tx, mask)
                flops_log.append(flops or 0.0)
            state, metrics = compiled(state, batch)
            inflight.push(metrics)
            step += 1
            flags.append(metrics.pop("finite"))
            pending.append(metrics)
            stop_now = _stop_requested(preempt, step, config.log_every)
            if (
                stop_now
                or step % config.log_every == 0
                or step % config.eval_every == 0
                or checkpoints.should_save(step)
                or step == config.total_steps
            ):  # points that sync anyway: look at the flags before logging, evaluating or saving
                bad = guard.bad_steps(flags, step - len(flags) + 1)
                flags = []
                if bad and policy == "skip":
                    skipped_steps += len(bad)
                    logging.warning("Skipped %d non-finite step(s), first %d", len(bad), bad[0])
                    if guard.too_many_skipped(skipped_steps, step, config.nonfinite_max_skipped):
                        _diverged(
                            workdir, base, pending[bad[-1] - step - 1], bad[-1], policy,
                            checkpoints, writer, t_start, skipped=skipped_steps,
                            why=f"skipped {skipped_steps} of {step} steps (more than "
                            f"nonfinite_max_skipped={config.nonfinite_max_skipped:g})",
                        )  # fmt: skip
                elif bad:
                    _diverged(
                        workdir,
                        base,
                        pending[bad[0] - step - 1],
                        bad[0],
                        policy,
                        checkpoints,
                        writer,
                        t_start,
                    )
            if step < config.total_steps:
                batch = sharding.shard_batch(next(batches), mesh)
            if step % config.log_every == 0 or step == config.total_steps:
                host = jax.device_get(pending)
                means = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
                writer.write(step, "train", **means)
                pending = []
                if bar is not None:
                    bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['accuracy']:.3f}")
                elif jax.process_index() == 0:
                    logging.info(progress_line.line(step, means["loss"], means["accuracy"]))
            if step % config.eval_every == 0 or step == config.total_steps:
                val = evaluate_split(eval_variables(state), "val")
                writer.write(step, "val", loss=val["loss"], accuracy=val["accuracy"])
                logging.info(
                    "step %d: val loss %.4f, accuracy %.4f", step, val["loss"], val["accuracy"]
                )
                if early.update(step, val["accuracy"], state):
                    logging.info("Early stop at step %d (best step %s)", step, early.best_step)
            last = step == config.total_steps or early.stopped
            if last:  # with early stopping, the best evaluated weights are what the run reports
                state = early.best_into(state, lambda x: sharding.replicate(x, mesh))
            if (checkpoints.should_save(step) or last) and not guard.all_finite(state):
                # The loss and gradient were finite, but the update overflowed: never save
                # (or name as the last finite one) a checkpoint holding non-finite weights.
                _diverged(
                    workdir, base, {"weights": jnp.nan}, step, policy, checkpoints, writer,
                    t_start, skipped=skipped_steps, why="the update overflowed",
                )  # fmt: skip
            if checkpoints.should_save(step) or last:
                early.persist()  # the best weights this checkpoint's metadata names
                writer.flush()  # remote workdirs: metrics.jsonl up to the checkpoint
                checkpoints.save(step, saved(state), meta_for(step))
            if bar is not None:
                bar.update(1)
            if stop_now and not last:
                if not guard.all_finite(state):  # never a non-finite resume point
                    _diverged(
                        workdir, base, {"weights": jnp.nan}, step, policy, checkpoints, writer,
                        t_start, skipped=skipped_steps, why="the update overflowed",
                    )  # fmt: skip
                if not checkpoints.should_save(step):  # else the cadence just saved this step
                    early.persist()
                    writer.flush()
                    checkpoints.save(step, saved(state), meta_for(step))
                _preempted(step, preempt, checkpoints, writer)
    if bar is not None:
        bar.close()
    train_time = time.time() - t_train
    checkpoints.wait()
    checkpoints.close()

    early.prune()
    # eval_test=False (sweep trials): the test split is not read; the study evaluates only the
    # trial chosen on validation, from its checkpoint (jtl.study.sweep).
    splits = ("val", "test") if config.eval_test else ("val",)
    kept: dict[str, list] = {split: [] for split in splits}
    final = {split: evaluate_split(eval_variables(state), split, kept[split]) for split in splits}
    final.setdefault("test", {"loss": None, "accuracy": None})
    if start_step < config.total_steps and config.eval_test:
        writer.write(step, "test", loss=final["test"]["loss"], accuracy=final["test"]["accuracy"])
    writer.close()
    n_trainable, n_frozen = _count(params, mask)
    summary = {
        **base,
        "steps": int(config.total_steps),
        "test_accuracy": final["test"]["accuracy"],
        "test_loss": final["test"]["loss"],
        "val_accuracy": final["val"]["accuracy"],
        "val_loss": final["val"]["loss"],
        "steps_run": int(step),
        "images_seen": int(step * config.batch_size),
        **early.meta(),
        **early.summary(config, step, len(data.train_idx)),
        "trainable_params": n_trainable,
        "frozen_params": n_frozen,
        "flops_per_step": flops_log[-1] if flops_log else None,
        **costs.cost_fields(state["opt_state"], checkpoints.directory / str(step)),
        "train_time_s": train_time,
        "resumed_from_step": start_step,
        "diverged": False,
        "skipped_steps": skipped_steps,
        **plan.info,
    }
    extra = plan.finish(sharding.to_host(state), evaluate_split, splits)
    _save_finish_weights(workdir, extra.pop("finish_weights", {}))
    reported = eval_variables(state)
    if extra:  # keep the trained model's own numbers next to what the strategy reports
        summary["trained_val_accuracy"] = summary["val_accuracy"]
        summary["trained_test_accuracy"] = summary["test_accuracy"]
        if extra.get("reported_variables") is not None:  # e.g. WiSE-FT's chosen ensemble
            reported = sharding.replicate(extra["reported_variables"], mesh)
            kept = {split: [] for split in splits}
            for split in splits:
                evaluate_split(reported, split, kept[split])
    extra.pop("reported_variables", None)
    summary.update(extra)
    # Calibration and shifts of the weights the run reports (the same ones as its accuracy).
    summary.update(calibration.summary_fields({k: kept_arrays(v) for k, v in kept.items()}))
    if data.shifts and config.eval_test:
        t = float(summary.get("temperature") or 1.0)
        summary["shifts"] = evaluate_shifts(evaluate_split, reported, data, t)
    summary["wall_time_s"] = time.time() - t_start
    if jax.process_index() == 0:
        (workdir / "param_groups.json").write_text(json.dumps(groups_to_json(groups), indent=2))
    _write_summary(workdir, summary)
    if preempt.requested:  # asked to stop during the last step: done, but tell the caller
        raise preemption.Preempted(step, preempt.signal_name or "SIGTERM")
    return summary
