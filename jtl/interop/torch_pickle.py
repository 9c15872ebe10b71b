"""Read PyTorch state dicts into numpy without torch and without running pickled code.

Why: a `.pth` file is a pickle, and unpickling an untrusted pickle can execute anything
(`os.system`, ...). `read_torch_pickle` uses an unpickler whose `find_class` only resolves the
handful of globals a state dict needs (tensor/parameter rebuild functions, storage types,
`OrderedDict`) to *local* stand-ins; every other global raises `UnsafePickleError`. No torch
function is ever called, so torch need not be installed.

Both on-disk layouts are supported:

- zip (torch >= 1.6 default): `<archive>/data.pkl` whose persistent ids name storages stored
  as raw little-endian bytes in `<archive>/data/<key>`;
- legacy (`_use_new_zipfile_serialization=False`, older files): a stream of pickles — magic
  number, protocol version, sys info, the object, the list of storage keys — followed by each
  storage as an int64 element count and its raw bytes, in key-list order.

`load_state_dict(path)` dispatches on the suffix: `.safetensors` via `safetensors.numpy`,
anything else via `read_torch_pickle`.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import ml_dtypes
import numpy as np

from jtl.runtime.errors import MissingFileError, UserError

__all__ = [
    "UnsafePickleError",
    "load_state_dict",
    "read_torch_pickle",
]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage type name -> numpy dtype of one element.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "UntypedStorage": np.dtype(np.uint8),
}


class UnsafePickleError(UserError, pickle.UnpicklingError):
    """The pickle references a global outside the state-dict allow-list; nothing was executed."""


class _StorageType:
    """Stand-in for `torch.FloatStorage` etc.: only carries the element dtype."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """A storage named by a persistent id; `data` (1-D numpy array) is filled in later."""

    def __init__(self, key: str, dtype: np.dtype, numel: int) -> None:
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None
        self.view: tuple[_Storage, int] | None = None  # legacy storage views: (root, offset)

    def array(self) -> np.ndarray:
        if self.view is not None:
            root, offset = self.view
            return root.array()[offset : offset + self.numel]
        if self.data is None:
            raise ValueError(f"storage {self.key!r} was referenced but never read")
        return self.data


class _TensorRef:
    """A tensor to materialize once its storage bytes are known (legacy storages come last)."""

    def __init__(
        self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
    ) -> None:
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(f"tensor rebuilt from a non-storage {type(storage)}")
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)

    def materialize(self) -> np.ndarray:
        """Copy out the strided view, after checking it stays inside the storage."""
        base = self.storage.array()
        if len(self.size) != len(self.stride):
            raise ValueError(f"tensor size {self.size} and stride {self.stride} differ in rank")
        if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise ValueError(f"negative size/stride/offset {self.size} {self.stride}")
        if 0 in self.size:
            return np.zeros(self.size, dtype=base.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if last >= base.shape[0]:
            raise ValueError(
                f"tensor (offset {self.offset}, size {self.size}, stride {self.stride}) reads "
                f"past the end of storage {self.storage.key!r} ({base.shape[0]} elements)"
            )
        item = base.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :],
            shape=self.size,
            strides=tuple(s * item for s in self.stride),
            writeable=False,
        )
        return np.array(view, copy=True)


def _rebuild_tensor(storage: _Storage, offset: int, size: Any, stride: Any, *_: Any) -> _TensorRef:
    """Stand-in for `torch._utils._rebuild_tensor{,_v2}`; extra args (grad, hooks) ignored."""
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    """Stand-in for `torch._utils._rebuild_parameter{,_with_state}`: a parameter is its data."""
    return data


class _TensorClass:
    """Marker for `torch.Tensor` / `torch.nn.Parameter` as the `new_type` of a rebuild."""


def _rebuild_from_type_v2(func: Callable[..., Any], new_type: Any, args: Any, state: Any) -> Any:
    """Stand-in for `torch._tensor._rebuild_from_type_v2`: subclass state is dropped."""
    if not isinstance(new_type, _TensorClass):
        raise UnsafePickleError(f"tensor subclass {new_type!r} is not allowed")
    if func not in (_rebuild_tensor, _rebuild_parameter):
        raise UnsafePickleError(f"rebuild function {func!r} is not allowed")
    return func(*args)


def _encode(obj: str, encoding: str = "latin1") -> bytes:
    """Stand-in for `_codecs.encode` (protocol-2 pickles store bytes this way): latin1 only."""
    if encoding != "latin1" or not isinstance(obj, str):
        raise UnsafePickleError(f"_codecs.encode with {encoding!r} is not allowed")
    return obj.encode("latin1")


_TENSOR_CLASS = _TensorClass()

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TENSOR_CLASS,
    ("torch.nn.parameter", "Parameter"): _TENSOR_CLASS,
    ("_codecs", "encode"): _encode,
}
_ALLOWED.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})
_ALLOWED[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage")


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals (to local stand-ins) and collects storages by key."""

    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file, encoding="utf-8")
        self.source = source
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to load global '{module}.{name}': only PyTorch tensor "
                "state dicts are allowed (a pickle can run arbitrary code when unpickled)"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafePickleError(f"{self.source}: unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"{self.source}: bad storage type {storage_type!r}")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, int(numel))
        root = self.storages[key]
        view_metadata = pid[5] if len(pid) > 5 else None
        if view_metadata is None:
            return root
        view_key, offset, view_size = view_metadata
        view = _Storage(str(view_key), storage_type.dtype, int(view_size))
        view.view = (root, int(offset))
        return view


def _materialize(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    """Flattens nested dicts with '.'-joined keys; keeps tensors, drops other leaves."""
    if isinstance(obj, _TensorRef):
        out[prefix] = obj.materialize()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _materialize(v, f"{prefix}.{k}" if prefix else str(k), out)


def _load_zip(path: Path) -> dict[str, np.ndarray]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(
            f"{path}: truncated or corrupt PyTorch zip checkpoint (expected a zip archive with "
            f"a central directory holding <archive>/data.pkl): {e}"
        ) from e
    with zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise ValueError(f"{path}: expected one '<archive>/data.pkl' in the zip, got {pkls}")
        archive = pkls[0].rsplit("/", 1)[0]
        byteorder = "little"
        if f"{archive}/byteorder" in names:
            byteorder = zf.read(f"{archive}/byteorder").decode().strip()
        unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(pkls[0])), str(path))
        obj = unpickler.load()
        for key, storage in unpickler.storages.items():
            record = f"{archive}/data/{key}"
            try:
                raw = zf.read(record)
            except (KeyError, zipfile.BadZipFile, EOFError) as e:
                raise ValueError(f"{path}: storage record {record!r} is missing or bad: {e}") from e
            dtype = storage.dtype.newbyteorder("<" if byteorder == "little" else ">")
            nbytes = storage.numel * dtype.itemsize
            if len(raw) < nbytes:
                raise ValueError(
                    f"{path}: storage {record!r} has {len(raw)} bytes, expected {nbytes}"
                )
            storage.data = np.frombuffer(raw, dtype=dtype, count=storage.numel).astype(
                storage.dtype, copy=False
            )
    out: dict[str, np.ndarray] = {}
    _materialize(obj, "", out)
    return out


