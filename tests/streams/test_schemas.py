"""The JSON Schema files producers use agree with the worker's own validation."""

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from streams.events import InvalidEvent, decode_click, decode_item, decode_text

SCHEMAS = Path(__file__).resolve().parents[2] / "streams" / "schemas"
NOW = 1_800_000_000_000


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


def accepts(decode, value: dict) -> bool:
    try:
        decode(orjson.dumps(value), None, NOW)
        return True
    except InvalidEvent:
        return False


@pytest.mark.parametrize("value", [
    {"event_id": "e", "user_id": "u", "item_id": "i", "action": "buy", "ts": NOW},
    {"event_id": "e", "user_id": "u", "item_id": "i", "action": "view", "ts": NOW, "session_id": "s", "context": {}},
    {"event_id": "e", "user_id": "u b", "item_id": "i", "action": "view", "ts": NOW},
    {"event_id": "e", "user_id": "u", "item_id": "i", "action": "Buy", "ts": NOW},
    {"event_id": "e", "user_id": "u", "item_id": "i", "action": "buy", "ts": 5},
    {"event_id": "e", "user_id": "u", "item_id": "i", "action": "buy", "ts": "5"},
    {"user_id": "u", "item_id": "i", "action": "buy", "ts": NOW},
    *({"event_id": "e", "user_id": "u", "item_id": "i", "action": "view", "ts": NOW, "context": context}
      for context in ({"device": "phone", "region": "US-NY", "lat": 40.7, "lon": -74, "tz_offset_min": -300},
                      {"page": "home"}, {"device": None}, {"device": 7}, {"device": ""}, {"region": "a\nb"},
                      {"lat": 90.5, "lon": 0}, {"lat": 0, "lon": 181}, {"lat": 1}, {"lon": 1},
                      {"lat": 1, "lon": None}, {"lat": "1", "lon": 1}, {"tz_offset_min": 60.5},
                      {"tz_offset_min": -721}, {"tz_offset_min": 840})),
])
def test_click_schema_and_decoder_agree(value):
    assert validator("click.schema.json").is_valid(value) == accepts(decode_click, value)


@pytest.mark.parametrize("value", [
    {"event_id": "e", "user_id": "u", "kind": "review", "text": "great strings", "ts": NOW},
    {"event_id": "e", "user_id": "u", "kind": "tweet", "text": "great strings", "ts": NOW},
    {"event_id": "e", "user_id": "u", "kind": "search", "text": "x" * 2001, "ts": NOW},
    {"event_id": "e", "user_id": "u", "kind": "search", "text": "  ", "ts": NOW},
])
def test_text_schema_and_decoder_agree(value):
    assert validator("text.schema.json").is_valid(value) == accepts(decode_text, value)


@pytest.mark.parametrize("value", [
    {"item_id": "i", "available": True, "ts": NOW},
    {"item_id": "i", "available": False, "ts": NOW, "title": "Nylon strings", "categories": ["Guitar", "Strings"]},
    {"item_id": "i", "available": True, "ts": NOW, "title": None, "categories": None},
    {"item_id": "i", "available": "yes", "ts": NOW},
    {"item_id": "i", "available": 1, "ts": NOW},
    {"item_id": "i b", "available": True, "ts": NOW},
    {"available": True, "ts": NOW},
    {"item_id": "i", "ts": NOW},
    {"item_id": "i", "available": True},
    {"item_id": "i", "available": True, "ts": NOW, "title": " "},
    {"item_id": "i", "available": True, "ts": NOW, "title": "x" * 513},
    {"item_id": "i", "available": True, "ts": NOW, "categories": "Guitar"},
    {"item_id": "i", "available": True, "ts": NOW, "categories": [""]},
    {"item_id": "i", "available": True, "ts": NOW, "categories": [3]},
    {"item_id": "i", "available": True, "ts": NOW, "categories": ["c"] * 33},
])
def test_item_schema_and_decoder_agree(value):
    assert validator("item.schema.json").is_valid(value) == accepts(decode_item, value)


def test_an_item_event_keyed_by_another_item_is_rejected():
    with pytest.raises(InvalidEvent, match="differs from item_id 'i'") as found:
        decode_item(orjson.dumps({"item_id": "i", "available": True, "ts": NOW}), b"j", NOW)
    assert found.value.reason == "key_mismatch"


def test_dead_letters_keep_raw_bytes_that_are_not_text_as_base64():
    import base64

    from streams.events import DeadLetter, Limits
    from streams.pipeline import RawRecord, decode_batch

    raw = b'{"user_id": "u\xff\xfe"}'
    records = [RawRecord("clicks", 0, 7, b"u", raw, NOW), RawRecord("clicks", 0, 8, b"u", "é".encode() * 600, NOW)]
    _, (binary, text) = decode_batch(records, "clicks", NOW, Limits())
    assert binary.value_encoding == "base64" and base64.b64decode(binary.value) == raw
    assert text.value_encoding == "utf-8" and text.value == "é" * 512  # cut at 1024 bytes, on a character
    for letter in (binary, text):
        assert validator("dead-letter.schema.json").is_valid(orjson.loads(letter.to_json()))
    assert DeadLetter.kept_value(b"plain") == ("plain", "utf-8")

