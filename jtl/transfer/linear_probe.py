"""The `linear_probe` strategy as a run: frozen backbone -> cached features -> linear classifiers.

Features are computed once per example and (checkpoint, data set, input size), and cached
under `$JTL_DATA_DIR/features/`: a run extracts only the training and validation examples it
uses (and the whole test split), and every later size, seed and fold of a study reuses them.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from absl import logging
from scipy.special import log_softmax

from jtl.data import pipeline
from jtl.data import text as text_data
from jtl.data.target import SHIFT
from jtl.evaluation import calibration, costs
from jtl.runtime import sharding
from jtl.runtime.paths import cache_dir
from jtl.transfer import probe
from jtl.weights import checkpoint as ckpt


def features_identity(variables: dict) -> str:
    """The weights that compute features, by content: sha256 of every variable but the head's.
    A retrained, moved or copied source is told apart (or recognised) by its weights, not by
    its path or file times; a random init is identified by its seed's weights alike."""
    trunk = {col: {k: v for k, v in tree.items() if k != "head"} for col, tree in variables.items()}
    return ckpt.state_digest(trunk)


def split_features(
    config: mlc.ConfigDict,
    model: Any,
    variables: dict,
    data: Any,
    split: str,
    indices: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of `indices` of `split` (default: every example), in that order.

    Cached per (source weights, data set, split): the cache grows by the examples asked for, so
    a 10-per-class probe extracts 10 per class, and later seeds, folds and sizes reuse them.
    `split` "shift:NAME" is the test split of the `eval_shifts` data set NAME."""
    dataset_name = config.dataset
    if split.startswith(SHIFT):
        dataset_name = split[len(SHIFT) :]
        source, split = data.shifts[dataset_name].splits["test"], "test"
    else:
        source = data.dataset.splits[split]
    indices = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64)
    text = getattr(data, "text", False)
    key = probe.cache_key(
        weights=features_identity(variables),
        model=config.model.to_dict(),
        dataset=dataset_name,
        split=split,
        n=len(source),
        size=config.image_size,
        channels=config.channels,
        **({"seq_len": config.seq_len} if text else {}),
        # Keys from before input scales existed stay valid for the default scale.
        **({"input_scale": data.input_scale} if data.input_scale != "minus_one_one" else {}),
    )
    path = (
        cache_dir()
        / "features"
        / f"{dataset_name.replace(':', '_').replace('/', '_').replace('|', '_')}-{split}-{key}.npz"
    )
    mesh = sharding.make_mesh()
    repl, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    fn = jax.jit(
        lambda v, x: model.apply(v, x, train=False, method="features"),
        in_shardings=(repl, batched),
        out_shardings=repl,
    )
    v = sharding.replicate(variables, mesh)
    if not v.get("batch_stats"):
        v = {"params": v["params"]}

    def shard(x: Any) -> Any:  # an image array, or a dict of token arrays
        if isinstance(x, dict):
            return sharding.shard_batch(x, mesh)
        return sharding.shard_batch({"x": x}, mesh)["x"]

    def compute(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = time.time()
        if text:
            batches = text_data.eval_batches(
                source,
                idx,
                batch_size=config.eval_batch_size,
                seq_len=config.seq_len,
            )
        else:
            batches = pipeline.eval_batches(
                source,
                idx,
                batch_size=config.eval_batch_size,
                image_size=config.image_size,
                channels=config.channels,
                scale=data.input_scale,
            )
        out = probe.extract_features(lambda vv, x: fn(vv, shard(x)), v, batches)
        logging.info(
            "Extracted %s features %s in %.1fs -> %s", split, out[0].shape, time.time() - t, path
        )
        return out

    return probe.cached_rows(path, indices, len(source), compute)


def fit_probe_on_target(
    config: mlc.ConfigDict, model: Any, variables: dict, data: Any
) -> tuple[probe.LinearClassifier, dict[str, Any]]:
    """Fits the configured probes on the training subset; picks the winner on validation."""
    t = time.time()
    need = np.concatenate([data.train_idx, data.val_idx])
    x_need, y_need = split_features(config, model, variables, data, "train", need)
    t_feat = time.time() - t
    n = len(data.train_idx)
    train, val = (x_need[:n], y_need[:n]), (x_need[n:], y_need[n:])
    t = time.time()
    kinds = tuple(config.strategy_args.probe_kinds)
    winner, fitted = probe.fit_probes(train, val, data.num_classes, kinds)
    info = {
        "probe": winner.kind,
        "probe_hyper": winner.hyper,
        "probe_val_accuracy": {k: p.val_accuracy for k, p in fitted.items()},
        "feature_time_s": t_feat,
        "probe_fit_time_s": time.time() - t,
        "feature_dim": int(x_need.shape[1]),
    }
    return winner, {"fitted": fitted, "val": val, **info}


def probe_summary(config: mlc.ConfigDict, model: Any, variables: dict, data: Any) -> dict[str, Any]:
    """Summary fields of a linear-probe run (test accuracy of the validation winner).

    No SGD state and no checkpoint: the probe lives in summary.json. A convex fit solved to
    its optimum, its L2 chosen on validation, counts as converged.
    """
    winner, info = fit_probe_on_target(config, model, variables, data)
    x_test, y_test = split_features(config, model, variables, data, "test")
    fitted = info.pop("fitted")
    logits = x_test @ winner.kernel + winner.bias
    logp = log_softmax(logits, axis=1)
    test_loss = float(-np.mean(logp[np.arange(len(y_test)), y_test]))
    x_val, y_val = info.pop("val")  # the features and labels the probe was chosen on
    val_logits = x_val @ winner.kernel + winner.bias
    fields = calibration.summary_fields({"val": (val_logits, y_val), "test": (logits, y_test)})
    shifts = {}
    for name in data.shifts:  # eval_shifts, at the temperature fitted on validation
        x, y = split_features(config, model, variables, data, f"{SHIFT}{name}")
        t = float(fields.get("temperature", 1.0))
        shifts[name] = calibration.shift_fields(x @ winner.kernel + winner.bias, y, t)
    return {
        **info,
        **fields,
        **({"shifts": shifts} if shifts else {}),
        "test_accuracy": winner.accuracy(x_test, y_test),
        "test_loss": test_loss,
        "val_accuracy": winner.val_accuracy,
        "probe_test_accuracy": {k: p.accuracy(x_test, y_test) for k, p in fitted.items()},
        "steps": 0,
        "steps_run": 0,
        "diverged": False,
        "images_seen": int(sum(len(s) for s in data.dataset.splits.values())),
        "trainable_params": int(info["feature_dim"] + 1) * data.num_classes,
        "frozen_params": int(sum(np.size(x) for x in jax.tree.leaves(variables["params"]))),
        "flops_per_step": None,
        **costs.cost_fields(None, None),
        "budget": "closed_form",
        "converged": True,
        "train_time_s": info["feature_time_s"] + info["probe_fit_time_s"],
    }
