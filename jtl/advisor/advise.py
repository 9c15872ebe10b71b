"""`jtl advise`: predict, before any training, whether a pretrained model will help a target.

One forward pass of the source model over a stratified sample of the target gives features
and source-head probabilities; from them LogME, LEEP, NCE, H-score, leave-one-out k-NN and a
few-shot linear-probe accuracy. The same scores for a *randomly initialized* network of the
same architecture are the baseline: transfer can only help where the pretrained features beat
random ones. The recommendation combines that gap with the data size per class.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jtl import advisor as advisor_lib
from jtl.advisor import transferability
from jtl.data import pipeline, registry, subsets
from jtl.evaluation import run_summary
from jtl.transfer import probe
from jtl.weights import source_model

# What the fitted advisor reads besides the scores (jtl.advisor.model.FEATURES).
RECORD_KEYS = ("per_class", "num_classes", "source_accuracy")


@functools.partial(jax.jit, static_argnums=0)
def _features_and_logits(model: Any, v: dict, xb: jax.Array) -> tuple:
    """One compiled program per model (a static argument): a study scores many pairs."""
    return model.apply(v, xb, method="features"), model.apply(v, xb)


@functools.lru_cache(maxsize=2)
def _dataset(name: str) -> Any:
    """The target, loaded once for consecutive calls (a study scores every source on it)."""
    return registry.load(name)


@functools.lru_cache(maxsize=16)
def _source(checkpoint: str, example_shape: tuple[int, ...], seed: int, stamp: int) -> tuple:
    """The source model, its variables and a random init of the same architecture, loaded once
    per process: a study scores each source on every (target, size). `stamp` (the checkpoint's
    mtime) keys a rewritten checkpoint apart."""
    del stamp
    example = np.zeros(example_shape, np.float32)
    _, model, variables = source_model.load(checkpoint, example)
    init = jax.jit(lambda r: model.init(r, example))(jax.random.PRNGKey(seed))
    return model, variables, {k: v for k, v in init.items() if k in variables}


def _forward(model: Any, variables: dict, x: np.ndarray, batch: int = 256) -> tuple:
    """Features and source-head probabilities; each batch is zero-padded to a power of two
    (32 to `batch`), so the samples of every size share a handful of compiled programs."""
    feats, logits = [], []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        rows = min(batch, max(32, 1 << (len(xb) - 1).bit_length()))
        padded = np.concatenate([xb, np.zeros((rows - len(xb), *xb.shape[1:]), xb.dtype)])
        f, lg = _features_and_logits(model, variables, padded)
        feats.append(np.asarray(f)[: len(xb)])
        logits.append(np.asarray(lg)[: len(xb)])
    logits = np.concatenate(logits)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return np.concatenate(feats), probs / probs.sum(1, keepdims=True)


def _few_shot_probe(features: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Logistic-regression accuracy on a stratified half of the sample, fit on the other half."""
    fit_idx, eval_idx = subsets.train_val_split(labels, 0.5, seed=0)
    clf = probe.fit_logistic(
        features[fit_idx], labels[fit_idx], features[eval_idx], labels[eval_idx], num_classes
    )
    return clf.val_accuracy


def scores_for(
    model: Any, variables: dict, x: np.ndarray, y: np.ndarray, num_classes: int
) -> dict[str, float]:
    feats, probs = _forward(model, variables, x)
    out = transferability.all_scores(feats, y, probs)
    out["probe_accuracy"] = _few_shot_probe(feats, y, num_classes)
    return out


