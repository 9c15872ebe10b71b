"""Data set names -> prepared tfds data sources, one code path for offline and catalog data.

    load("mnist")               offline builder (raw files from a package registry)
    load("austen")              offline text: Jane Austen passages (token ids + text)
    load("npz:/data/my.npz")    a user's arrays
    load("folder:/data/imgs")   a user's ImageFolder tree
    load("cifar10")             any tfds catalog name (needs internet the first time)
    load("tfds:mnist")          force the catalog even where jtl has an offline builder
    load("mnist|classes(5-9)")  any of the above through data-set transforms (jtl.data.transforms)

Every form ends in `builder.download_and_prepare()` + `builder.as_data_source(split)` over
ArrayRecord files, read without TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from jtl.data import builders, sources, transforms
from jtl.runtime.errors import DataError
from jtl.runtime.paths import unique_tmp

NETWORK_TIMEOUT_S = 5.0  # the reachability check before a catalog download
# Splits up to this size are read into memory once (fast epochs); larger ones stream.
IN_MEMORY_BYTES = 1 << 30
tfds.disable_progress_bar()


class UnknownDatasetError(ValueError):
    """A data set name that is neither offline, user data, nor in the tfds catalog."""


class KeyedSource:
    """Random access to `{"image": uint8 HWC, "label": int}` records of any tfds data source."""

    def __init__(self, source: Any, image_key: str, label_key: str) -> None:
        self._source = source
        self._keys = (image_key, label_key)

    def __len__(self) -> int:
        return len(self._source)

    def _convert(self, record: dict) -> dict[str, Any]:
        image = np.asarray(record[self._keys[0]])
        if image.ndim == 2:
            image = image[..., None]
        return {"image": image, "label": int(record[self._keys[1]])}

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._convert(self._source[int(i)])

    def __getitems__(self, indices: Any) -> list[dict[str, Any]]:
        getitems = getattr(self._source, "__getitems__", None)
        records = (
            getitems(list(map(int, indices)))
            if getitems
            else [self._source[int(i)] for i in indices]
        )
        return [self._convert(r) for r in records]


class ArraySource:
    """A split held in memory: the fast path for the small data sets jtl studies run on."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[int(i)], "label": int(self.labels[int(i)])}

    def __getitems__(self, indices: Any) -> list[dict[str, Any]]:
        return [self[i] for i in indices]


