"""Text classification data: Jane Austen passages, and token batches for the one trainer.

The `austen` task: which of Jane Austen's six novels a passage comes from. Passages are built
from the R character vectors of Debian `r-cran-janeaustenr` (one element per printed line):

- front matter before the first `CHAPTER`/`VOLUME` heading is dropped (titles, "By Jane
  Austen", an advertisement), as are the headings themselves and closing `THE END`/`FINIS` lines:
  they name or format the novel rather than show its prose;
- consecutive non-empty lines are joined until a passage holds at least `PASSAGE_WORDS` (48)
  words, so passages are whole lines of 48-60 words (about 60-80 WordPiece tokens, which fits
  the 128-token limit all-MiniLM-L6-v2 was trained with, and mostly fits 64);
- a chapter heading closes the current passage (kept if it has half the words, else dropped).

Split (deterministic, no seed): each novel's passages are cut into contiguous blocks of
`SPLIT_BLOCK` (20) passages, about 1000 words or three printed pages, and every fifth block
(block index % 5 == 2) is test, the rest train: 20% test, drawn evenly through each novel.
Why blocks and not a random split of passages: neighbouring passages share the scene, the
characters present and their wording; a random split would put most test passages between two
train passages of the same scene and measure near-duplicate recall instead of recognizing a
novel. (Character names stay a strong cue either way: that is the task.) The trainer's own
validation split is a random part of train and so is optimistic next to test.

Stored per passage: `text` (UTF-8), and `input_ids`/`attention_mask` int32 [128] from
all-MiniLM-L6-v2's tokenizer (`[CLS] ... [SEP]`, lowercased WordPiece, padded with 0).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from jtl.data import pipeline

PASSAGE_WORDS = 48
SPLIT_BLOCK = 20
TEST_EVERY = 5  # block k is test when k % TEST_EVERY == TEST_BLOCK
TEST_BLOCK = 2
MAX_LEN = 128

_HEADING = re.compile(r"^\s*(chapter|volume)\b", re.IGNORECASE)
_CLOSING = re.compile(r"^\s*(the end|finis)\s*\.?\s*$", re.IGNORECASE)


def novel_passages(lines: Sequence[str], words: int = PASSAGE_WORDS) -> list[str]:
    """A novel's lines -> passages of >= `words` words (whole lines; see the module docstring)."""
    start = next((i for i, line in enumerate(lines) if _HEADING.match(line)), 0)
    passages: list[str] = []
    current: list[str] = []
    count = 0

    def close(min_words: int) -> None:
        nonlocal current, count
        if count >= min_words:
            passages.append(" ".join(current))
        current, count = [], 0

    for line in lines[start:]:
        line = " ".join(line.split())
        if not line or _CLOSING.match(line):
            continue
        if _HEADING.match(line):
            close(words // 2)
            continue
        current.append(line)
        count += len(line.split())
        if count >= words:
            close(words)
    close(words // 2)
    return passages


def block_split(n: int, block: int = SPLIT_BLOCK) -> np.ndarray:
    """Boolean test mask over `n` passages in reading order: every fifth block of `block`."""
    return (np.arange(n) // block) % TEST_EVERY == TEST_BLOCK


def austen_splits(
    novels: dict[str, list[str]], words: int = PASSAGE_WORDS
) -> dict[str, tuple[list[str], np.ndarray]]:
    """`{"train": (texts, labels), "test": (texts, labels)}`; label = index of the novel."""
    out: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    for label, lines in enumerate(novels.values()):
        passages = novel_passages(lines, words)
        test = block_split(len(passages))
        for text, is_test in zip(passages, test, strict=True):
            texts, labels = out["test" if is_test else "train"]
            texts.append(text)
            labels.append(label)
    return {k: (t, np.asarray(y, np.int64)) for k, (t, y) in out.items()}


# ----------------------------------------------------------------------------- batches


class TextSource:
    """A text split in memory: token ids, masks, labels (and the passages for inspection)."""

    def __init__(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        labels: np.ndarray,
        texts: Sequence[str] | None = None,
    ) -> None:
        self.input_ids = np.asarray(input_ids, np.int32)
        self.attention_mask = np.asarray(attention_mask, np.int32)
        self.labels = np.asarray(labels, np.int64)
        self.texts = list(texts) if texts is not None else None

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        return {
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "label": int(self.labels[i]),
        }

    def __getitems__(self, indices: Any) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    def arrays(self, indices: Any, seq_len: int = 0) -> dict[str, np.ndarray]:
        """`{"input_ids", "attention_mask"}` int32 [n, T] and `label` int32 [n] of `indices`."""
        idx = np.asarray(indices, np.int64)
        ids, mask = truncate(self.input_ids[idx], self.attention_mask[idx], seq_len)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "label": self.labels[idx].astype(np.int32),
        }


def truncate(ids: np.ndarray, mask: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cuts [n, T] token arrays to `seq_len` (0: keep T); a cut row ends in its own `[SEP]`.

    The separator is read from each row (the token at its last unmasked position), so this
    works for any tokenizer's ids.
    """
    if not seq_len or seq_len >= ids.shape[1]:
        return ids, mask
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} leaves no room for [CLS] and [SEP]")
    lengths = mask.sum(axis=1)
    sep = ids[np.arange(len(ids)), np.maximum(lengths - 1, 0)]
    out_ids, out_mask = ids[:, :seq_len].copy(), mask[:, :seq_len].copy()
    cut = lengths > seq_len
    out_ids[cut, seq_len - 1] = sep[cut]
    return out_ids, out_mask


def train_batches(
    source: TextSource,
    indices: Sequence[int],
    *,
    batch_size: int,
    seed: int,
    seq_len: int = 0,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless process-local batches `{"input_ids", "attention_mask", "label"}` from `start_step`.

    The same contract as `pipeline.train_batches` (reshuffled each epoch from `seed`; batch k is
    a pure function of (seed, k), so resuming is exact; process p gets its slice of each global
    batch). No augmentation.
    """
    if len(indices) == 0:
        raise ValueError("the training subset is empty")
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0")
    offset, local = pipeline.local_slice(batch_size, process_index, process_count)
    indices = np.asarray(indices, np.int64)
    order = pipeline.EpochOrder(len(indices), seed)

    def batch_at(k: int) -> dict[str, np.ndarray]:
        positions = np.arange(k * batch_size + offset, k * batch_size + offset + local)
        return source.arrays(indices[order(positions)].tolist(), seq_len)

    batches = grain.MapDataset.range(start_step, pipeline.FOREVER).map(batch_at)
    options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
    return iter(batches.to_iter_dataset(options))


def eval_batches(
    source: TextSource,
    indices: Sequence[int],
    *,
    batch_size: int,
    seq_len: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over `indices` in order; the last batch is padded, with `mask` 0 on padding."""
    offset, local = pipeline.local_slice(batch_size, process_index, process_count)
    indices = np.asarray(indices, np.int64)
    num_batches = -(-len(indices) // batch_size)

    def batch_at(k: int) -> dict[str, np.ndarray]:
        pos = np.arange(k * batch_size + offset, k * batch_size + offset + local)
        valid = pos < len(indices)
        out = source.arrays(indices[np.where(valid, pos, 0)], seq_len)
        out["mask"] = valid.astype(np.float32)
        return out

    for k in range(num_batches):  # in-memory slicing: a plain loop beats thread start-up
        yield batch_at(k)


def tokenize_minilm(texts: Sequence[str], max_len: int = MAX_LEN) -> tuple[np.ndarray, np.ndarray]:
    """all-MiniLM-L6-v2 WordPiece ids and masks int32 [n, max_len] (padded to max_len)."""
    from jtl.data.tokenizer import tokenize

    ids, mask = [], []
    for s in range(0, len(texts), 1024):
        i, m = tokenize(texts[s : s + 1024], max_len=max_len, pad_to_max=True)
        ids.append(i)
        mask.append(m)
    return np.concatenate(ids), np.concatenate(mask)
