import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.events import ClickEvent, Context, InvalidEvent, Limits, decode_click, decode_text

NOW = 1_800_000_000_000
GOOD_CLICK = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "view", "ts": NOW - 1000}
GOOD_TEXT = {"event_id": "t1", "user_id": "u1", "kind": "search", "text": "jazz guitar", "ts": NOW - 1000}


def click(**changes) -> bytes:
    return orjson.dumps({**GOOD_CLICK, **changes})


def test_good_click_decodes_to_a_typed_record():
    event = decode_click(click(session_id="s1", context={"device": "phone", "page": "home"}), b"u1", NOW)
    assert event == ClickEvent("e1", "u1", "i1", "view", NOW - 1000, "s1", Context(device="phone", ignored_keys=1))


def test_a_context_keeps_its_documented_keys_and_counts_the_others():
    full = {"device": "tv", "region": "US-NY", "lat": 40.7, "lon": -74, "tz_offset_min": -300, "page": "home",
            "ab": 3}
    assert decode_click(click(context=full), None, NOW).context == Context(
        device="tv", region="US-NY", lat=40.7, lon=-74.0, tz_offset_min=-300, ignored_keys=2)
    assert decode_click(click(context={}), None, NOW).context is None
    assert decode_click(click(context={"device": None, "lat": None, "lon": None}), None, NOW).context == Context()
    assert decode_click(click(context={"page": "x"}), None, NOW).context == Context(ignored_keys=1)


@pytest.mark.parametrize("context, detail", [
    ({"device": 7}, "context.device must be 1-64"),
    ({"region": "x" * 65}, "context.region must be 1-64"),
    ({"region": "new\nline"}, "context.region must be 1-64"),
    ({"lat": 91, "lon": 0}, r"context.lat must be a number in \[-90, 90\], got 91"),
    ({"lat": 0, "lon": -180.5}, "context.lon must be a number"),
    ({"lat": "40.7", "lon": 0}, "context.lat must be a number"),
    ({"lat": True, "lon": 0}, "context.lat must be a number"),
    ({"lat": 40.7}, "context.lat and context.lon come together; got only lat"),
    ({"tz_offset_min": 30.5}, "context.tz_offset_min must be whole minutes"),
    ({"tz_offset_min": 900}, "context.tz_offset_min must be whole minutes in \\[-720, 840\\]"),
])
def test_a_bad_context_value_is_a_bad_context_naming_the_key(context, detail):
    with pytest.raises(InvalidEvent, match=detail) as caught:
        decode_click(click(context=context), None, NOW)
    assert caught.value.reason == "bad_context"


def test_good_text_decodes():
    event = decode_text(orjson.dumps(GOOD_TEXT), None, NOW)
    assert (event.kind, event.text, event.item_id) == ("search", "jazz guitar", None)


@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "bad_json"),
    (b"\xff\xfe", "bad_json"),
    (b"[1, 2]", "not_object"),
    (orjson.dumps({k: v for k, v in GOOD_CLICK.items() if k != "item_id"}), "missing_field"),
    (click(ts="yesterday"), "wrong_type"),
    (click(ts=True), "wrong_type"),
    (click(user_id=7), "wrong_type"),
    (click(user_id="a b"), "bad_id"),
    (click(user_id="x{y}"), "bad_id"),
    (click(item_id="i\n2"), "bad_id"),
    (click(user_id="u" * 129), "bad_id"),
    (click(action="View!"), "bad_action"),
    (click(ts=0), "ts_out_of_range"),
    (click(ts=NOW + 3_600_000), "ts_out_of_range"),
    (click(schema=2), "schema_version"),
    (b" " * 70_000, "too_large"),
])
def test_bad_clicks_name_the_reason(raw, reason):
    with pytest.raises(InvalidEvent) as caught:
        decode_click(raw, None, NOW)
    assert caught.value.reason == reason
    assert "\n" not in str(caught.value)


def test_key_must_match_user():
    with pytest.raises(InvalidEvent, match="key_mismatch"):
        decode_click(click(), b"someone-else", NOW)


@pytest.mark.parametrize("changes, reason", [
    ({"kind": "shout"}, "bad_kind"), ({"text": "   "}, "empty_text"), ({"text": "x" * 2001}, "text_too_long"),
])
def test_bad_texts_name_the_reason(changes, reason):
    with pytest.raises(InvalidEvent) as caught:
        decode_text(orjson.dumps({**GOOD_TEXT, **changes}), None, NOW, Limits(max_text_chars=2000))
    assert caught.value.reason == reason


ids = st.from_regex(r"[A-Za-z0-9_.:@+=/\-]{1,128}", fullmatch=True)


@given(event_id=ids, user_id=ids, item_id=ids, action=st.from_regex(r"[a-z_]{1,32}", fullmatch=True),
       ts=st.integers(631_152_000_000, NOW))
def test_any_valid_click_round_trips(event_id, user_id, item_id, action, ts):
    raw = orjson.dumps({"event_id": event_id, "user_id": user_id, "item_id": item_id, "action": action, "ts": ts})
    assert decode_click(raw, user_id.encode(), NOW) == ClickEvent(event_id, user_id, item_id, action, ts)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_invalid_event(raw):
    try:
        decode_click(raw, None, NOW)
    except InvalidEvent:
        pass
