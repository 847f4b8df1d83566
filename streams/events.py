"""Typed records on the topics, and the one place raw bytes become records.

Every event is decoded once, here, with orjson, and validated against the same
rules as the JSON Schema files in ``streams/schemas/`` that producers use.
A failure raises :class:`InvalidEvent` with a stable reason code (used as a
metric label and in the dead letter) and a one-line detail naming the field
and the offending value.

Rules beyond the schema, decided here and documented in the README:
- the Kafka key, when present, must equal ``user_id`` (one worker owns a user);
- ``ts`` must lie between 1990-01-01 and the worker's clock plus ``max_future``;
- texts longer than ``max_text_chars`` are rejected, not truncated;
- unknown items are accepted (the catalogue grows); the encoder maps them to
  its unknown-item embedding;
- a click's ``context`` keeps the documented keys (`Context`); other keys are
  ignored and counted, and a documented key with a bad value (a latitude of
  200, a device that is a number, a latitude without a longitude) rejects the
  event with reason ``bad_context``;
- an item event's key, when present, must equal its ``item_id`` (one partition
  orders an item's upserts); its ``ts`` orders them (the newest wins).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any, Mapping

import orjson

from streams.errors import InvalidEvent

__all__ = [
    "SCHEMA_VERSION", "ClickEvent", "Context", "TextEvent", "ItemEvent", "RecommendationEvent", "DeadLetter",
    "Limits", "decode_click", "decode_text", "decode_item", "InvalidEvent",
]

SCHEMA_VERSION = 1
MIN_TS_MS = 631_152_000_000  # 1990-01-01T00:00:00Z
MAX_RAW_BYTES = 65_536
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:@+=/\-]{1,128}")
ACTION_PATTERN = re.compile(r"[a-z_]{1,32}")
TEXT_KINDS = frozenset({"search", "review", "comment"})
LABEL_PATTERN = re.compile(r"[A-Za-z0-9_.:@+=/\- ]{1,64}")  # context.device and context.region
MAX_TITLE_CHARS = 512
MAX_CATEGORIES = 32
MAX_CATEGORY_CHARS = 64


@dataclass(frozen=True, slots=True)
class Limits:
    """Validation bounds that come from settings."""

    max_text_chars: int = 2000
    max_future_ms: int = 600_000


@dataclass(frozen=True, slots=True)
class Context:
    """Where and how a click happened: the documented keys of its ``context`` object.

    ``device`` and ``region`` are free labels (the encoder hashes them);
    ``lat``/``lon`` are degrees and come together; ``tz_offset_min`` is the
    user's offset from UTC in minutes (New York in winter: -300), from which
    the local hour of the week follows.  ``ignored_keys`` counts the other
    keys the producer sent, which are dropped.
    """

    device: str | None = None
    region: str | None = None
    lat: float | None = None
    lon: float | None = None
    tz_offset_min: int | None = None
    ignored_keys: int = 0

    KEYS = ("device", "region", "lat", "lon", "tz_offset_min")


@dataclass(frozen=True, slots=True)
class ClickEvent:
    event_id: str
    user_id: str
    item_id: str
    action: str
    ts: int
    session_id: str | None = None
    context: Context | None = None


@dataclass(frozen=True, slots=True)
class TextEvent:
    event_id: str
    user_id: str
    kind: str
    text: str
    ts: int
    item_id: str | None = None


@dataclass(frozen=True, slots=True)
class ItemEvent:
    """An upsert of the live catalogue: the item's state as of ``ts`` (the newest ``ts`` wins)."""

    item_id: str
    available: bool
    ts: int
    title: str | None = None
    categories: tuple[str, ...] | None = None


