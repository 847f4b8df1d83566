"""Turn events into the integer arrays the sequence encoder eats.

Training, evaluation and the worker's inference path all go through these
functions, so an event means the same thing offline and online.  Gaps are
computed on the sequence as given, *before* truncation to ``max_len``, so the
first kept event still knows how long ago its predecessor was.  No torch here:
this is plain numpy bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .vocab import ItemVocab, action_index

if TYPE_CHECKING:  # a type only: the worker's imports never reach the data package
    from .data.records import Event

__all__ = ["Batch", "SeqArrays", "from_arrays", "from_events", "from_tuples", "pad_batch", "split_input"]

NO_PREVIOUS = -1  # gap value of a user's first known event


@dataclass(frozen=True)
class SeqArrays:
    """One user's events as int64 arrays (item index, action index, gap in ms)."""

    items: np.ndarray
    actions: np.ndarray
    gaps: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    def window(self, start: int | None, stop: int | None) -> SeqArrays:
        """Slice all three arrays alike (gaps stay those of the full sequence)."""
        return SeqArrays(self.items[start:stop], self.actions[start:stop], self.gaps[start:stop])


@dataclass(frozen=True)
class Batch:
    """Right-padded [B, L] arrays plus the true lengths [B]."""

    items: np.ndarray
    actions: np.ndarray
    gaps: np.ndarray
    lengths: np.ndarray


def _gaps(ts: np.ndarray) -> np.ndarray:
    gaps = np.empty_like(ts)
    if len(ts):
        gaps[0] = NO_PREVIOUS
        # Out-of-order events (negative gaps) count as simultaneous.
        gaps[1:] = np.maximum(np.diff(ts), 0)
    return gaps


def _arrays(items: list[int], actions: list[int], ts: list[int]) -> SeqArrays:
    ts_arr = np.asarray(ts, dtype=np.int64)
    return SeqArrays(np.asarray(items, dtype=np.int64), np.asarray(actions, dtype=np.int64), _gaps(ts_arr))


def from_arrays(items: np.ndarray, actions: np.ndarray, ts: np.ndarray) -> SeqArrays:
    """Arrays of item rows, action indices and times (ms), oldest first (the worker's stored history)."""
    return SeqArrays(np.asarray(items, dtype=np.int64), np.asarray(actions, dtype=np.int64),
                     _gaps(np.asarray(ts, dtype=np.int64)))


def from_events(events: Sequence[Event], vocab: ItemVocab) -> SeqArrays:
    """Arrays of a chronological list of click events."""
    items = [vocab.index(e.item_id) for e in events]
    return _arrays(items, [action_index(e.action) for e in events], [e.ts for e in events])


def from_tuples(events: Sequence[tuple[str, str, int]], vocab: ItemVocab) -> SeqArrays:
    """Arrays of ``(item_id, action, ts_ms)`` tuples, oldest first (the worker's format)."""
    items = [vocab.index(e[0]) for e in events]
    return _arrays(items, [action_index(e[1]) for e in events], [e[2] for e in events])


def pad_batch(seqs: Sequence[SeqArrays], length: int) -> Batch:
    """Right-pad (sequence at 0..n-1, zeros after) to ``length``; each seq must fit."""
    n = len(seqs)
    items = np.zeros((n, length), dtype=np.int64)
    actions = np.zeros((n, length), dtype=np.int64)
    gaps = np.zeros((n, length), dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    for row, seq in enumerate(seqs):
        m = len(seq)
        items[row, :m], actions[row, :m], gaps[row, :m] = seq.items, seq.actions, seq.gaps
        lengths[row] = m
    return Batch(items, actions, gaps, lengths)


def split_input(seq: SeqArrays, split: str) -> tuple[SeqArrays, int] | None:
    """Leave-one-out split: the model input and the target item index.

    "test": all but the last event -> last item; "valid": all but the last
    two -> second-to-last item; "train": returns the training part with
    target -1.  Users with fewer than 3 events are training-only (None for
    "valid"/"test").
    """
    n = len(seq)
    if split == "train":
        return (seq.window(None, -2) if n >= 3 else seq), -1
    if n < 3:
        return None
    if split == "test":
        return seq.window(None, -1), int(seq.items[-1])
    if split == "valid":
        return seq.window(None, -2), int(seq.items[-2])
    raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