def recommend(
    pretrained: dict[str, float], random: dict[str, float], per_class: float, chance: float
) -> tuple[str, list[str]]:
    """A strategy and the reasons for it (a documented heuristic, not a trained predictor)."""
    reasons = []
    gap = pretrained["probe_accuracy"] - random["probe_accuracy"]
    logme_gap = pretrained["logme"] - random["logme"]
    reasons.append(
        f"few-shot probe accuracy {pretrained['probe_accuracy']:.3f} on pretrained features vs "
        f"{random['probe_accuracy']:.3f} on random features (chance {chance:.3f})"
    )
    reasons.append(f"LogME {pretrained['logme']:.3f} vs {random['logme']:.3f} for random features")
    reasons.append(f"{per_class:.0f} training examples per class")
    knn_gap = pretrained["knn_accuracy"] - random["knn_accuracy"]
    reasons.append(
        f"k-NN accuracy {pretrained['knn_accuracy']:.3f} vs {random['knn_accuracy']:.3f} for "
        "random features"
    )
    # Either classifier on the features (probe or k-NN) must beat random features by 2 points,
    # and the evidence (LogME) must agree: one noisy probe split alone does not decide.
    helpful = logme_gap > 0 and max(gap, knn_gap) > 0.02
    if not helpful:
        reasons.append(
            "pretrained features are no better than random ones here: expect no gain (or negative "
            "transfer) from this source"
        )
        return "scratch", reasons
    if pretrained["probe_accuracy"] >= 0.9 and per_class <= 100:
        reasons.append("features already separate the classes and data are few: probe first")
        return "linear_probe (then lp_ft if compute allows)", reasons
    if per_class <= 100:
        reasons.append("few examples per class: fine-tuning from the source should beat scratch")
        return "lp_ft", reasons
    reasons.append(
        "plenty of data: full fine-tuning converges faster; scratch may catch up given a longer "
        "schedule"
    )
    return "finetune_full", reasons


def source_facts(checkpoint: Path) -> dict[str, Any]:
    """The source's own test accuracy and data set (a trained run's summary.json); None for
    imports, which carry neither."""
    summary = run_summary.read(checkpoint) or {}
    value = summary.get("test_accuracy")
    return {
        "source_accuracy": float(value) if isinstance(value, int | float) else None,
        "source_dataset": summary.get("dataset"),
    }


def advise(
    checkpoint: str | Path,
    dataset: str,
    sample: int = 1000,
    image_size: int | None = None,
    seed: int = 0,
    per_class: int | None = None,
    advisor: str | Path | None = None,
) -> dict[str, Any]:
    """Scores of the source's features on a stratified sample of the target's train split.

    `per_class`: the labelled examples per class the user will train on; the sample is capped
    at that many per class, so the scores use no label the user would not have.
    `advisor`: the fitted advisor's JSON (default: the one jtl ships, `jtl.advisor.FITTED`);
    its prediction is `result["advice"]` (None when no fitted advisor exists).
    """
    checkpoint = Path(checkpoint).absolute()
    src = source_model.describe(checkpoint)
    if src.is_text:
        raise ValueError(f"jtl advise scores image sources; {checkpoint} holds a text model")
    size = image_size or src.image_size
    ds = _dataset(dataset)
    labels = ds.labels("train")
    if per_class:  # at most `per_class` labels of any class, and `sample` in all
        cap = max(1, min(int(per_class), sample // ds.num_classes))
        idx = subsets.nested_subset(labels, np.arange(len(labels)), per_class=cap, seed=seed)
    else:
        frac = min(1.0, sample / len(labels))
        idx = subsets.nested_subset(labels, np.arange(len(labels)), fraction=frac, seed=seed)
    x, y = pipeline.load_arrays(ds.splits["train"], idx, size, src.channels)
    x = source_model.rescale_batch(src, x)  # e.g. ImageNet mean/std for torchvision ResNets
    stamp = checkpoint.stat().st_mtime_ns
    model, variables, init = _source(str(checkpoint), (1, *x.shape[1:]), seed, stamp)
    pretrained = scores_for(model, variables, x, y, ds.num_classes)
    random = scores_for(model, dict(init), x, y, ds.num_classes)
    per_class = per_class or len(labels) / ds.num_classes
    strategy, reasons = recommend(pretrained, random, per_class, 1.0 / ds.num_classes)
    result = {
        "checkpoint": str(checkpoint),
        "dataset": dataset,
        "sample": int(len(y)),
        "per_class": float(per_class),
        "num_classes": int(ds.num_classes),
        **source_facts(checkpoint),
        "pretrained": pretrained,
        "random_init": random,
        "recommendation": strategy,
        "reasons": reasons,
    }
    fitted = advisor_lib.load(advisor)
    record = {**pretrained, "random_init": random, **{k: result[k] for k in RECORD_KEYS}}
    result["advice"] = advisor_lib.advice(fitted, record) if fitted else None
    return result
