"""Checks the integration tests share: what Redis holds against what was replayed."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import orjson
import pytest

from state import KeySpace, Store
from state.layout import event_hash


@pytest.fixture()
def read_recommendations(broker_url):
    """A reader of every recommendation event on a topic, from the beginning."""
    from kafka import KafkaConsumer

    def read(topic: str) -> list[dict]:
        consumer = KafkaConsumer(topic, bootstrap_servers=broker_url, group_id=None, auto_offset_reset="earliest",
                                 consumer_timeout_ms=3000)
        try:
            return [orjson.loads(message.value) for message in consumer]
        finally:
            consumer.close()

    return read


@pytest.fixture()
def assert_clicks_applied_once(redis_url):
    """A check: every replayed click is in its user's Redis history exactly once, in time order.

    Called with the replayed events, the click topic and the key prefix; returns
    the click event ids by user.
    """

    def check(events, click_topic: str, prefix: str) -> dict[str, list[str]]:
        clicks: dict[str, list[str]] = defaultdict(list)
        for event in events:
            if event.topic == click_topic:
                body = orjson.loads(event.value)
                clicks[body["user_id"]].append(body["event_id"])

        async def stored():
            store = Store.from_url(redis_url, keys=KeySpace(prefix))
            try:
                return {user: (await store.meta(user), await store.history(user)) for user in clicks}
            finally:
                await store.close()

        for user, (meta, history) in asyncio.run(stored()).items():
            assert meta.get("applied:c") == len(clicks[user]), user  # exactly once
            assert sorted(history.clicks.events.tolist()) == sorted(event_hash(e) for e in clicks[user])
            assert history.clicks.ts.tolist() == sorted(history.clicks.ts.tolist())
        return clicks

    return check
