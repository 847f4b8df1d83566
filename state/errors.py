"""Exceptions raised by the state package: one root, one class per failure."""

from __future__ import annotations

__all__ = ["StateError", "InvalidUserId"]


class StateError(Exception):
    """Root of every error `state` raises on purpose."""


class InvalidUserId(StateError, ValueError):
    """A user id that cannot be part of a Redis key (a ValueError too, as it was before this class)."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        super().__init__(f"user id {user_id[:40]!r} cannot be part of a Redis key: it is empty or holds a "
                         "brace, whitespace or a control character")
