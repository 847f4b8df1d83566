"""The helper event producers use from Python: validate, then send, keyed by user.

Every event is checked against the JSON Schema files shipped in
``streams/schemas/`` before it is sent, so a producer learns of a bad event at
the call site, as an :class:`InvalidEvent` naming the field and the value,
instead of finding it later on the dead-letter topic. The worker applies a few
rules the schema cannot express (the ``ts`` upper bound uses the worker's
clock); those are still checked there.
"""

from __future__ import annotations

import json
import time
import uuid
from functools import cache
from importlib.resources import files
from typing import Any, Mapping

import orjson

from streams.clients.kafka import PRODUCER_DEFAULTS
from streams.errors import InvalidEvent
from streams.events import SCHEMA_VERSION

__all__ = ["EventProducer", "validate_click", "validate_text", "InvalidEvent"]

_DETAIL_KEEP = 40


@cache
def _validator(name: str):
    # jsonschema is imported here, not at module level, so that importing this
    # module stays cheap; each validator is built once and reused.
    from jsonschema import Draft202012Validator

    # "streams.schemas", not "streams": on Python 3.11 an editable install puts a
    # non-directory placeholder in the ``streams`` namespace path, which
    # ``files("streams")`` rejects; the schemas folder has no such entry.
    schema = json.loads(files("streams.schemas").joinpath(name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _short(value: Any) -> str:
    text = repr(value)
    if len(text) <= _DETAIL_KEEP:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return text[:_DETAIL_KEEP] + "..." + size


def _rule(error) -> str:
    """What the failed keyword demands, in words, on one line."""
    wanted = error.validator_value
    rules = {
        "pattern": lambda: f"must match {wanted}",
        "maxLength": lambda: f"must be at most {wanted} characters",
        "minLength": lambda: f"must be at least {wanted} characters",
        "enum": lambda: f"must be one of {wanted}",
        "const": lambda: f"must be {wanted!r}",
        "type": lambda: f"must be of type {wanted}",
        "minimum": lambda: f"must be >= {wanted}",
        "maximum": lambda: f"must be <= {wanted}",
    }
    return rules[error.validator]() if error.validator in rules else f"fails the {error.validator!r} rule"


def _validate(name: str, body: Mapping[str, Any]) -> None:
    from jsonschema.exceptions import best_match

    error = best_match(_validator(name).iter_errors(body))
    if error is None:
        return
    if error.validator == "required":
        missing = next(field for field in error.validator_value if field not in error.instance)
        raise InvalidEvent("schema", f"field {missing!r} is required")
    field = ".".join(str(part) for part in error.absolute_path) or "<event>"
    raise InvalidEvent("schema", f"field {field!r} {_rule(error)}, got {_short(error.instance)}")


def validate_click(body: Mapping[str, Any]) -> None:
    """Raise InvalidEvent (reason ``"schema"``) unless ``body`` matches click.schema.json.

    >>> validate_click({"event_id": "e1", "user_id": "a b", "item_id": "i", "action": "view", "ts": 1_700_000_000_000})
    Traceback (most recent call last):
    streams.errors.InvalidEvent: schema: field 'user_id' must match ^[A-Za-z0-9_.:@+=/\\-]{1,128}$, got 'a b'
    """
    _validate("click.schema.json", body)


def validate_text(body: Mapping[str, Any]) -> None:
    """Raise InvalidEvent (reason ``"schema"``) unless ``body`` matches text.schema.json."""
    _validate("text.schema.json", body)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _present(**fields: Any) -> dict[str, Any]:
    # Optional fields left as None are omitted: the worker reads absent and null alike.
    return {name: value for name, value in fields.items() if value is not None}


class EventProducer:
    """Send click and text events to the topics the workers read, validated first.

    Settings are `streams.clients.kafka.PRODUCER_DEFAULTS` (``acks="all"``,
    ``linger_ms=5``, no idempotence, as the replay helper); ``kafka_config`` is passed to ``KafkaProducer`` and
    overrides them. Sends are asynchronous: call :meth:`flush` (or leave the
    ``with`` block) to wait for the broker.

    Example::

        with EventProducer("localhost:9092") as producer:
            producer.send_click("u1", "item-42", "view")
            producer.send_text("u1", "search", "trail running shoes")
    """

    def __init__(self, broker: str, *, click_topic: str = "clicks", text_topic: str = "texts",
                 **kafka_config: Any) -> None:
        from kafka import KafkaProducer

        config = {**PRODUCER_DEFAULTS, "client_id": "interest-updater-events", **kafka_config}
        self._producer = KafkaProducer(bootstrap_servers=broker, **config)
        self.click_topic = click_topic
        self.text_topic = text_topic
        self._failure: Exception | None = None

    def send_click(self, user_id: str, item_id: str, action: str, ts: int | None = None,
                   event_id: str | None = None, session_id: str | None = None,
                   context: Mapping[str, Any] | None = None) -> str:
        """Validate and send one click event; return its event id (a new uuid4 hex when not given)."""
        event_id = event_id if event_id is not None else uuid.uuid4().hex
        body = {"schema": SCHEMA_VERSION, "event_id": event_id, "user_id": user_id, "item_id": item_id,
                "action": action, "ts": ts if ts is not None else _now_ms(),
                **_present(session_id=session_id, context=context)}
        validate_click(body)
        self._send(self.click_topic, user_id, body)
        return event_id

    def send_text(self, user_id: str, kind: str, text: str, ts: int | None = None,
                  event_id: str | None = None, item_id: str | None = None) -> str:
        """Validate and send one text event (``kind`` is search, review or comment); return its event id."""
        event_id = event_id if event_id is not None else uuid.uuid4().hex
        body = {"schema": SCHEMA_VERSION, "event_id": event_id, "user_id": user_id, "kind": kind,
                "text": text, "ts": ts if ts is not None else _now_ms(), **_present(item_id=item_id)}
        validate_text(body)
        self._send(self.text_topic, user_id, body)
        return event_id

    def _send(self, topic: str, user_id: str, body: Mapping[str, Any]) -> None:
        # Keyed by user so that one worker owns all of a user's events.
        future = self._producer.send(topic, key=user_id.encode(), value=orjson.dumps(body))
        future.add_errback(self._record_failure)

    def _record_failure(self, exc: Exception) -> None:
        # Kept, not raised: the callback runs on the sender thread; flush() reports it.
        if self._failure is None:
            self._failure = exc

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event sent so far is acknowledged; raise the first delivery error, if any."""
        self._producer.flush(timeout=timeout)
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Flush, then release the connection."""
        try:
            self.flush()
        finally:
            self._producer.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