def _load_legacy(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        what = "the legacy magic number"
        try:
            magic = _RestrictedUnpickler(f, str(path)).load()
            if magic != LEGACY_MAGIC:
                raise ValueError(
                    f"{path}: not a PyTorch checkpoint (no zip archive, and the first pickle is "
                    f"{type(magic).__name__}, not the legacy magic number)"
                )
            what = "the protocol version"
            protocol = _RestrictedUnpickler(f, str(path)).load()
            if protocol != LEGACY_PROTOCOL:
                raise ValueError(f"{path}: unsupported legacy protocol version {protocol!r}")
            what = "the sys-info pickle"
            sys_info = _RestrictedUnpickler(f, str(path)).load()
            what = "the pickled state dict"
            unpickler = _RestrictedUnpickler(f, str(path))
            obj = unpickler.load()
            what = "the list of storage keys"
            keys = _RestrictedUnpickler(f, str(path)).load()
        except UnsafePickleError:
            raise
        except (EOFError, pickle.UnpicklingError, struct.error) as e:
            raise ValueError(
                f"{path}: truncated or corrupt legacy PyTorch checkpoint: could not read {what} "
                f"({type(e).__name__}: {e})"
            ) from e
        file_size = os.fstat(f.fileno()).st_size
        little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
        for key in keys:
            key = str(key)
            storage = unpickler.storages.get(key)
            if storage is None:
                raise ValueError(f"{path}: storage key {key!r} is not referenced by the object")
            start = f.tell()
            header = f.read(8)
            if len(header) < 8:
                raise ValueError(
                    f"{path}: truncated: expected an 8-byte element count for storage {key!r} "
                    f"at byte {start}, got {len(header)} bytes"
                )
            numel = struct.unpack("<q" if little else ">q", header)[0]
            dtype = storage.dtype.newbyteorder("<" if little else ">")
            nbytes = numel * dtype.itemsize
            left = file_size - f.tell()
            raw = f.read(nbytes) if 0 <= nbytes <= left else b""
            if numel < 0 or len(raw) < nbytes:
                raise ValueError(
                    f"{path}: truncated: storage {key!r} ({numel} x {storage.dtype}) needs "
                    f"{nbytes} bytes at byte {start + 8}, only {left} left"
                )
            if numel < storage.numel:
                raise ValueError(
                    f"{path}: storage {key!r} holds {numel} elements, the pickle says "
                    f"{storage.numel}"
                )
            storage.data = np.frombuffer(raw, dtype=dtype).astype(storage.dtype, copy=False)
    out: dict[str, np.ndarray] = {}
    _materialize(obj, "", out)
    return out


def read_torch_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a `torch.save`d state dict (zip or legacy format) as numpy arrays.

    Nested dicts are flattened with '.'-joined keys; non-tensor leaves (an epoch counter, ...)
    are dropped. bfloat16 tensors come back as `ml_dtypes.bfloat16` arrays. Raises
    `UnsafePickleError` for any global outside the allow-list, `ValueError` for a truncated or
    malformed file.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        return _load_zip(path)
    return _load_legacy(path)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """`.safetensors` via `safetensors.numpy`, anything else as a torch pickle.

    A file that cannot be read (truncated, corrupt, not a state dict) is one `UserError` naming
    it, whatever the parser raised; refused pickles stay `UnsafePickleError`.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"No such checkpoint file: {path}", "check the --from path")
    try:
        return _load_state_dict(path)
    except (UnsafePickleError, UserError, ImportError):
        raise
    except Exception as e:  # noqa: BLE001 - zip, pickle, struct, numpy and rust errors alike
        kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch"
        raise UnreadableWeightsError(
            f"{path} is not a readable {kind} state dict ({type(e).__name__}: {e})",
            "check that the file is complete (e.g. its sha256) and in the format its suffix says",
        ) from e


class UnreadableWeightsError(UserError, ValueError):
    """A weights file that is truncated, corrupt or not a state dict."""


def _load_state_dict(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError as e:
            raise ImportError(
                "Reading .safetensors needs the safetensors package: "
                ".venv/bin/pip install safetensors"
            ) from e
        return dict(load_file(str(path)))
    return read_torch_pickle(path)
