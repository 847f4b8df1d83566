"""An example downstream consumer of the recommendations topic.

Recommendation events are delivered at least once: after a worker restart the
same refresh may be published again, and events can arrive out of order. Each
carries a per-user ``version`` that grows by one per refresh, so a consumer
keeps, per user, only the event with the highest version it has seen.

Example::

    from streams.clients.consumer import LatestRecommendations, follow
    latest = LatestRecommendations()
    for event in follow("localhost:9092", stop=lambda: len(latest) >= 100):
        if latest.offer(event):
            print(event["user_id"], "->", [item["item_id"] for item in event["items"]])
    print(latest.get("u1"), latest.kept, latest.dropped)
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import orjson

from streams.clients.kafka import iter_messages, recommendation_consumer

__all__ = ["LatestRecommendations", "follow"]


class LatestRecommendations:
    """The newest recommendation event per user, by ``version``; stale and repeated versions are dropped.

    >>> latest = LatestRecommendations()
    >>> latest.offer({"user_id": "u1", "version": 2}), latest.offer({"user_id": "u1", "version": 2})
    (True, False)
    >>> latest.get("u1")["version"], latest.kept, latest.dropped
    (2, 1, 1)
    """

    def __init__(self) -> None:
        self._latest: dict[str, dict[str, Any]] = {}
        self.kept = 0
        self.dropped = 0

    def offer(self, event: dict[str, Any]) -> bool:
        """Keep ``event`` if its version is above the one held for its user; True if kept."""
        held = self._latest.get(event["user_id"])
        # "<=", not "<": an equal version is the same refresh published again.
        if held is not None and event["version"] <= held["version"]:
            self.dropped += 1
            return False
        self._latest[event["user_id"]] = event
        self.kept += 1
        return True

    def get(self, user_id: str) -> dict[str, Any] | None:
        """The newest event kept for ``user_id``, or None."""
        return self._latest.get(user_id)

    def __len__(self) -> int:
        return len(self._latest)


def follow(broker: str, topic: str = "recommendations", *, from_beginning: bool = True,
           stop: Callable[[], bool] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the topic's events as dicts until ``stop()`` is true (forever when ``stop`` is None).

    Reads outside any consumer group (nothing is committed), from the earliest
    offset or only new events; ``stop`` is checked after each event and at
    least every half second while the topic is idle.

    >>> for event in follow("localhost:9092", stop=lambda: True):  # doctest: +SKIP
    ...     print(event["user_id"], event["version"])
    """
    consumer = recommendation_consumer(broker, topic, from_beginning)
    try:
        for message in iter_messages(consumer, stop or (lambda: False)):
            yield orjson.loads(message.value)
    finally:
        consumer.close()
