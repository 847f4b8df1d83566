"""Exceptions raised by the encoders package.

One root (`EncoderError`) so that callers can catch everything from this
package at once; each subclass builds its own one-line message naming the
file and the offending value, so a log line is enough to act on.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CheckpointError", "ConfigError", "DataFormatError", "EncoderError"]


class EncoderError(Exception):
    """Root of every error raised by `encoders`."""


class CheckpointError(EncoderError):
    """A checkpoint directory is missing a file or does not match its config."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"checkpoint {self.path}: {problem}")


class ConfigError(EncoderError, ValueError):
    """A config (the model's `EncoderConfig`, training's `TrainConfig`) has unknown keys or invalid values.

    Also a `ValueError`: these were ValueErrors before the configs were typed,
    and callers (the CLI's one-line errors among them) still catch them so.
    ``what`` names the kind of config in the message.
    """

    def __init__(self, source: str, problem: str, *, what: str = "encoder config") -> None:
        self.source = source
        self.problem = problem
        self.what = what
        super().__init__(f"{what} {source}: {problem}")


class DataFormatError(EncoderError):
    """An event-log file (or dataset name) is not in an expected format."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        self.path = str(path)
        self.problem = problem
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")
