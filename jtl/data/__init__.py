"""Data sets (offline tfds builders, user data, tfds catalog), splits and input pipelines."""

from jtl.data.registry import Dataset, UnknownDatasetError, load
from jtl.data.sources import MissingSourceError, cache_dir, fetch

__all__ = ["Dataset", "MissingSourceError", "UnknownDatasetError", "cache_dir", "fetch", "load"]