# kw_only: eleven fields, several of the same type (two timestamps, two counts);
# a positional call could swap them silently.
@dataclass(frozen=True, slots=True, kw_only=True)
class RecommendationEvent:
    """Published per refreshed user; ``version`` increases by one per refresh of that user."""

    user_id: str
    version: int
    items: tuple[tuple[str, float], ...]
    interests: tuple[str, ...]
    model_version: str
    last_event_ts: int
    published_at: int
    clicks_applied: int = 0
    # Per interest (current, long_term, session, categories, text): the version at
    # which it last changed and what a consumer needs of it (vectors, shares, counts).
    interest_profile: Mapping[str, Mapping[str, Any]] | None = None
    next_action: Mapping[str, float] | None = None
    drift: float | None = None

    def to_json(self) -> bytes:
        return orjson.dumps({
            "schema": SCHEMA_VERSION, "user_id": self.user_id, "version": self.version,
            "items": [{"item_id": item, "score": round(score, 6)} for item, score in self.items],
            "interests": list(self.interests), "interest_profile": self.interest_profile or {},
            "next_action": self.next_action, "drift": self.drift, "model_version": self.model_version,
            "last_event_ts": self.last_event_ts, "clicks_applied": self.clicks_applied,
            "published_at": self.published_at,
        })


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected event with where it came from and why."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: str  # the raw value's first RAW_KEEP bytes: as text, or base64 when they are not UTF-8
    reason: str
    error: str
    at: int
    value_encoding: str = "utf-8"

    RAW_KEEP = 1024

    @staticmethod
    def kept_value(raw: bytes) -> tuple[str, str]:
        """(value, value_encoding) of a raw message value: UTF-8 text, or base64 of bytes that are not."""
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw[: DeadLetter.RAW_KEEP]).decode("ascii"), "base64"
        # Valid UTF-8 cut at RAW_KEEP bytes may end inside a character: drop that part-character only.
        return raw[: DeadLetter.RAW_KEEP].decode("utf-8", "ignore"), "utf-8"

    def to_json(self) -> bytes:
        return orjson.dumps({
            "schema": SCHEMA_VERSION, "topic": self.topic, "partition": self.partition,
            "offset": self.offset, "key": self.key, "value": self.value, "value_encoding": self.value_encoding,
            "reason": self.reason, "error": self.error, "at": self.at,
        })


