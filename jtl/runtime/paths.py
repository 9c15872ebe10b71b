"""Workdir paths through `etils.epath`: local directories and remote URIs (gs://, s3://) alike.

`pathlib.Path("gs://bucket/run")` collapses the `//` and `.absolute()` glues the cwd on, so the
trainer, metrics and checkpoints take their paths from here instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from etils import epath

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: Any) -> bool:
    """True for URIs like `gs://bucket/dir`: no appends, no local-only tools (TensorBoard)."""
    return bool(_URI.match(os.fspath(path) if not isinstance(path, str) else path))


def as_path(path: Any) -> epath.Path:
    """An `epath.Path`: local paths made absolute, remote URIs kept exactly as given."""
    p = epath.Path(path)
    return p if is_remote(p) else p.absolute()


def cache_dir() -> Path:
    """`$JTL_DATA_DIR`, default `~/.cache/jtl`: raw files, prepared tfds data, feature caches."""
    return Path(os.environ.get("JTL_DATA_DIR") or Path.home() / ".cache" / "jtl").expanduser()


def unique_tmp(path: Path) -> Path:
    """A temporary sibling of `path` for an atomic `replace`, unique to this process: two
    processes filling the same shared cache (parallel tests, a study's workers) never write
    into one file. Keeps `path`'s suffix (np.save/np.savez would append theirs otherwise)."""
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def write_text_atomic(path: Any, text: str) -> None:
    """Write a sibling, then rename over `path`: a kill mid-write leaves the old file or the
    new one, never half of one (summary.json, timing.json, caches read by later processes)."""
    tmp = unique_tmp(path)
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:  # a full disk or a kill: no half-written sibling left behind
        tmp.unlink(missing_ok=True)
        raise
