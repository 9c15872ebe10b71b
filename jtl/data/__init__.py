"""Data sets (offline tfds builders, user data, tfds catalog), splits and input pipelines."""

from jtl.data.augment import fit_image, fit_images, normalize
from jtl.data.augment import parse as parse_augment
from jtl.data.pipeline import eval_batches, load_arrays, train_batches
from jtl.data.registry import Dataset, UnknownDatasetError, load
from jtl.data.sources import OFFLINE_NAMES, MissingSourceError, cache_dir, fetch, is_fetched
from jtl.data.subsets import kfold_splits, nested_subset, train_val_split

__all__ = [
    "OFFLINE_NAMES",
    "Dataset",
    "MissingSourceError",
    "UnknownDatasetError",
    "cache_dir",
    "eval_batches",
    "fetch",
    "fit_image",
    "fit_images",
    "is_fetched",
    "kfold_splits",
    "load",
    "load_arrays",
    "nested_subset",
    "normalize",
    "parse_augment",
    "train_batches",
    "train_val_split",
]
