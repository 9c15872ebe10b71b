"""The target data set of a run: splits, the (nested) training subset, batches, input scale.

Built once per run as an image or a text data set; the trainer, the linear probe, strategies
(LP-FT's probe, adapters' shapes) and sweeps' test evaluation all read batches through it, so
they see the same subsets and the same input scale. `input_scale="auto"` takes the scale the
source model expects from its own description (`import.json` / `model.json`), read here as
plain JSON so the data layer needs nothing above it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from absl import logging
from etils import epath

from jtl.data import pipeline, registry, subsets
from jtl.data import text as text_data
from jtl.errors import DataError

SHIFT = "shift:"  # eval_batches split prefix for `eval_shifts` data sets


class TargetData:
    """The target data set with its validation split and (nested) training subset resolved."""

    def __init__(self, config: mlc.ConfigDict) -> None:
        self.dataset = registry.load(
            config.dataset,
            data_dir=config.data_dir or None,
            skip_bad_images=bool(config.get("skip_bad_images", False)),
        )
        labels = self.dataset.labels("train")
        train_idx, self.val_idx = subsets.train_val_split(
            labels, config.val_fraction, seed=config.data_seed
        )
        per_class = config.train_per_class or None
        fraction = None if per_class else config.train_fraction
        self.train_idx = subsets.nested_subset(
            labels, train_idx, fraction=fraction, per_class=per_class, seed=config.data_seed
        )
        if config.num_folds:
            if not 0 <= config.fold < config.num_folds:
                raise ValueError(f"fold={config.fold} must be in [0, num_folds={config.num_folds})")
            folds = subsets.kfold_splits(
                labels, self.train_idx, config.num_folds, seed=config.data_seed
            )
            self.train_idx, self.val_idx = folds[config.fold]
        self.test_idx = np.arange(len(self.dataset.splits["test"]))
        if config.get("eval_test", True):  # a sweep trial never reads the test split
            _warn_untested_classes(self.dataset, labels[self.train_idx])
        self.image_size = config.image_size
        self.channels = config.channels
        self.input_scale = resolve_input_scale(config)
        # Text (e.g. austen): batches of token arrays instead of images; see jtl.data.text.
        self.text = self.dataset.modality == "text"
        self.seq_len = int(config.seq_len or 0)
        self._fitted_eval: dict[str, pipeline.FittedSource] = {}
        self.shifts = self._load_shifts(config)

    def _load_shifts(self, config: mlc.ConfigDict) -> dict[str, registry.Dataset]:
        """`eval_shifts` data sets by name, checked against the target and the source."""
        shifts = {}
        source_data = source_dataset(config.init.checkpoint) if config.init.checkpoint else None
        for name in config.get("eval_shifts", ()):
            if name == config.dataset:
                raise DataError(f"eval_shifts: {name!r} is the target itself, not a shift")
            if source_data is not None and name == source_data:
                raise DataError(
                    f"eval_shifts: {name!r} is the source's own training data "
                    f"({config.init.checkpoint} trained on it): not out of distribution for a "
                    "transfer run",
                    "name a data set the source never trained on",
                )
            ds = registry.load(name, data_dir=config.data_dir or None)
            mine, theirs = list(self.dataset.class_names), list(ds.class_names)
            if mine and theirs and mine != theirs:
                raise DataError(
                    f"eval_shifts: {name!r} has classes {theirs[:5]}..., the target "
                    f"{config.dataset!r} {mine[:5]}...: a shift keeps the label space",
                    "use classes(...) to select and order the shared classes",
                )
            if ds.num_classes != self.num_classes or ds.modality != self.dataset.modality:
                raise DataError(
                    f"eval_shifts: {name!r} has {ds.num_classes} {ds.modality} classes, the "
                    f"target {config.dataset!r} {self.num_classes}: a shift keeps the label space",
                    "use classes(...) to select and order the shared classes",
                )
            shifts[name] = ds
        return shifts

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def example_inputs(self) -> Any:
        """One model input (batch of 1) for `model.init`: an image, or a dict of token arrays."""
        if self.text:
            t = self.seq_len or self.dataset.image_shape[0]
            return {"input_ids": jnp.zeros((1, t), jnp.int32), "attention_mask": jnp.ones((1, t))}
        return jnp.zeros((1, self.image_size, self.image_size, self.channels), jnp.float32)

    def train_batches(self, config: mlc.ConfigDict, start_step: int) -> Iterator[dict]:
        if self.text:
            return text_data.train_batches(
                self.dataset.splits["train"],
                self.train_idx,
                batch_size=config.batch_size,
                seed=config.seed,
                seq_len=self.seq_len,
                start_step=start_step,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
        return pipeline.train_batches(
            self.dataset.splits["train"],
            self.train_idx,
            batch_size=config.batch_size,
            seed=config.seed,
            image_size=self.image_size,
            channels=self.channels,
            augment=config.augment,
            scale=self.input_scale,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def eval_batches(self, split: str, batch_size: int) -> Iterator[dict]:
        if split == "val":
            source, idx = self.dataset.splits["train"], self.val_idx
        elif split.startswith(SHIFT):  # "shift:NAME": that data set's test split
            source = self.shifts[split[len(SHIFT) :]].splits["test"]
            idx = np.arange(len(source))
        else:
            source, idx = self.dataset.splits[split], self.test_idx
        if not self.text and len(idx):
            # Resized once, kept in memory (when small): a run validates many times.
            if split not in self._fitted_eval:
                self._fitted_eval[split] = pipeline.FittedSource(
                    source, idx, self.image_size, self.channels
                )
            source, idx = self._fitted_eval[split], np.arange(len(idx))
        if self.text:
            return text_data.eval_batches(
                source,
                idx,
                batch_size=batch_size,
                seq_len=self.seq_len,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
        return pipeline.eval_batches(
            source,
            idx,
            batch_size=batch_size,
            image_size=self.image_size,
            channels=self.channels,
            scale=self.input_scale,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )


def _warn_untested_classes(dataset: registry.Dataset, train_labels: np.ndarray) -> None:
    """A class the run trains on but the test split never shows cannot be measured: say so."""
    if dataset.modality != "image" and not hasattr(dataset.splits["test"], "labels"):
        return
    missing = sorted(set(np.unique(train_labels)) - set(np.unique(dataset.labels("test"))))
    if missing:
        names = dataset.class_names or [str(i) for i in range(dataset.num_classes)]
        logging.warning(
            "%d class(es) have training examples but none in the test split of %s: %s",
            len(missing),
            dataset.name,
            ", ".join(names[int(c)] for c in missing[:10]),
        )


def source_dataset(directory: Any) -> str | None:
    """The data set a trained source ran on (its model.json or config.json); None for
    imports and unreadable directories."""
    meta = self_description(directory) or {}
    if meta.get("dataset"):
        return str(meta["dataset"])
    d = epath.Path(directory)
    d = d.parent if d.name == "checkpoints" else d
    if (d / "config.json").exists():
        return json.loads((d / "config.json").read_text()).get("dataset")
    return None


def resolve_input_scale(config: mlc.ConfigDict) -> str:
    """`input_scale`, with "auto" read from the source (`init.checkpoint`), else [-1, 1]."""
    scale = config.get("input_scale", "auto")
    if scale != "auto":
        return scale
    if config.init.checkpoint:
        return source_input_scale(config.init.checkpoint)
    return "minus_one_one"


def preprocess_for_model(model: str) -> str:
    """The input recipe of an import that did not record one (by model name)."""
    if model.startswith("resnet"):
        return "torchvision"
    if model.startswith("efficientnet_lite"):
        return "lite0"
    if model in ("bert", "minilm_l6"):
        return "wordpiece"
    return "minus_one_one"


def scale_for(preprocess: str) -> str:
    """The input scale that goes with an import's `preprocess` recipe."""
    return preprocess if preprocess in ("torchvision", "lite0") else "minus_one_one"


def self_description(directory: Any) -> dict[str, Any] | None:
    """A checkpoint directory's `import.json` (imports, exports) or `model.json` (runs)."""
    directory = epath.Path(directory)
    # `init.checkpoint` may name the run or import itself, or its `checkpoints/` directory.
    for d in (directory, directory.parent) if directory.name == "checkpoints" else (directory,):
        for name in ("import.json", "model.json"):
            if (d / name).exists():
                return json.loads((d / name).read_text())
    return None


def source_input_scale(directory: str | Path) -> str:
    """The input scale a checkpoint directory's model expects (minus_one_one if unrecorded)."""
    meta = self_description(directory)
    if meta is None:
        return "minus_one_one"
    return meta.get("input_scale") or scale_for(
        meta.get("preprocess") or preprocess_for_model(meta["model"])
    )
