"""big_vision-style parameter rules: ordered `(regex, value)` pairs on `/`-joined param paths.

A path is the params tree's dict keys joined by `/`, e.g. `backbone/block3/conv1/kernel`.
Rules use `re.fullmatch` and the first matching rule wins. Rules are checked strictly because
a silently ignored rule is the worst failure a transfer experiment can have (a "frozen"
backbone that trains, a typo'd LR multiplier that does nothing):

- an invalid regex is an error;
- a rule whose regex matches no parameter at all is an error (it names the regex and shows
  example paths). A rule that matches parameters which an earlier rule already took is
  allowed, so rule lists compose (e.g. depth-wise LR rules followed by user overrides);
- without a `default`, every parameter must be matched (the error lists the uncovered paths).

Rule kinds used by `jtl.optim.make_optimizer`: `frozen` (list of regexes), `lr_mults` and
`wd_mults` (lists of `(regex, mult)`), `schedules` (list of `(regex, schedule kwargs)`).
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from jtl.runtime.errors import ConfigError

Rule = tuple[str, Any]

_NO_DEFAULT = object()


def _key_str(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
    """`(path, leaf)` for every leaf, in the tree's canonical (flatten) order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [("/".join(_key_str(k) for k in path), leaf) for path, leaf in flat]


def tree_paths(tree: Any) -> list[str]:
    """The `/`-joined path of every leaf, in the tree's canonical (flatten) order."""
    return [p for p, _ in leaves_with_paths(tree)]


def normalize_rules(rules: Any, *, what: str, with_values: bool = True) -> list[Rule]:
    """Rules as a list of `(regex, value)`; accepts tuples/lists from configs and JSON.

    With `with_values=False` (the `frozen` kind) the rules are bare regexes and get value True.
    """
    if rules is None:
        return []
    if isinstance(rules, str):
        shape = "a list of regexes" if not with_values else "a list of (regex, value) pairs"
        raise TypeError(f"{what}: expected {shape}, got the single string {rules!r}")
    out: list[Rule] = []
    for rule in rules:
        if not with_values:
            if not isinstance(rule, str):
                raise TypeError(f"{what}: expected a regex string, got {rule!r}")
            out.append((rule, True))
            continue
        if isinstance(rule, str) or not isinstance(rule, Sequence) or len(rule) != 2:
            raise TypeError(f"{what}: expected a (regex, value) pair, got {rule!r}")
        regex, value = rule
        if not isinstance(regex, str):
            raise TypeError(f"{what}: the regex of rule {rule!r} is not a string")
        out.append((regex, value))
    return out


def _compile(rules: list[Rule], what: str) -> list[re.Pattern[str]]:
    compiled = []
    for regex, _ in rules:
        try:
            compiled.append(re.compile(regex))
        except re.error as e:
            raise ConfigError(f"{what}: invalid regex {regex!r}: {e}") from None
    return compiled


def _examples(regex: str, paths: list[str], n: int = 6) -> list[str]:
    """Paths that look like `regex` (closest first), else the first few paths."""
    close = difflib.get_close_matches(regex, paths, n=n, cutoff=0.3)
    return close or paths[:n]


def assign(
    paths: Sequence[str], rules: Any, *, what: str, default: Any = _NO_DEFAULT
) -> list[tuple[Any, str | None]]:
    """For each path: `(value, regex of the rule that matched or None for the default)`.

    `default` may be a value or a callable `path -> value`. The checks described in the
    module docstring apply.
    """
    paths = list(paths)
    rules = normalize_rules(rules, what=what)
    patterns = _compile(rules, what)
    used = [False] * len(rules)
    out: list[tuple[Any, str | None]] = []
    uncovered: list[str] = []
    for path in paths:
        hit = None
        for i, pat in enumerate(patterns):
            if pat.fullmatch(path):
                used[i] = True
                if hit is None:
                    hit = i
        if hit is not None:
            out.append((rules[hit][1], rules[hit][0]))
        elif default is _NO_DEFAULT:
            uncovered.append(path)
        else:
            out.append((default(path) if callable(default) else default, None))
    for (regex, _), ok in zip(rules, used, strict=True):
        if not ok:
            raise ConfigError(
                f"{what}: rule {regex!r} matches no parameter (rules use re.fullmatch on "
                f"'/'-joined paths). Example paths: {', '.join(_examples(regex, paths))}"
            )
    if uncovered:
        shown = ", ".join(uncovered[:20]) + (" ..." if len(uncovered) > 20 else "")
        raise ConfigError(
            f"{what}: {len(uncovered)} parameter(s) match no rule and there is no default: "
            f"{shown}. Add a rule for them, e.g. a catch-all ('.*', value) at the end."
        )
    return out


def match_rules(params: Any, rules: Any, *, what: str, default: Any = None) -> Any:
    """A pytree like `params` holding, per leaf, the value of the first rule that fullmatches.

    `default=None` means every parameter must be covered; otherwise `default` (a value, or a
    callable `path -> value`) fills the unmatched leaves. `what` names the rule kind in errors.
    """
    paths = tree_paths(params)
    values = assign(paths, rules, what=what, default=_NO_DEFAULT if default is None else default)
    treedef = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_unflatten(treedef, [v for v, _ in values])


def check_mults(rules: list[Rule], *, what: str, allow_zero: bool) -> None:
    """Multipliers must be finite numbers > 0 (>= 0 where `allow_zero`)."""
    for regex, mult in rules:
        if isinstance(mult, bool) or not isinstance(mult, numbers.Real) or not math.isfinite(mult):
            raise TypeError(
                f"{what}: multiplier for {regex!r} must be a finite number, got {mult!r}"
            )
        if mult < 0 or (mult == 0 and not allow_zero):
            raise ConfigError(
                f"{what}: multiplier {mult!r} for {regex!r} must be > 0. To stop training a "
                "parameter, list its regex in `frozen` instead: frozen parameters get no update, "
                "no weight decay and no optimizer state, and their backward pass is compiled away."
            )


def frozen_flags(paths: Sequence[str], frozen: Any) -> list[tuple[bool, str | None]]:
    """Per path: (is frozen, the `frozen` regex that matched)."""
    rules = normalize_rules(frozen, what="frozen", with_values=False)
    return assign(paths, rules, what="frozen", default=False)


def as_mapping(value: Any, *, what: str) -> dict[str, Any]:
    """A plain dict from a dict / ConfigDict / schedule name string."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, Mapping):
        return dict(value)
    to_dict: Callable[[], dict[str, Any]] | None = getattr(value, "to_dict", None)
    if to_dict is not None:
        return dict(to_dict())
    raise TypeError(f"{what}: expected a mapping of schedule arguments, got {value!r}")
