"""The service's exceptions: one root, one class per failure."""

from __future__ import annotations

__all__ = ["InterestUpdaterError", "InvalidEvent", "ConfigurationError"]


class InterestUpdaterError(Exception):
    """Root of every error this service raises on purpose."""


class ConfigurationError(InterestUpdaterError):
    """A setting, flag or file given by the operator cannot be used."""


class InvalidEvent(InterestUpdaterError):
    """An event that fails validation; ``reason`` is a short stable code for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