def _load_object(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_RAW_BYTES:
        raise InvalidEvent("too_large", f"event is {len(raw)} bytes, limit {MAX_RAW_BYTES}")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("bad_json", f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidEvent("not_object", f"expected a JSON object, got {type(value).__name__}")
    schema = value.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise InvalidEvent("schema_version", f"schema {schema!r} is not supported (expected {SCHEMA_VERSION})")
    return value


def _field(value: Mapping[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    if name not in value or value[name] is None:
        if required:
            raise InvalidEvent("missing_field", f"field {name!r} is required")
        return None
    found = value[name]
    # bool is an int in Python; a timestamp of `true` is still wrong.
    if not isinstance(found, kind) or (kind is int and isinstance(found, bool)):
        raise InvalidEvent("wrong_type",
                           f"field {name!r} must be {kind.__name__}, got {type(found).__name__} {_short(found)}")
    return found


def _identifier(value: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    found = _field(value, name, str, required=required)
    if found is not None and not ID_PATTERN.fullmatch(found):
        raise InvalidEvent("bad_id", f"field {name!r} must be 1-128 of [A-Za-z0-9_.:@+=/-], got {_short(found)}")
    return found


def _timestamp(value: Mapping[str, Any], now_ms: int, limits: Limits) -> int:
    ts = _field(value, "ts", int)
    if ts < MIN_TS_MS or ts > now_ms + limits.max_future_ms:
        raise InvalidEvent("ts_out_of_range",
                           f"ts {ts} is outside [{MIN_TS_MS}, now + {limits.max_future_ms // 1000}s]")
    return ts


def _check_key(key: bytes | None, found: str, name: str = "user_id") -> None:
    if key is not None and key != found.encode():
        raise InvalidEvent("key_mismatch", f"message key {_short(key)} differs from {name} {found!r}")


def _short(value: Any, keep: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= keep else text[:keep] + "...'"


def _context(found: Mapping[str, Any] | None) -> Context | None:
    """The documented keys of a click's context, checked; None when it has none of them."""
    if not found:
        return None
    known = {key: found[key] for key in Context.KEYS if found.get(key) is not None}
    for key in ("device", "region"):
        if key in known and not (isinstance(known[key], str) and LABEL_PATTERN.fullmatch(known[key])):
            raise InvalidEvent("bad_context", f"context.{key} must be 1-64 of [A-Za-z0-9_.:@+=/- ], "
                                              f"got {_short(known[key])}")
    for key, bound in (("lat", 90), ("lon", 180)):
        if key in known and not (_is_number(known[key]) and -bound <= known[key] <= bound):
            raise InvalidEvent("bad_context", f"context.{key} must be a number in [-{bound}, {bound}], "
                                              f"got {_short(known[key])}")
    if ("lat" in known) != ("lon" in known):
        raise InvalidEvent("bad_context", "context.lat and context.lon come together; got only "
                                          f"{'lat' if 'lat' in known else 'lon'}")
    offset = known.get("tz_offset_min")
    # The range first: int() of an infinite float raises.
    if offset is not None and not (_is_number(offset) and -720 <= offset <= 840 and offset == int(offset)):
        raise InvalidEvent("bad_context", f"context.tz_offset_min must be whole minutes in [-720, 840], "
                                          f"got {_short(offset)}")
    ignored = sum(key not in Context.KEYS for key in found)
    if not known:
        return Context(ignored_keys=ignored)
    return Context(device=known.get("device"), region=known.get("region"),
                   lat=float(known["lat"]) if "lat" in known else None,
                   lon=float(known["lon"]) if "lon" in known else None,
                   tz_offset_min=int(offset) if offset is not None else None, ignored_keys=ignored)


def _is_number(value: Any) -> bool:
    # bool is an int in Python; a latitude of `true` is still wrong.  NaN fails every comparison.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def decode_click(raw: bytes, key: bytes | None, now_ms: int, limits: Limits = Limits()) -> ClickEvent:
    """Decode and validate one click event, or raise InvalidEvent."""
    value = _load_object(raw)
    user_id = _identifier(value, "user_id")
    _check_key(key, user_id)
    action = _field(value, "action", str)
    if not ACTION_PATTERN.fullmatch(action):
        raise InvalidEvent("bad_action", f"field 'action' must be 1-32 of [a-z_], got {_short(action)}")
    context = _context(_field(value, "context", dict, required=False))
    return ClickEvent(
        event_id=_identifier(value, "event_id"), user_id=user_id,
        item_id=_identifier(value, "item_id"), action=action,
        ts=_timestamp(value, now_ms, limits),
        session_id=_identifier(value, "session_id", required=False), context=context,
    )


def decode_text(raw: bytes, key: bytes | None, now_ms: int, limits: Limits = Limits()) -> TextEvent:
    """Decode and validate one text event, or raise InvalidEvent."""
    value = _load_object(raw)
    user_id = _identifier(value, "user_id")
    _check_key(key, user_id)
    kind = _field(value, "kind", str)
    if kind not in TEXT_KINDS:
        raise InvalidEvent("bad_kind", f"field 'kind' must be one of {sorted(TEXT_KINDS)}, got {_short(kind)}")
    text = _field(value, "text", str)
    if not text.strip():
        raise InvalidEvent("empty_text", "field 'text' is empty")
    if len(text) > limits.max_text_chars:
        raise InvalidEvent("text_too_long", f"text has {len(text)} characters, limit {limits.max_text_chars}")
    return TextEvent(
        event_id=_identifier(value, "event_id"), user_id=user_id, kind=kind, text=text,
        ts=_timestamp(value, now_ms, limits), item_id=_identifier(value, "item_id", required=False),
    )


def decode_item(raw: bytes, key: bytes | None, now_ms: int, limits: Limits = Limits()) -> ItemEvent:
    """Decode and validate one item upsert, or raise InvalidEvent."""
    value = _load_object(raw)
    item_id = _identifier(value, "item_id")
    _check_key(key, item_id, "item_id")
    title = _field(value, "title", str, required=False)
    if title is not None and not (title.strip() and len(title) <= MAX_TITLE_CHARS):
        raise InvalidEvent("bad_title", f"field 'title' must be 1-{MAX_TITLE_CHARS} characters and not blank, "
                                        f"got {len(title)}")
    return ItemEvent(item_id=item_id, available=_field(value, "available", bool), ts=_timestamp(value, now_ms, limits),
                     title=title, categories=_categories(_field(value, "categories", list, required=False)))


def _categories(found: list | None) -> tuple[str, ...] | None:
    if found is None:
        return None
    if len(found) > MAX_CATEGORIES:
        raise InvalidEvent("bad_categories", f"field 'categories' has {len(found)} entries, limit {MAX_CATEGORIES}")
    for name in found:
        if not (isinstance(name, str) and name.strip() and len(name) <= MAX_CATEGORY_CHARS):
            raise InvalidEvent("bad_categories", f"each category must be a string of 1-{MAX_CATEGORY_CHARS} "
                                                 f"characters, got {_short(name)}")
    return tuple(found)
