"""Exceptions raised by the state package: one root, one class per failure."""

from __future__ import annotations

__all__ = ["StateError", "InvalidUserId", "LayoutMismatch"]


class StateError(Exception):
    """Root of every error `state` raises on purpose."""


class InvalidUserId(StateError, ValueError):
    """A user id that cannot be part of a Redis key (a ValueError too, as it was before this class)."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        super().__init__(f"user id {user_id[:40]!r} cannot be part of a Redis key: it is empty or holds a "
                         "brace, whitespace or a control character")


class LayoutMismatch(StateError):
    """Redis holds values of another layout than this release reads (`state.layout`)."""

    def __init__(self, where: str, found: str) -> None:
        self.where, self.found = where, found
        super().__init__(f"{where} holds layout {found}; this release reads layouts 2 and 3 and does not convert "
                         "another: give the workers a new --key-prefix (or delete that prefix's keys)")
