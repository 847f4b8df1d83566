"""The store against a real Redis-compatible server (Valkey, started by the fixture)."""

import numpy as np
import pytest

from state import Entry, LayoutMismatch, StoredClick, StoredText
from state.keys import KeySpace
from state.layout import CLICK_BYTES, LAYOUT, event_hash, id_hash, pack_embedding

VIEW = 2


def click(user, offset, ts, event_id=None, partition=0, item=None):
    record = StoredClick(event_id or f"{user}-{offset}", item or f"item{offset}", VIEW, ts)
    return Entry(user, "clicks", partition, offset, record)


def profile(user, rec_items=(), **body):
    from state import Profile

    vectors = {name: np.full(4, n, np.float32) for n, name in enumerate(("current", "long_term", "session"))}
    return Profile(user, vectors, tuple(id_hash(i) for i in rec_items), body)


def test_applies_once_and_fences_replays(store, run):
    batch = [click("u1", 0, 1000), click("u1", 1, 2000), click("u2", 2, 1500)]
    first = run(store.apply(batch))
    assert first.outcomes == ["applied"] * 3
    assert {u.user_id: len(u.clicks) for u in first.users} == {"u1": 2, "u2": 1}
    again = run(store.apply(batch))
    assert again.outcomes == ["replay"] * 3 and again.users == []
    assert first.users[0].clicks.events.tolist() == [event_hash("u1-0"), event_hash("u1-1")]
    assert first.users[0].clicks.items.tolist() == [id_hash("item0"), id_hash("item1")]
    assert run(store.meta("u1"))["applied:c"] == 2
    assert run(store.resume_offsets("clicks")) == {0: 2}


def test_same_event_id_at_a_new_offset_is_a_duplicate(store, run):
    run(store.apply([click("u1", 0, 1000, event_id="e")]))
    assert run(store.apply([click("u1", 5, 1000, event_id="e")])).outcomes == ["duplicate"]


def test_out_of_order_events_are_stored_in_time_order(store, run):
    run(store.apply([click("u1", 0, 5000), click("u1", 1, 1000), click("u1", 2, 3000)]))
    run(store.apply([click("u1", 3, 2000), click("u1", 4, 5000), click("u1", 5, 6000)]))
    history = run(store.history("u1")).clicks
    assert history.ts.tolist() == [1000, 2000, 3000, 5000, 5000, 6000]
    assert history.events.tolist()[3:5] == [event_hash("u1-0"), event_hash("u1-4")]  # equal times: arrival order


def test_events_older_than_the_lateness_bound_are_refused(store, run):
    store.lateness_ms = 10_000
    result = run(store.apply([click("u1", 0, 100_000), click("u1", 1, 95_000), click("u1", 2, 50_000)]))
    assert result.outcomes == ["applied", "applied", "late"]


def test_a_replayed_late_event_is_late_again_so_that_its_dead_letter_is_not_lost(store, run):
    store.lateness_ms = 10_000
    batch = [click("u1", 0, 100_000), click("u1", 1, 50_000),
             Entry("u1", "texts", 0, 0, StoredText("t0", 100_000)), Entry("u1", "texts", 0, 1, StoredText("t1", 1))]
    assert run(store.apply(batch)).outcomes == ["applied", "late", "applied", "late"]
    assert run(store.apply(batch)).outcomes == ["replay", "late", "replay", "late"]
    assert run(store.apply([click("u1", 2, 40_000, event_id="u1-1")])).outcomes == ["late"]  # the same id, resent
    assert run(store.history("u1")).clicks.ts.tolist() == [100_000]
    assert set(run(store.meta("u1"))) == {"fence:clicks:0", "fence:texts:0", "applied:c", "applied:t"}


def test_history_is_bounded_and_counters_are_not(store, run):
    store.max_clicks = 3
    result = run(store.apply([click("u1", i, 1000 + i) for i in range(5)]))
    assert result.users[0].clicks.ts.tolist() == [1002, 1003, 1004]
    assert run(store.meta("u1"))["applied:c"] == 5
    assert run(store.client.strlen(KeySpace().user("u1").clicks)) == 1 + 3 * CLICK_BYTES


