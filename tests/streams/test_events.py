import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.events import ClickEvent, InvalidEvent, Limits, decode_click, decode_text

NOW = 1_800_000_000_000
GOOD_CLICK = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "view", "ts": NOW - 1000}
GOOD_TEXT = {"event_id": "t1", "user_id": "u1", "kind": "search", "text": "jazz guitar", "ts": NOW - 1000}


def click(**changes) -> bytes:
    return orjson.dumps({**GOOD_CLICK, **changes})


def test_good_click_decodes_to_a_typed_record():
    event = decode_click(click(session_id="s1", context={"page": "home"}), b"u1", NOW)
    assert event == ClickEvent("e1", "u1", "i1", "view", NOW - 1000, "s1", {"page": "home"})


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
