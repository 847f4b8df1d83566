"""The service's exceptions: one root, one class per failure."""

from __future__ import annotations

__all__ = ["InterestUpdaterError", "InvalidEvent", "ConfigurationError"]

# The other packages have roots of their own, so that each can be used alone:
# `encoders.errors.EncoderError` and `state.errors.StateError`. The CLI prints any
# of the three as one line (the traceback with --debug).


class InterestUpdaterError(Exception):
    """Root of every error this service raises on purpose."""


class ConfigurationError(InterestUpdaterError, ValueError):
    """A setting, flag or file given by the operator cannot be used.

    Also a ValueError, which is what settings validation raised before this class.
    """


class InvalidEvent(InterestUpdaterError):
    """An event that fails validation; ``reason`` is a short stable code for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