def test_clicks_and_texts_fence_separately_and_texts_fold_into_a_running_mean(store, run):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(5, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def text(offset, event_id, ts):
        return Entry("u1", "texts", 3, offset, StoredText(event_id, ts, pack_embedding(vectors[offset])))

    result = run(store.apply([click("u1", 0, 1000), text(0, "t0", 1500), text(1, "t1", 1600)]))
    assert result.outcomes == ["applied"] * 3
    (user,) = result.users
    assert len(user.clicks) == 1 and user.texts.count == 2 and user.texts.newest_ts == 1600
    assert user.texts.ids_kept == 2  # the ids duplicates are found by
    np.testing.assert_allclose(user.texts.mean, vectors[:2].mean(0), atol=1e-4)
    again = run(store.apply([text(1, "t1", 1600), text(2, "t1", 1700), text(3, "t3", 1800), text(4, "t4", 1900)]))
    assert again.outcomes == ["replay", "duplicate", "applied", "applied"]
    np.testing.assert_allclose(again.users[0].texts.mean, vectors[[0, 1, 3, 4]].mean(0), atol=1e-4)
    assert again.users[0].texts.ids_kept == 4
    assert run(store.meta("u1"))["applied:t"] == 4 and run(store.meta("u1"))["fence:texts:3"] == 4


def test_write_profiles_returns_increasing_versions(store, run):
    assert [w.version for w in run(store.write_profiles([profile("u1")]))] == [1]
    written = run(store.write_profiles([profile("u1", model_version="m1"), profile("u2")]))
    assert [w.version for w in written] == [2, 1]
    stored = run(store.profile("u1"))
    assert stored.body == {"model_version": "m1"} and stored.vectors["long_term"].tolist() == [1.0] * 4
    assert run(store.profile("nobody")) is None


def test_the_previous_long_term_vector_comes_back_with_the_history(store, run):
    assert run(store.apply([click("u1", 0, 1000)])).users[0].long_term is None  # a new user has none
    run(store.write_profiles([profile("u1")]))
    (user,) = run(store.apply([click("u1", 1, 2000)])).users
    assert user.long_term.tolist() == [1.0] * 4  # as it was before this batch's refresh
    assert run(store.histories(["u1", "u2"]))[0].long_term.tolist() == [1.0] * 4  # the recovery path reads it too
    assert run(store.histories(["u2"]))[0].long_term is None


def test_each_interest_keeps_the_version_at_which_it_last_changed(store, run):
    from dataclasses import replace

    first = replace(profile("u1"), changed=("current", "long_term"))
    second = replace(profile("u1"), changed=("current", "text"))
    assert run(store.write_profiles([first]))[0].interest_versions == {"current": 1, "long_term": 1}
    (written,) = run(store.write_profiles([second]))
    assert written.version == 2 and written.interest_versions == {"current": 2, "long_term": 1, "text": 2}
    assert run(store.profile("u1")).versions == {"current": 2, "long_term": 1, "text": 2}


def test_resume_offsets_never_move_backwards(store, run):
    run(store.apply([click("u1", 7, 1000)]))
    run(store.apply([click("u1", 3, 2000)]))
    assert run(store.resume_offsets("clicks")) == {0: 7}


def test_keys_of_one_user_share_one_hash_tag():
    keys = KeySpace("iu").user("user:42")
    tags = {key[key.index("{"): key.index("}") + 1] for key in keys.script_keys()}
    assert tags == {"{u:user:42}"}


@pytest.mark.parametrize("user_id", ["a{b", "a}b", "{u:a}", "a b", "a\nb", "a\x00", ""])
def test_ids_that_could_leave_their_hash_tag_are_refused(user_id):
    with pytest.raises(ValueError, match="cannot be part of a Redis key"):
        KeySpace("iu").user(user_id)


def test_ids_with_colons_and_stars_stay_apart(store, run):
    users = ["a", "a:b", "a*", "*", "a:clicks", "a:*"]
    run(store.apply([click(u, i, 1000 + i, item=f"it:{i}*") for i, u in enumerate(users)]))
    for i, user in enumerate(users):
        assert run(store.history(user)).clicks.items.tolist() == [id_hash(f"it:{i}*")]


def test_a_resent_old_event_is_a_duplicate_not_late(store, run):
    store.lateness_ms = 10
    run(store.apply([click("u1", 0, 1000, event_id="old"), click("u1", 1, 9000)]))
    assert run(store.apply([click("u1", 2, 1000, event_id="old")])).outcomes == ["duplicate"]


def test_applied_clicks_are_ranked_against_the_last_published_list(store, run):
    run(store.apply([click("u1", 0, 1000)]))
    run(store.write_profiles([profile("u1", ("a", "item5", "b"))]))
    result = run(store.apply([click("u1", 5, 2000), click("u1", 6, 3000, item="b"),
                              click("u1", 7, 4000, item="zz"), click("u1", 6, 5000, item="b")]))
    assert result.outcomes == ["applied", "applied", "applied", "replay"]
    assert result.ranks == [2, 3, 0, -1]
    assert result.users[0].clicks_applied == 4


def test_a_user_without_a_list_is_not_ranked(store, run):
    assert run(store.apply([click("u9", 0, 1000)])).ranks == [-1]


def test_scripts_lost_by_redis_are_loaded_again_and_the_batch_applied_once(store, run):
    """SCRIPT FLUSH (what a Redis restart does to the script cache) between two batches."""
    from dataclasses import replace

    run(store.apply([click("u1", 0, 1000)]))
    run(store.client.script_flush())  # every node of a Cluster
    second = run(store.apply([click("u1", 1, 2000), click("u1", 0, 1000)]))
    assert second.outcomes == ["applied", "replay"]
    assert run(store.meta("u1"))["applied:c"] == 2
    run(store.client.script_flush())
    written = run(store.write_profiles([replace(profile("u1"), changed=("current",))]))
    assert written[0].version == 1 and written[0].interest_versions == {"current": 1}


def test_a_pending_mark_is_cleared_only_by_the_batch_that_set_it(store, run):
    run(store.apply([click("u1", 0, 1000), click("u2", 1, 1000)]))
    first = {("clicks", 0): {"u1": "0", "u2": "1"}}
    run(store.apply([click("u1", 2, 2000)]))  # a later batch marks u1 again before the first one publishes
    run(store.clear_pending(first))
    assert run(store.pending_users("clicks", [0, 1])) == {0: {"u1": "2"}}
    run(store.clear_pending({("clicks", 0): {"u1": "2"}}))
    assert run(store.pending_users("clicks", [0])) == {}


def test_the_layout_is_claimed_and_another_layout_is_refused_not_misread(store, run):
    run(store.check_layout())
    assert run(store.client.get(store.keys.layout())) == str(LAYOUT).encode()
    run(store.check_layout())  # idempotent
    keys = KeySpace().user("u1")
    run(store.client.set(keys.clicks, b"\x07" + b"\x00" * 24))  # a value of a future layout
    with pytest.raises(LayoutMismatch, match="layout 7"):
        run(store.apply([click("u1", 0, 1000)]))
    with pytest.raises(LayoutMismatch, match="layout 7"):
        run(store.history("u1"))


def test_a_click_keeps_its_context_word(store, run):
    word = (1 << 63) | 0x2A  # the top bit and the bottom byte: the whole word comes back
    with_context = Entry("u1", "clicks", 0, 0, StoredClick("e0", "i0", VIEW, 1000, context=word))
    run(store.apply([with_context, click("u1", 1, 2000)]))
    assert run(store.history("u1")).clicks.context.tolist() == [word, 0]


def test_a_layout_2_prefix_is_upgraded_as_it_is_written_and_loses_nothing(store, run):
    """Layout 2 clicks lack only the context word: they read as clicks without context, and the next apply
    rewrites them as layout 3; a profile keeps its interest versions across the upgrade."""
    from dataclasses import replace

    keys = KeySpace().user("u1")
    run(store.apply([click("u1", 0, 1000), click("u1", 1, 2000)]))
    run(store.write_profiles([replace(profile("u1"), changed=("current",))]))
    layout3 = run(store.client.get(keys.clicks))
    records = [layout3[1 + i * CLICK_BYTES: 1 + i * CLICK_BYTES + 24] for i in range(2)]  # without the context
    run(store.client.set(keys.clicks, bytes([2]) + b"".join(records)))
    for key in (keys.profile,):
        value = run(store.client.get(key))
        run(store.client.set(key, bytes([2]) + value[1:]))
    run(store.client.set(store.keys.layout(), "2"))

    run(store.check_layout())
    assert run(store.client.get(store.keys.layout())) == str(LAYOUT).encode()
    before = run(store.history("u1")).clicks
    assert before.ts.tolist() == [1000, 2000] and before.context.tolist() == [0, 0]
    (user,) = run(store.apply([Entry("u1", "clicks", 0, 2, StoredClick("e2", "i2", VIEW, 3000, context=7))])).users
    assert user.clicks.ts.tolist() == [1000, 2000, 3000] and user.clicks.context.tolist() == [0, 0, 7]
    assert run(store.client.strlen(keys.clicks)) == 1 + 3 * CLICK_BYTES
    assert run(store.client.getrange(keys.clicks, 0, 0)) == bytes([LAYOUT])
    (written,) = run(store.write_profiles([replace(profile("u1"), changed=("long_term",))]))
    assert written.interest_versions == {"current": 1, "long_term": 2}


def test_a_database_of_the_first_layout_is_refused_at_start(store, run):
    run(store.client.hset(f"{store.keys.prefix}:{{u:old}}:clicks:data", "e1", b"[]"))
    with pytest.raises(LayoutMismatch, match="layout 1.*--key-prefix"):
        run(store.check_layout())
    run(store.client.set(store.keys.layout(), "9"))
    with pytest.raises(LayoutMismatch, match="layout 9"):
        run(store.check_layout())


def test_item_upserts_keep_the_newest_and_replays_change_nothing(store, run):
    from state.store import ItemState

    older, newer = ItemState("i1", True, 1000, "Nylon strings", ("Strings",)), ItemState("i1", False, 2000)
    assert run(store.apply_items([newer, older, ItemState("i2", True, 1500)])) == ["applied", "stale", "applied"]
    assert run(store.apply_items([newer])) == ["stale"]  # the same upsert again: a replay
    assert run(store.apply_items([ItemState("i1", True, 2000)])) == ["applied"]  # equal ts: the later wins
    whole = run(store.catalogue_changes(None))
    assert whole.whole and {i.item_id: (i.available, i.ts) for i in whole.items} == {"i1": (True, 2000),
                                                                                     "i2": (True, 1500)}
    assert run(store.catalogue_changes(whole.position)).items == []
    run(store.apply_items([ItemState("i2", False, 3000, "Pick", ("Picks", "Guitar"))]))
    since = run(store.catalogue_changes(whole.position))
    assert not since.whole and since.items == [ItemState("i2", False, 3000, "Pick", ("Picks", "Guitar"))]
    assert since.position != whole.position


def test_a_reader_behind_a_trimmed_change_stream_gets_the_whole_catalogue(store, run):
    from state.store import ItemState

    run(store.apply_items([ItemState("i1", True, 1000)]))
    position = run(store.catalogue_changes(None)).position
    run(store.apply_items([ItemState("i2", False, 1000)]))
    changes_key = store.keys.catalogue()[1]
    run(store.client.xtrim(changes_key, maxlen=0))  # what MAXLEN ~ does to a reader far behind
    run(store.apply_items([ItemState("i3", True, 1000)]))
    found = run(store.catalogue_changes(position))
    assert found.whole and sorted(i.item_id for i in found.items) == ["i1", "i2", "i3"]
