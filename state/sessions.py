"""Session cutting, derived from the stored history rather than stored itself.

A session ends when the user is inactive for longer than the gap, or when the
producer's ``session_id`` changes. Deriving it on read means out-of-order
inserts and trimming can never leave a stale "session start" behind.
"""

from __future__ import annotations

from typing import Sequence

from state.store import StoredClick

__all__ = ["current_session", "split_sessions"]


def _starts_new_session(previous: StoredClick, current: StoredClick, gap_ms: int) -> bool:
    if current.ts - previous.ts > gap_ms:
        return True
    return bool(previous.session_id and current.session_id and previous.session_id != current.session_id)


def split_sessions(clicks: Sequence[StoredClick], gap_ms: int) -> list[list[StoredClick]]:
    """Split a time-ordered history into sessions, oldest first."""
    sessions: list[list[StoredClick]] = []
    for click in clicks:
        if not sessions or _starts_new_session(sessions[-1][-1], click, gap_ms):
            sessions.append([])
        sessions[-1].append(click)
    return sessions


def current_session(clicks: Sequence[StoredClick], gap_ms: int) -> Sequence[StoredClick]:
    """The trailing session of a time-ordered history (empty for an empty history)."""
    start = len(clicks)
    while start > 0 and (start == len(clicks) or not _starts_new_session(clicks[start - 1], clicks[start], gap_ms)):
        start -= 1
    return clicks[start:]
