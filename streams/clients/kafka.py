"""Plain kafka-python helpers: create topics, send keyed messages at a rate, read recommendations back.

A synchronous client, so a producer script needs no event loop.  Importable
with kafka-python and orjson alone: no torch, no Faust, no Redis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator

__all__ = ["OutgoingEvent", "PRODUCER_DEFAULTS", "Producer", "ensure_topics", "recommendation_consumer",
           "iter_messages"]

# Both producers of events (this replay helper and `streams.clients.producer.EventProducer`)
# use these. Idempotence is off although kafka-python 3 turns it on by default: not every
# Kafka-compatible broker serves InitProducerId (the embedded Tansu does not), and a
# resent event is already harmless, because the worker drops repeated event ids.
PRODUCER_DEFAULTS = {"linger_ms": 5, "acks": "all", "enable_idempotence": False}


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """A message to send: its topic, its key (the user id) and its encoded value."""

    topic: str
    key: str
    value: bytes


def ensure_topics(broker: str, topics: Iterable[str], partitions: int, **config) -> None:
    """Create missing topics with ``partitions`` partitions (replication 1 when the cluster has one broker).

    ``config``: kafka-python connection settings (see streams.security.kafka_client_config).
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

        self._producer = KafkaProducer(bootstrap_servers=broker, **{
            **PRODUCER_DEFAULTS, "client_id": "interest-updater-producer", **config})

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
