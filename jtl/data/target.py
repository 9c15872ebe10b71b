"""The target data set of a run: splits, the (nested) training subset, batches, input scale.

Built once per run as an image or a text data set; the trainer, the linear probe, strategies
(LP-FT's probe, adapters' shapes) and sweeps' test evaluation all read batches through it, so
they see the same subsets and the same input scale. The data layer knows no checkpoint: the
input scale a source expects ("auto") comes resolved from `source_model.target_data`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from absl import logging

from jtl.data import pipeline, registry, subsets
from jtl.data import text as text_data
from jtl.runtime.errors import DataError

SHIFT = "shift:"  # eval_batches split prefix for `eval_shifts` data sets


class TargetData:
    """The target data set with its validation split and (nested) training subset resolved."""

    def __init__(
        self,
        config: mlc.ConfigDict,
        input_scale: str | None = None,
        source_dataset: str | None = None,
    ) -> None:
        """`input_scale`: resolved (`source_model.target_data` reads "auto" from the source's
        description; None: the config's own, [-1, 1] for "auto"). `source_dataset`: what the
        source trained on, refused as an `eval_shifts` data set (not out of distribution)."""
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
        scale = input_scale or config.get("input_scale", "auto")
        self.input_scale = "minus_one_one" if scale == "auto" else scale
        # Text (e.g. austen): batches of token arrays instead of images; see jtl.data.text.
        self.text = self.dataset.modality == "text"
        self.seq_len = int(config.seq_len or 0)
        self._fitted_eval: dict[str, pipeline.FittedSource] = {}
        self.shifts = self._load_shifts(config, source_dataset)

    def _load_shifts(
        self, config: mlc.ConfigDict, source_data: str | None
    ) -> dict[str, registry.Dataset]:
        """`eval_shifts` data sets by name, checked against the target and the source."""
        shifts = {}
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
        batch_size = eval_batch_size(len(idx), batch_size, jax.device_count())
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


def eval_batch_size(examples: int, batch_size: int, devices: int) -> int:
    """The evaluation batch for a split of `examples`: `batch_size`, or the split rounded up to
    a multiple of `devices` where that is smaller.

    Why: a small validation split (34 examples at 10 per class) padded to a 500-image batch
    spent 15x the forward pass a study cell's frequent validations need. The padded rows are
    masked either way, so the sums are those of the unpadded split.
    """
    return max(devices, min(batch_size, -(-examples // devices) * devices))


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