def _read_all(source: KeyedSource, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for start in range(0, len(source), chunk):
        recs = source.__getitems__(range(start, min(start + chunk, len(source))))
        images.append(np.stack([r["image"] for r in recs]))
        labels.append(np.array([r["label"] for r in recs], np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _read_labels(source: Any, chunk: int = 4096) -> np.ndarray:
    """All labels of a split, in bulk reads (records carry images too, so this costs a pass)."""
    if isinstance(source, ArraySource):
        return np.asarray(source.labels, np.int64)
    n = len(source)
    parts = [
        np.array([r["label"] for r in source.__getitems__(range(s, min(s + chunk, n)))], np.int64)
        for s in range(0, n, chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _cached_arrays(
    source: KeyedSource, data_dir: Path, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """A split's arrays, decoded from ArrayRecord once and kept beside it as .npy files."""
    images_path = data_dir / f"jtl_arrays_{split}_images.npy"
    labels_path = data_dir / f"jtl_arrays_{split}_labels.npy"
    if images_path.exists() and labels_path.exists():
        return np.load(images_path), np.load(labels_path)
    images, labels = _read_all(source)
    for path, array in ((images_path, images), (labels_path, labels)):
        tmp = unique_tmp(path)
        np.save(tmp, array)
        tmp.replace(path)
    return images, labels


@dataclasses.dataclass
class Dataset:
    """A prepared data set: metadata plus random-access splits of `{"image", "label"}` records.

    Text data sets (`modality == "text"`) hold `jtl.data.text.TextSource` splits of
    `{"input_ids", "attention_mask", "label"}`; their `image_shape` is `(seq_len,)`.
    """

    name: str
    num_classes: int
    class_names: list[str]
    image_shape: tuple[int, ...]
    splits: dict[str, Any]
    builder: Any = None
    _labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    modality: str = "image"
    skipped_images: list[str] = dataclasses.field(default_factory=list)

    def labels(self, split: str) -> np.ndarray:
        """The split's int64 labels, read once (in bulk) and cached: for splits and subsets."""
        source = self.splits[split]
        if isinstance(source, ArraySource) or isinstance(
            getattr(source, "labels", None), np.ndarray
        ):
            return source.labels
        if split not in self._labels:
            self._labels[split] = _read_labels(source)
        return self._labels[split]


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    """A file check: `builder.is_prepared()` logs a misleading warning when it is not."""
    return (Path(builder.data_dir) / "dataset_info.json").exists()


def _builder_for(
    name: str, data_dir: Path, skip_bad_images: bool = False
) -> tfds.core.DatasetBuilder:
    if name.startswith("npz:"):
        return builders.npz_builder(name[4:])(data_dir=str(data_dir), file_format="array_record")
    if name.startswith("folder:"):
        cls = builders.folder_builder(name[7:], skip_bad_images, record_dir=data_dir)
        return cls(data_dir=str(data_dir), file_format="array_record")
    if name in builders.OFFLINE_BUILDERS:
        builder = builders.OFFLINE_BUILDERS[name](
            data_dir=str(data_dir), file_format="array_record"
        )
        # Raw files are only needed to prepare; a prepared data set loads without them.
        if not _is_prepared(builder) and not sources.is_fetched(name):
            raise sources.MissingSourceError(name)
        return builder
    catalog_name = name.removeprefix("tfds:")
    try:
        return tfds.builder(catalog_name, data_dir=str(data_dir), file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError as e:
        raise UnknownDatasetError(
            f"unknown data set {name!r}: not an offline jtl data set "
            f"({', '.join(sources.OFFLINE_NAMES)}) and not in the tfds catalog "
            f"({str(e).splitlines()[0]}). Accepted forms: an offline name, npz:/path/data.npz, "
            "folder:/path/to/images (class sub-folders), a tfds catalog name such as cifar10, or "
            "tfds:NAME to force the catalog"
        ) from None


def _supervised_keys(builder: tfds.core.DatasetBuilder) -> tuple[str, str]:
    keys = builder.info.supervised_keys
    if keys and isinstance(keys[0], str) and isinstance(keys[1], str):
        return keys[0], keys[1]
    features = builder.info.features
    if "image" in features and "label" in features:
        return "image", "label"
    raise ValueError(
        f"{builder.name} has no (image, label) supervised keys; jtl needs an image classification "
        "data set"
    )


def _text_split(builder: tfds.core.DatasetBuilder, split: str) -> Any:
    """A text split in memory, decoded from ArrayRecord once and cached beside it (.npz)."""
    from jtl.data.text import TextSource

    path = Path(builder.data_dir) / f"jtl_text_{split}.npz"
    if not path.exists():
        source = builder.as_data_source(split=split)
        records = source.__getitems__(list(range(len(source))))
        tmp = unique_tmp(path)
        np.savez(
            tmp,
            input_ids=np.stack([r["input_ids"] for r in records]),
            attention_mask=np.stack([r["attention_mask"] for r in records]),
            labels=np.array([r["label"] for r in records], np.int64),
            texts=np.array([bytes(r["text"]).decode("utf-8") for r in records]),
        )
        tmp.replace(path)
    with np.load(path) as f:
        return TextSource(f["input_ids"], f["attention_mask"], f["labels"], f["texts"].tolist())


def _load_text(name: str, builder: tfds.core.DatasetBuilder) -> Dataset:
    label_feature = builder.info.features["label"]
    names = list(label_feature.names)
    splits = {s: _text_split(builder, s) for s in ("train", "test") if s in builder.info.splits}
    seq_len = splits["train"].seq_len
    return Dataset(name, len(names), names, (seq_len,), splits, builder, modality="text")


def load(name: str, data_dir: str | Path | None = None, skip_bad_images: bool = False) -> Dataset:
    """Prepares (once) and opens a data set by name; see the module docstring for the forms.

    `skip_bad_images` (folder: data sets): leave unreadable files out instead of failing; the
    skipped files are in `Dataset.skipped_images`. A name with transforms (`base|t1|t2`) opens
    the base data set and passes every split through the same transforms.
    """
    base, steps = transforms.split_name(name)
    ds = _load_base(base, data_dir, skip_bad_images)
    if not steps:
        return ds
    if ds.modality != "image":
        raise transforms.TransformError(f"data set {name!r}: transforms apply to images only")
    splits, num_classes, class_names = transforms.apply(
        name, ds.splits, ds.labels, ds.num_classes, ds.class_names, ds.image_shape, steps,
        wrap_arrays=ArraySource,
    )  # fmt: skip
    return dataclasses.replace(
        ds, name=name, splits=splits, num_classes=num_classes, class_names=class_names, _labels={}
    )


def is_catalog(name: str) -> bool:
    """A tfds catalog name (not an offline jtl name, npz: or folder:)."""
    return not name.startswith(("npz:", "folder:")) and name not in builders.OFFLINE_BUILDERS


def check_network(name: str, url: str, data_dir: Any, timeout: float = NETWORK_TIMEOUT_S) -> None:
    """One short connection attempt to a download's host, so a compute node without internet
    fails in seconds with a hint, not after minutes of download retries."""
    host = urllib.parse.urlparse(url).hostname
    if not host:
        return
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        raise DataError(
            f"data set {name!r} is not prepared in {data_dir} and this machine cannot reach "
            f"the network to download it ({host}: {e})",
            f"prepare it where there is internet with `jtl data prepare {name}`, then point "
            "$JTL_DATA_DIR (its tfds/ folder) or $TFDS_DATA_DIR at the prepared data",
        ) from None


def _urls(spec: Any) -> list[str]:
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, dict):
        return [u for v in spec.values() for u in _urls(v)]
    if isinstance(spec, list | tuple):
        return [u for v in spec for u in _urls(v)]
    url = getattr(spec, "url", None)  # tfds.download.Resource
    return [url] if isinstance(url, str) else []


@contextlib.contextmanager
def _network_checked(name: str, data_dir: Any) -> Any:
    """While a builder prepares: its first download checks the network once (quickly)."""
    manager = tfds.download.DownloadManager
    originals = {m: getattr(manager, m) for m in ("download", "download_and_extract")}
    checked: set[str] = set()

    def wrap(method: Any) -> Any:
        def checked_method(self: Any, url_or_urls: Any, *args: Any, **kwargs: Any) -> Any:
            for url in _urls(url_or_urls):
                host = urllib.parse.urlparse(url).hostname or ""
                if host not in checked:
                    check_network(name, url, data_dir)
                    checked.add(host)
            return method(self, url_or_urls, *args, **kwargs)

        return checked_method

    for m, method in originals.items():
        setattr(manager, m, wrap(method))
    try:
        yield
    finally:
        for m, method in originals.items():
            setattr(manager, m, method)


def _prepare(
    name: str, builder: tfds.core.DatasetBuilder, data_dir: Path, skip_bad_images: bool
) -> tfds.core.DatasetBuilder:
    """Prepares once, and lets processes race to prepare the same data set.

    Why: studies run cells side by side (--parallel) and several studies share one cache; tfds
    writes into `incomplete.*` and renames it into place at the end, so the second process to
    finish fails with FileExistsError although the data it wanted is there. It then reads the
    winner's copy (a fresh builder), which is the same data: the builders are deterministic.
    """
    try:
        with _network_checked(name, builder.data_dir):
            builder.download_and_prepare()
    except FileExistsError:
        if not _is_prepared(builder):
            raise
        logging.info("%s: prepared by another process meanwhile; reading its copy", name)
        return _builder_for(name, data_dir, skip_bad_images)
    return builder


def _load_base(name: str, data_dir: str | Path | None, skip_bad_images: bool) -> Dataset:
    if not data_dir and is_catalog(name) and os.environ.get("TFDS_DATA_DIR"):
        data_dir = os.environ["TFDS_DATA_DIR"]
    data_dir = Path(data_dir) if data_dir else sources.cache_dir() / "tfds"
    builder = _builder_for(name, data_dir, skip_bad_images)
    try:
        builder = _prepare(name, builder, data_dir, skip_bad_images)
    except ImportError as e:
        if "tensorflow" not in str(e):
            raise
        raise RuntimeError(
            f"preparing {name!r} needs TensorFlow: its tfds builder encodes decoded images "
            "(tfds.features.Image), which tfds does with TensorFlow. Install it once with "
            "`pip install -e '.[catalog]'` (tensorflow-cpu; reading needs no TensorFlow "
            "afterwards), or save the data as "
            f"npz:/path.npz. ({e})"
        ) from e
    if "input_ids" in builder.info.features:
        return _load_text(name, builder)
    image_key, label_key = _supervised_keys(builder)
    label_feature = builder.info.features[label_key]
    class_names = list(getattr(label_feature, "names", []) or [])
    num_classes = int(getattr(label_feature, "num_classes", 0) or len(class_names))
    image_feature = builder.info.features[image_key]
    shape = tuple(d if d is not None else -1 for d in image_feature.shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    splits: dict[str, Any] = {}
    for split in ("train", "test"):
        if split not in builder.info.splits:
            continue
        source = KeyedSource(builder.as_data_source(split=split), image_key, label_key)
        if -1 not in shape and len(source) * int(np.prod(shape)) <= IN_MEMORY_BYTES:
            source = ArraySource(*_cached_arrays(source, Path(builder.data_dir), split))
        splits[split] = source
    if "train" not in splits:
        raise ValueError(
            f"data set {name!r} has no train split (splits: {list(builder.info.splits)})"
        )
    if "test" not in splits:
        logging.warning("%s has no test split; jtl holds out 20%% of train as test", name)
        train = splits["train"]
        mask = sources.stratified_split(_read_labels(train), 0.2, seed=0)
        if isinstance(train, ArraySource):
            splits = {
                "train": ArraySource(train.images[~mask], train.labels[~mask]),
                "test": ArraySource(train.images[mask], train.labels[mask]),
            }
        else:
            splits = {
                "train": _Subset(train, np.flatnonzero(~mask)),
                "test": _Subset(train, np.flatnonzero(mask)),
            }
    skipped = builder.skipped_images() if hasattr(builder, "skipped_images") else []
    return Dataset(name, num_classes, class_names, shape, splits, builder, skipped_images=skipped)


class _Subset:
    def __init__(self, source: Any, indices: np.ndarray) -> None:
        self._source, self._indices = source, indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._source[int(self._indices[int(i)])]

    def __getitems__(self, indices: Any) -> list[dict[str, Any]]:
        return [self[i] for i in indices]
