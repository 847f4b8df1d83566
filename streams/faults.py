"""Test-only fault points: let a test stop a micro-batch at an exact step.

Crash and shutdown tests used to pick their moment with ``sleep``, which hits a
different step on a faster or slower machine. Instead, a test starts a worker
with::

    IU_TEST_FAULT=<point>:<action>   e.g. after_embed:hold, after_apply:exit
    IU_TEST_FAULT_DIR=<dir>          where the worker and the test meet

and the first micro-batch that reaches ``<point>`` writes
``<dir>/<point>.reached`` (JSON: the batch's record count and its last offset per
topic and partition), then

- ``hold``: waits until the test creates ``<dir>/<point>.release``, then goes on;
- ``exit``: ends the process at once with status 137, as SIGKILL would (no
  shutdown code runs, nothing is flushed).

A point fires once per process. Without ``IU_TEST_FAULT`` every call is a no-op
that costs one attribute test, so production workers carry no behaviour of it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Sequence

import orjson

from streams.errors import ConfigurationError

__all__ = ["FaultPoints", "POINTS", "ACTIONS", "NO_FAULTS"]

# In pipeline order: texts embedded, events applied to Redis, profiles written
# (recommendations not yet published), recommendations published (pending marks
# not yet cleared).
POINTS = ("after_embed", "after_apply", "after_write", "after_publish")
ACTIONS = ("hold", "exit")
_POLL_SECONDS = 0.02


class FaultPoints:
    """The fault a test asked for, or none."""

    def __init__(self, point: str | None = None, action: str = "hold", meeting: Path | None = None) -> None:
        if point is not None and point not in POINTS:
            raise ConfigurationError(f"IU_TEST_FAULT: unknown point {point!r}; expected one of {', '.join(POINTS)}")
        if action not in ACTIONS:
            raise ConfigurationError(f"IU_TEST_FAULT: unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        if point is not None and meeting is None:
            raise ConfigurationError("IU_TEST_FAULT is set but IU_TEST_FAULT_DIR is not")
        self.point, self.action, self.meeting = point, action, meeting

    @classmethod
    def from_env(cls, env=os.environ) -> "FaultPoints":
        spec = env.get("IU_TEST_FAULT")
        if not spec:
            return NO_FAULTS
        point, _, action = spec.partition(":")
        meeting = env.get("IU_TEST_FAULT_DIR")
        return cls(point, action or "hold", Path(meeting) if meeting else None)

    async def at(self, point: str, records: Sequence) -> None:
        """Called by the pipeline at each point with the batch's records."""
        if point != self.point:
            return
        self.point = None  # once per process
        reached = self.meeting / f"{point}.reached"
        reached.write_bytes(orjson.dumps(_describe(records)))
        if self.action == "exit":
            os._exit(137)
        release = self.meeting / f"{point}.release"
        while not release.exists():
            await asyncio.sleep(_POLL_SECONDS)


def _describe(records: Sequence) -> dict:
    last: dict[str, int] = {}
    for record in records:
        key = f"{record.topic}:{record.partition}"
        last[key] = max(last.get(key, -1), record.offset)
    return {"records": len(records), "last_offsets": last}


NO_FAULTS = FaultPoints()
