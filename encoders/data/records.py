"""The canonical records every event log is read into: events, a catalogue, a dataset.

Deliberately free of torch and numpy, and of any file format: the loaders in
`encoders.data.formats` and `encoders.data.builtin` build these, and features,
protocols and training read them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

__all__ = ["Catalogue", "Dataset", "Event", "EventContext"]


@dataclass(frozen=True, slots=True)
class EventContext:
    """Where and how an event happened, as far as the log says (None: not said).

    The fields of a click's ``context`` object (`streams.events.Context`):
    device and region labels, the place's coordinates in degrees, and the
    user's offset from UTC in minutes, from which the local hour follows.
    """

    device: str | None = None
    region: str | None = None
    lat: float | None = None
    lon: float | None = None
    tz_offset_min: int | None = None


# slots: ML-1M holds a million of these, and slots make them ~35% cheaper.
@dataclass(frozen=True, slots=True)
class Event:
    """One user event; clicks and text events share this record.

    ``ts`` is milliseconds since the epoch, or an order index where the data
    has no timestamps.  Text events carry ``text`` and ``kind`` ("search",
    "review" or "comment"); their ``item_id`` is "" when about no item.
    """

    user_id: str
    item_id: str
    ts: int
    action: str = "click"
    text: str | None = None
    kind: str | None = None
    context: EventContext | None = None


@dataclass(frozen=True)
class Catalogue:
    """Item metadata: item_id -> title and item_id -> categories."""

    titles: dict[str, str]
    categories: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Dataset:
    """A named event log: click events, text events and the catalogue.

    ``test_clicks`` holds a held-out test file's clicks where the source has
    one (session data such as YOOCHOOSE); it is never used for training.
    """

    name: str
    clicks: list[Event]
    texts: list[Event]
    catalogue: Catalogue
    test_clicks: list[Event] = field(default_factory=list)

    def sequences(self) -> dict[str, list[Event]]:
        """Clicks grouped by user, each list stable-sorted by ``ts``.

        Stable sorting keeps the file order of same-timestamp events, which
        is the only order ML-1M has within a second.
        """
        return _group(self.clicks)

    def test_sequences(self) -> dict[str, list[Event]]:
        """``test_clicks`` grouped like `sequences`."""
        return _group(self.test_clicks)


def _group(events: list[Event]) -> dict[str, list[Event]]:
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    return {user: sorted(seq, key=_ts) for user, seq in by_user.items()}


def _ts(event: Event) -> int:
    return event.ts
