"""Optimizers, learning-rate schedules and big_vision-style parameter rules.

`make_optimizer(params, cfg, total_steps)` is the entry point; see `optimizers` for the
structure of the transformation and `rules` for how rules are matched and checked.
"""

from jtl.optim import network_rules, rules, schedules
from jtl.optim.optimizers import (
    DEFAULTS,
    OPTIMIZERS,
    GroupRow,
    format_group_table,
    global_norm_trainable,
    groups_to_json,
    make_optimizer,
    trainable_mask,
)
from jtl.optim.rules import match_rules, tree_paths
from jtl.optim.schedules import SCHEDULES, make_schedule

__all__ = [
    "DEFAULTS",
    "OPTIMIZERS",
    "SCHEDULES",
    "GroupRow",
    "format_group_table",
    "global_norm_trainable",
    "groups_to_json",
    "make_optimizer",
    "make_schedule",
    "match_rules",
    "network_rules",
    "rules",
    "schedules",
    "trainable_mask",
    "tree_paths",
]
