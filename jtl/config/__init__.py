"""Run configuration: the schema every `configs/*.py` starts from, loading by path, and a
config as a record (fingerprint, diff). One import for all three: `from jtl import config`."""

from jtl.config.cadence import resolve_cadences
from jtl.config.files import (
    apply_overrides,
    config_search_roots,
    load_config,
    load_module,
    parse_arg,
    resolve_config_path,
)
from jtl.config.records import (
    LEGACY_VALUES,
    config_diff,
    fingerprint,
    flatten,
    recorded_diff,
    to_dict,
)
from jtl.config.schema import base_config

__all__ = [
    "LEGACY_VALUES",
    "apply_overrides",
    "base_config",
    "config_diff",
    "config_search_roots",
    "fingerprint",
    "flatten",
    "load_config",
    "load_module",
    "parse_arg",
    "recorded_diff",
    "resolve_cadences",
    "resolve_config_path",
    "to_dict",
]
