"""A dataset replayed as topic messages: clicks and texts in event-time order, keyed by user.

Events are sent in event-time order, keyed by user, so one worker owns all of
a user's events.  Used by `interest-updater produce`, the demo, the tests and
the benchmarks.
"""

from __future__ import annotations

import time
from typing import Sequence

import orjson

from encoders.data import Dataset, Event
from streams.clients.kafka import OutgoingEvent
from streams.events import MIN_TS_MS, SCHEMA_VERSION

__all__ = ["replay_events"]


def _time_shift(events: Sequence[Event], now_ms: int) -> int:
    """0 when the data's own times are valid event times; else move the newest event to now."""
    if not events:
        return 0
    lowest = min(e.ts for e in events)
    highest = max(e.ts for e in events)
    if lowest >= MIN_TS_MS and highest <= now_ms:
        return 0
    return now_ms - highest


def replay_events(dataset: Dataset, click_topic: str, text_topic: str, *, limit: int | None = None,
                  now_ms: int | None = None) -> list[OutgoingEvent]:
    """The dataset's clicks and texts as topic messages, in event-time order.

    Event ids are stable (dataset name, kind, position in the file), so replaying
    the same file twice sends the same ids: the second replay is recognised as
    duplicates, not applied again. Data without real timestamps (ML-1M) is moved
    so that its newest event happens now.
    """
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    tagged = [(e.ts, 0, i, e) for i, e in enumerate(dataset.clicks)]
    tagged += [(e.ts, 1, i, e) for i, e in enumerate(dataset.texts)]
    tagged.sort(key=lambda t: (t[0], t[1], t[2]))
    if limit is not None:
        tagged = tagged[:limit]
    shift = _time_shift([t[3] for t in tagged], now_ms)
    return [_message(dataset.name, kind, index, event, shift, click_topic, text_topic)
            for _, kind, index, event in tagged]


def _message(name: str, kind: int, index: int, event: Event, shift: int, click_topic: str,
             text_topic: str) -> OutgoingEvent:
    common = {"schema": SCHEMA_VERSION, "user_id": event.user_id, "ts": event.ts + shift}
    if kind == 0:
        body = {"event_id": f"{name}.c{index}", "item_id": event.item_id, "action": event.action, **common}
        return OutgoingEvent(click_topic, event.user_id, orjson.dumps(body))
    body = {"event_id": f"{name}.t{index}", "kind": event.kind or "comment", "text": event.text or "", **common}
    if event.item_id:
        body["item_id"] = event.item_id
    return OutgoingEvent(text_topic, event.user_id, orjson.dumps(body))
