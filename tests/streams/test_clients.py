"""The producer helper validates before sending; the example consumer keeps the newest version per user.

Validation and LatestRecommendations are tested without servers; sending and
following run against the real embedded broker (``broker_url``).
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import orjson
import pytest

from streams.clients.consumer import LatestRecommendations, follow
from streams.errors import InvalidEvent
from streams.events import SCHEMA_VERSION, Context, decode_click, decode_text
from streams.clients.producer import EventProducer, validate_click, validate_text
from streams.clients.kafka import ensure_topics

NOW = int(time.time() * 1000)
CLICK = {"schema": SCHEMA_VERSION, "event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "view", "ts": NOW}
TEXT = {"schema": SCHEMA_VERSION, "event_id": "t1", "user_id": "u1", "kind": "review", "text": "great", "ts": NOW}


def fresh(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def read_back(broker: str, topic: str, expected: int, timeout: float = 30.0) -> list:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=broker, group_id=None, auto_offset_reset="earliest",
                             consumer_timeout_ms=500)
    found: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < expected and time.monotonic() < deadline:
            found += list(consumer)
    finally:
        consumer.close()
    return found


def test_valid_events_pass():
    validate_click(CLICK)
    validate_click({**CLICK, "session_id": "s1", "context": {"page": "home"}})
    validate_text(TEXT)


@pytest.mark.parametrize(("body", "field", "shown"), [
    ({**CLICK, "event_id": "a b"}, "event_id", "'a b'"),
    ({**CLICK, "action": "Buy!"}, "action", "'Buy!'"),
    ({**CLICK, "ts": 5}, "ts", "5"),
    ({**CLICK, "session_id": "a b"}, "session_id", "'a b'"),
    ({**TEXT, "kind": "poem"}, "kind", "'poem'"),
    ({**TEXT, "text": "x" * 2001}, "text", "(2001 characters)"),
])
def test_invalid_events_raise_before_sending(body, field, shown):
    validate = validate_text if "kind" in body else validate_click
    with pytest.raises(InvalidEvent) as caught:
        validate(body)
    assert caught.value.reason == "schema"
    assert f"field {field!r}" in caught.value.detail and shown in caught.value.detail
    assert "\n" not in caught.value.detail and len(caught.value.detail) < 200


def test_missing_field_is_named():
    with pytest.raises(InvalidEvent, match="field 'item_id' is required"):
        validate_click({k: v for k, v in CLICK.items() if k != "item_id"})


@pytest.mark.integration
def test_sent_events_decode_on_the_worker_side(broker_url):
    clicks, texts = fresh("clicks"), fresh("texts")
    ensure_topics(broker_url, [clicks, texts], 1)
    with EventProducer(broker_url, click_topic=clicks, text_topic=texts) as producer:
        ids = [producer.send_click("u1", "i1", "view"),
               producer.send_click("u2", "i2", "cart", ts=NOW - 1000, event_id="c-2", session_id="s2"),
               producer.send_click("u1", "i3", "buy", context={"device": "phone", "page": "home"})]
        text_id = producer.send_text("u2", "search", "trail shoes", item_id="i2")
        with pytest.raises(InvalidEvent):
            producer.send_click("a b", "i1", "view")

    click_messages = read_back(broker_url, clicks, 3)
    text_messages = read_back(broker_url, texts, 1)
    now_ms = int(time.time() * 1000)
    decoded = [decode_click(m.value, m.key, now_ms) for m in click_messages]
    assert [m.key for m in click_messages] == [b"u1", b"u2", b"u1"]
    assert [orjson.loads(m.value)["schema"] for m in click_messages] == [SCHEMA_VERSION] * 3
    assert [e.event_id for e in decoded] == ids and ids[1] == "c-2"
    assert [(e.user_id, e.item_id, e.action) for e in decoded] == [("u1", "i1", "view"), ("u2", "i2", "cart"),
                                                                   ("u1", "i3", "buy")]
    assert decoded[1].ts == NOW - 1000 and decoded[1].session_id == "s2"
    assert decoded[2].context == Context(device="phone", ignored_keys=1) and decoded[0].session_id is None

    assert len(text_messages) == 1 and text_messages[0].key == b"u2"
    text = decode_text(text_messages[0].value, text_messages[0].key, now_ms)
    assert dataclasses.asdict(text) == {"event_id": text_id, "user_id": "u2", "kind": "search",
                                        "text": "trail shoes", "ts": text.ts, "item_id": "i2"}
    assert NOW <= text.ts <= now_ms


def test_latest_recommendations_keeps_the_newest_version():
    latest = LatestRecommendations()
    offered = [latest.offer({"user_id": "u1", "version": v, "items": []}) for v in (1, 3, 2, 3)]
    offered.append(latest.offer({"user_id": "u2", "version": 1, "items": []}))
    assert offered == [True, True, False, False, True]
    assert (latest.kept, latest.dropped, len(latest)) == (3, 2, 2)
    assert latest.get("u1")["version"] == 3
    assert latest.get("u2")["version"] == 1 and latest.get("nobody") is None


@pytest.mark.integration
def test_follow_yields_events_until_stopped(broker_url):
    from kafka import KafkaProducer

    topic = fresh("recs")
    ensure_topics(broker_url, [topic], 1)
    events = [{"schema": SCHEMA_VERSION, "user_id": "u1", "version": v, "items": [{"item_id": "i1", "score": 0.5}],
               "interests": ["sequence"], "model_version": "m1", "last_event_ts": NOW, "published_at": NOW}
              for v in (1, 2)]
    producer = KafkaProducer(bootstrap_servers=broker_url, enable_idempotence=False)
    try:
        for event in events:
            producer.send(topic, key=b"u1", value=orjson.dumps(event))
        producer.flush()
    finally:
        producer.close()

    seen: list[dict] = []
    deadline = time.monotonic() + 30
    for event in follow(broker_url, topic, stop=lambda: len(seen) >= 2 or time.monotonic() > deadline):
        seen.append(event)
    assert seen == events
