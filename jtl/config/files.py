"""Config files by path: search roots, `configs/x.py:key=value,...` arguments, overrides.

`configs/x.py:arg` passes the string after `:` to `get_config(arg)` (big_vision's convention);
`--config.key=value` overrides then change single fields of the locked result.
"""

from __future__ import annotations

import ast
import importlib.util
import site
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections as mlc

from jtl.runtime.errors import ConfigError, ConfigTypeError, MissingFileError


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: mlc.ConfigDict, overrides: Sequence[str]) -> mlc.ConfigDict:
    """Applies `key.sub=value` strings; an unknown key fails with the list of valid ones."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key=value")
        key = key.removeprefix("--").removeprefix("config.")
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            if p not in node:
                raise ConfigError(f"unknown config key {key!r}: {p!r} is not one of {sorted(node)}")
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"unknown config key {key!r}: valid keys here are {sorted(node)}")
        value = _parse_value(raw)
        current = node[leaf]
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        if isinstance(current, tuple) and isinstance(value, str):  # one name: a 1-tuple
            value = (value,)
        if isinstance(current, str) and not isinstance(value, str):
            value = raw
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        try:
            node[leaf] = value
        except (TypeError, ValueError):
            kind = type(current).__name__
            raise ConfigTypeError(
                f"{key}={raw!r}: expected {kind} (like the default {current!r})"
            ) from None
    return config


def config_search_roots() -> list[Path]:
    """Where relative config paths are looked up, in order.

    The working directory; the source checkout this jtl runs from (editable installs); and the
    data directory a non-editable `pip install` put the shipped `configs/` in
    (`<prefix>/share/jtl`, see pyproject.toml), so `configs/studies/X.py` works from anywhere.
    """
    roots = [Path.cwd(), Path(__file__).resolve().parents[2]]
    for base in (sysconfig.get_path("data"), site.getuserbase()):
        if base:
            roots.append(Path(base) / "share" / "jtl")
    return list(dict.fromkeys(roots))


def resolve_config_path(path: str | Path) -> Path:
    """An existing config file for `path` (absolute, or relative to a search root)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [root / p for root in config_search_roots()]
    for c in candidates:
        if c.is_file():
            return c.absolute()
    where = ", ".join(str(c.parent) for c in candidates)
    raise MissingFileError(
        f"config file {str(path)!r} not found", f"looked in {where}; expected configs/NAME.py"
    )


def load_module(path: str | Path) -> Any:
    """Imports a config file by path (configs are files, not an installed package)."""
    file = resolve_config_path(path)
    module_spec = importlib.util.spec_from_file_location(f"jtl_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    assert module_spec.loader is not None
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(
            f"config file {file} has a syntax error at line {e.lineno}: {e.msg}",
            "fix the file (python -m py_compile FILE shows it)",
        ) from None
    return module


def load_config(spec: str, overrides: Sequence[str] = ()) -> mlc.ConfigDict:
    """`path/to/config.py[:arg]` -> locked ConfigDict with `overrides` applied."""
    path, _, arg = spec.partition(":")
    module = load_module(path)
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    return apply_overrides(config, overrides)


def parse_arg(arg: str | None, **defaults: Any) -> mlc.ConfigDict:
    """big_vision's `key=value,key2=value2` config argument, typed by the defaults."""
    out = mlc.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, raw = item.partition("=")
        if not sep:
            key, raw = item, "True"
        if key not in out:
            raise ConfigError(f"unknown config argument {key!r}; valid: {sorted(out)}")
        value = _parse_value(raw)
        out[key] = raw if isinstance(out[key], str) and not isinstance(value, str) else value
    return out
