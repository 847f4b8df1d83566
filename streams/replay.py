"""Replaying an event log into the topics, and reading recommendations back.

Uses kafka-python (a plain synchronous client) so a producer script needs no
event loop. Events are sent in event-time order, keyed by user, so one worker
owns all of a user's events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import orjson

from encoders.data import Dataset, Event
from streams.events import MIN_TS_MS, SCHEMA_VERSION

__all__ = ["OutgoingEvent", "replay_events", "Producer", "ensure_topics", "recommendation_consumer"]


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    topic: str
    key: str
    value: bytes


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


def ensure_topics(broker: str, topics: Iterable[str], partitions: int, **config) -> None:
    """Create missing topics with ``partitions`` partitions (replication 1 when the cluster has one broker).

    ``config``: kafka-python connection settings (see streams.security).
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=broker, client_id="interest-updater-admin", **config)
    try:
        existing = set(admin.list_topics())
        replication = min(3, len(admin.describe_cluster()["brokers"]))
        missing = [NewTopic(t, partitions, replication) for t in topics if t not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


class Producer:
    """A small producer helper: send topic messages keyed by user, at an optional rate."""

    def __init__(self, broker: str, **config) -> None:
        from kafka import KafkaProducer

        self._producer = KafkaProducer(bootstrap_servers=broker, linger_ms=5, acks="all",
                                       client_id="interest-updater-producer", **config)

    def send_all(self, events: Iterable[OutgoingEvent], rate: float = 0.0,
                 progress=None) -> dict[tuple[str, int], int]:
        """Send every event (``rate`` events/s when positive) and wait for the broker.

        Returns the last offset written to each (topic, partition): a worker is
        caught up with this replay once it has applied those offsets.
        """
        started = time.monotonic()
        futures = []
        for sent, event in enumerate(events, 1):
            futures.append(self._producer.send(event.topic, key=event.key.encode(), value=event.value))
            if rate > 0:
                delay = started + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if progress is not None:
                progress.update(1)
        self._producer.flush()
        ends: dict[tuple[str, int], int] = {}
        for future in futures:
            meta = future.get()
            ends[(meta.topic, meta.partition)] = max(ends.get((meta.topic, meta.partition), -1), meta.offset)
        return ends

    def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        self._producer.send(topic, key=key, value=value)

    def close(self) -> None:
        self._producer.flush()
        self._producer.close()


def recommendation_consumer(broker: str, topic: str, from_beginning: bool = True, **config):
    """A kafka-python consumer of the recommendation topic, outside any group."""
    from kafka import KafkaConsumer

    return KafkaConsumer(topic, bootstrap_servers=broker, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest" if from_beginning else "latest",
                         consumer_timeout_ms=500, client_id="interest-updater-tail", **config)


def iter_messages(consumer, stop) -> Iterator:
    """Messages until ``stop()`` is true, checking it every half second."""
    while not stop():
        for message in consumer:
            yield message
            if stop():
                return
