"""Schedules over the network's depth, expressed as parameter rules so they compose with others.

`block_names` is the backbone's top-level submodule names in depth order, as returned by
`model.block_names()`: `["stem", "block1", ..., "blockN"]`. The stem is the first entry and
counts like any block everywhere in this module (it is the bottom level). A block's parameters
are matched by `backbone/<block>/.*`; the head by `head/.*`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from jtl.runtime.errors import ConfigError

HEAD_REGEX = "head/.*"


def block_regex(block: str) -> str:
    """The regex for all parameters of one backbone block."""
    return f"backbone/{re.escape(block)}/.*"


def _check_blocks(block_names: Sequence[str]) -> list[str]:
    blocks = list(block_names)
    if not blocks:
        raise ConfigError("block_names is empty")
    if len(set(blocks)) != len(blocks):
        raise ConfigError(f"block_names has duplicates: {blocks}")
    return blocks


def layerwise_lr_mults(
    block_names: Sequence[str], decay: float, head_regex: str = HEAD_REGEX
) -> list[tuple[str, float]]:
    """Layer-wise LR decay (BEiT / ELECTRA): head 1, top block `decay`, ..., stem `decay**depth`.

    `depth = len(block_names)`; lower layers hold more general features and move less.
    """
    blocks = _check_blocks(block_names)
    if not decay > 0:
        raise ConfigError(f"layer-wise decay must be > 0, got {decay!r} (to freeze, use `frozen`)")
    rules: list[tuple[str, float]] = [(head_regex, 1.0)]
    for level, block in enumerate(reversed(blocks), start=1):
        rules.append((block_regex(block), float(decay) ** level))
    return rules


def _split_levels(blocks: list[str], levels: int | Sequence[Sequence[str]]) -> list[list[str]]:
    """Blocks grouped into contiguous levels, bottom (stem) level first."""
    if isinstance(levels, int):
        if not 1 <= levels <= len(blocks):
            raise ConfigError(f"levels must be in 1..{len(blocks)}, got {levels}")
        base, extra = divmod(len(blocks), levels)
        out, start = [], 0
        for i in range(levels):  # the top levels get the extra blocks: the stem stays small
            size = base + (1 if i >= levels - extra else 0)
            out.append(blocks[start : start + size])
            start += size
        return out
    out = [list(level) for level in levels]
    flat = [b for level in out for b in level]
    if flat != blocks or any(not level for level in out):
        raise ConfigError(
            f"levels must split block_names {blocks} into non-empty contiguous groups in depth "
            f"order, got {out}"
        )
    return out


def discriminative_lr_mults(
    block_names: Sequence[str],
    factor: float = 2.6,
    *,
    levels: int | Sequence[Sequence[str]] | None = None,
    head_regex: str = HEAD_REGEX,
) -> list[tuple[str, float]]:
    """ULMFiT discriminative fine-tuning: each level down divides the LR by `factor`.

    Without `levels` every block is a level, which equals `layerwise_lr_mults(blocks,
    1 / factor)`. `levels` groups blocks: an int splits them into that many contiguous levels,
    or give the groups explicitly, bottom first (e.g. `[["stem", "block1"], ["block2"]]`).
    """
    blocks = _check_blocks(block_names)
    if not factor > 0:
        raise ConfigError(f"discriminative factor must be > 0, got {factor!r}")
    if levels is None:
        return layerwise_lr_mults(blocks, 1.0 / float(factor), head_regex)
    groups = _split_levels(blocks, levels)
    rules: list[tuple[str, float]] = [(head_regex, 1.0)]
    for level, group in enumerate(reversed(groups), start=1):
        mult = float(factor) ** -level
        rules.extend((block_regex(b), mult) for b in reversed(group))
    return rules


def freeze_first_k(block_names: Sequence[str], k: int) -> list[str]:
    """`frozen` regexes for the first `k` entries of `block_names`, the stem being the first.

    So `k=1` freezes the stem only, `k=2` the stem and block1, `k=len(block_names)` the whole
    backbone; `k=0` freezes nothing.
    """
    blocks = _check_blocks(block_names)
    if not 0 <= k <= len(blocks):
        raise ConfigError(f"k must be in 0..{len(blocks)} (blocks: {', '.join(blocks)}), got {k}")
    return [block_regex(b) for b in blocks[:k]]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One gradual-unfreezing stage: from `start_step` on, `frozen` blocks are frozen."""

    index: int
    start_step: int
    trainable_blocks: tuple[str, ...]  # backbone blocks trained in this stage (top first)
    frozen: tuple[str, ...]  # `frozen` regexes for this stage


@dataclasses.dataclass(frozen=True)
class UnfreezeSchedule:
    """The stages of gradual unfreezing; behaves like a sequence of `Stage`s."""

    stages: tuple[Stage, ...]
    stage_steps: int

    def __len__(self) -> int:
        return len(self.stages)

    def __getitem__(self, i: int) -> Stage:
        return self.stages[i]

    def __iter__(self):  # noqa: ANN204 - iterator over Stage
        return iter(self.stages)

    def stage_at(self, step: int) -> int:
        """The stage that trains step `step` (0-based): `min(step // stage_steps, last)`."""
        if step < 0:
            raise ConfigError(f"step must be >= 0, got {step}")
        return min(int(step) // self.stage_steps, len(self.stages) - 1)

    def frozen_at(self, step: int) -> list[str]:
        """The `frozen` regexes in force at step `step`."""
        return list(self.stages[self.stage_at(step)].frozen)


def gradual_unfreeze_stages(
    block_names: Sequence[str], stage_steps: int, *, blocks_per_stage: int = 1
) -> UnfreezeSchedule:
    """ULMFiT gradual unfreezing: stage 0 trains the head only, then every `stage_steps` steps
    `blocks_per_stage` more blocks are unfrozen from the top, until the stem trains too.

    With N blocks (stem included) and one block per stage there are N + 1 stages; the last one
    (from step `N * stage_steps` on) freezes nothing. A trainer rebuilds its optimizer when
    `stage_at(step)` changes and stores the stage in its checkpoints.
    """
    blocks = _check_blocks(block_names)
    if stage_steps <= 0:
        raise ConfigError(f"stage_steps must be > 0, got {stage_steps}")
    if blocks_per_stage <= 0:
        raise ConfigError(f"blocks_per_stage must be > 0, got {blocks_per_stage}")
    stages = []
    n_trainable, index = 0, 0
    while True:
        n_frozen = len(blocks) - n_trainable
        stages.append(
            Stage(
                index=index,
                start_step=index * stage_steps,
                trainable_blocks=tuple(reversed(blocks[n_frozen:])),
                frozen=tuple(block_regex(b) for b in blocks[:n_frozen]),
            )
        )
        if n_frozen == 0:
            break
        n_trainable = min(n_trainable + blocks_per_stage, len(blocks))
        index += 1
    return UnfreezeSchedule(stages=tuple(stages), stage_steps=int(stage_steps))
