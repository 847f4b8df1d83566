"""Session cutting, derived from the stored history rather than stored itself.

A session ends when the user is inactive for longer than the gap, or when the
producer's ``session_id`` changes (both sides having one). Deriving it on read
means out-of-order inserts and trimming can never leave a stale "session start"
behind. The history is a `state.layout.ClickHistory`, so the cut is a few
numpy operations, not a loop over events.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from state.layout import ClickHistory

__all__ = ["session_starts", "current_session_start", "session_starts_of"]


def session_starts(clicks: ClickHistory, gap_ms: int) -> np.ndarray:
    """Indices at which a session starts (0 first), for a time-ordered history.

    >>> from state.layout import decode_clicks, pack_click
    >>> h = decode_clicks(bytes([3]) + b"".join(pack_click(1, ts, n, s, 2) for n, (ts, s) in
    ...                                         enumerate([(0, 7), (10, 7), (5000, 7), (5001, 9)])))
    >>> session_starts(h, gap_ms=1000).tolist()
    [0, 2, 3]
    """
    n = len(clicks)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    ts, sessions = clicks.ts, clicks.sessions
    new = np.zeros(n, dtype=bool)
    new[0] = True
    new[1:] = (np.diff(ts) > gap_ms) | ((sessions[1:] != 0) & (sessions[:-1] != 0) & (sessions[1:] != sessions[:-1]))
    return np.flatnonzero(new)


def current_session_start(clicks: ClickHistory, gap_ms: int) -> int:
    """Index of the first event of the trailing session (0 for an empty history)."""
    starts = session_starts(clicks, gap_ms)
    return int(starts[-1]) if len(starts) else 0


def session_starts_of(histories: Sequence[ClickHistory], gap_ms: int) -> list[int]:
    """`current_session_start` of many histories at once (one pass over their concatenation)."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    if not lengths.sum():
        return [0] * len(histories)
    ts = np.concatenate([h.ts for h in histories])
    sessions = np.concatenate([h.sessions for h in histories])
    new = np.ones(len(ts), dtype=bool)
    new[1:] = (np.diff(ts) > gap_ms) | ((sessions[1:] != 0) & (sessions[:-1] != 0) & (sessions[1:] != sessions[:-1]))
    firsts = np.cumsum(lengths) - lengths
    new[firsts[lengths > 0]] = True  # every history starts a session of its own
    # The last start at or before each history's last event.
    last_start = np.maximum.accumulate(np.where(new, np.arange(len(ts)), 0))
    ends = firsts + lengths - 1
    return [int(last_start[end] - first) if n else 0 for first, end, n in zip(firsts, ends, lengths)]
