"""A config as a record: its fingerprint and the diff against a saved config.json.

Why: a workdir resumes only the same experiment, and a study reuses only runs of the same
config; both compare what was recorded with what is asked, field by field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import ml_collections as mlc

from jtl.config.cadence import resolve_cadences
from jtl.config.schema import base_config


def to_dict(config: mlc.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json())


def fingerprint(config: mlc.ConfigDict, ignore: Sequence[str] = ("progress", "cpu_devices")) -> str:
    """Hash of everything that changes results: a workdir only resumes the same experiment."""
    d = to_dict(config)
    for k in ignore:
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}; empty dicts are leaves."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# What runs recorded before a field existed did, where that is not the field's default: such a
# record is the same experiment only where the new config asks for this value.
LEGACY_VALUES = {"strategy_args.probe_batch_stats": "source", "best_ties_on_val_loss": False}


def recorded_diff(
    before: dict[str, Any],
    new: dict[str, Any],
    defaults: dict[str, Any],
    ignore: Sequence[str] = (),
) -> list[str]:
    """Dotted keys where a recorded config (`before`) and `new` differ, both as nested dicts.

    A field jtl added after the record was written does not count while `new` holds its
    default (it cannot have changed what was recorded), so adding a field never orphans old
    results; or, for a field whose default changed what runs do, its `LEGACY_VALUES` entry.
    Keys whose first part is in `ignore` do not count either.
    """
    before, new, defaults = flatten(before), flatten(new), flatten(defaults)
    return [
        key
        for key in sorted(set(new) | set(before))
        if key.split(".")[0] not in ignore
        and before.get(key) != new.get(key)
        and not (
            key not in before
            and key in defaults
            and new.get(key) == LEGACY_VALUES.get(key, defaults[key])
        )
    ]


def config_diff(
    old: dict[str, Any],
    config: mlc.ConfigDict,
    ignore: Sequence[str] = ("progress", "cpu_devices"),
    unread: Sequence[str] = (),
    input_scale: str = "minus_one_one",
) -> list[str]:
    """Dotted keys where a saved `config.json` and `config` describe different experiments.

    `unread`: dotted keys the run never reads (another strategy's `strategy_args`), ignored.
    `input_scale`: what `config.input_scale` resolves to (`source_model.resolve_input_scale`:
    the config knows no checkpoint), for a saved config from before input scales existed.
    """
    before = {k: v for k, v in old.items() if not k.startswith("_")}
    # A workdir records steps: compare what this config's fractions resolve to.
    config = resolve_cadences(config)
    diff = recorded_diff(before, to_dict(config), to_dict(base_config()), ignore)
    diff = [k for k in diff if not any(k == u or k.startswith(u + ".") for u in unread)]
    if "input_scale" not in before:
        # Before input scales, every run fed [-1, 1]: the same experiment only where
        # `input_scale` still resolves to that (not for a torchvision or Lite0 source).
        same = input_scale == "minus_one_one"
        diff = sorted([k for k in diff if k != "input_scale"] + ([] if same else ["input_scale"]))
    return diff
