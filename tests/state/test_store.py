"""The store against a real Redis-compatible server (Valkey, started by the fixture)."""

import pytest

from state import Entry, StoredClick, StoredText
from state.keys import KeySpace


def click(user, offset, ts, event_id=None, partition=0, item=None):
    record = StoredClick(event_id or f"{user}-{offset}", item or f"item{offset}", "view", ts)
    return Entry(user, "clicks", partition, offset, record)


def test_applies_once_and_fences_replays(store, run):
    batch = [click("u1", 0, 1000), click("u1", 1, 2000), click("u2", 2, 1500)]
    first = run(store.apply(batch))
    assert first.outcomes == ["applied"] * 3
    assert {u.user_id: len(u.clicks) for u in first.users} == {"u1": 2, "u2": 1}
    again = run(store.apply(batch))
    assert again.outcomes == ["replay"] * 3 and again.users == []
    assert run(store.meta("u1"))["applied:c"] == 2
    assert run(store.resume_offsets("clicks")) == {0: 2}


def test_same_event_id_at_a_new_offset_is_a_duplicate(store, run):
    run(store.apply([click("u1", 0, 1000, event_id="e")]))
    assert run(store.apply([click("u1", 5, 1000, event_id="e")])).outcomes == ["duplicate"]


def test_out_of_order_events_are_stored_in_time_order(store, run):
    run(store.apply([click("u1", 0, 5000), click("u1", 1, 1000), click("u1", 2, 3000)]))
    assert [c.ts for c in run(store.history("u1")).clicks] == [1000, 3000, 5000]


def test_events_older_than_the_lateness_bound_are_refused(store, run):
    store.lateness_ms = 10_000
    result = run(store.apply([click("u1", 0, 100_000), click("u1", 1, 95_000), click("u1", 2, 50_000)]))
    assert result.outcomes == ["applied", "applied", "late"]


def test_history_is_bounded_and_counters_are_not(store, run):
    store.max_clicks = 3
    result = run(store.apply([click("u1", i, 1000 + i) for i in range(5)]))
    assert [c.ts for c in result.users[0].clicks] == [1002, 1003, 1004]
    assert run(store.meta("u1"))["applied:c"] == 5
    keys = KeySpace().user("u1")
    assert run(store.client.hlen(keys.clicks_data)) == 3


def test_clicks_and_texts_fence_separately_and_return_both_histories(store, run):
    text = Entry("u1", "texts", 0, 0, StoredText("t1", "search", 1500, b"\x01\x02", "i9"))
    result = run(store.apply([click("u1", 0, 1000), text]))
    assert result.outcomes == ["applied", "applied"]
    (user,) = result.users
    assert len(user.clicks) == 1 and user.texts[0].embedding == b"\x01\x02" and user.texts[0].item_id == "i9"


def test_write_profiles_returns_increasing_versions(store, run):
    from state import Profile

    profile = Profile("u1", {"current": b"\x00" * 8}, b"[]", (), "m1", 1000)
    assert [w.version for w in run(store.write_profiles([profile]))] == [1]
    written = run(store.write_profiles([profile, Profile("u2", {}, b"[]", (), "m1", 5)]))
    assert [w.version for w in written] == [2, 1]
    assert run(store.profile("u1"))["model_version"] == b"m1"
    assert run(store.profile("u1"))["vector:current"] == b"\x00" * 8


def test_the_previous_long_term_vector_comes_back_with_the_history(store, run):
    from state import Profile

    assert run(store.apply([click("u1", 0, 1000)])).users[0].long_term is None  # a new user has none
    run(store.write_profiles([Profile("u1", {"long_term": b"\x01" * 8}, b"[]", (), "m1", 1000)]))
    (user,) = run(store.apply([click("u1", 1, 2000)])).users
    assert user.long_term == b"\x01" * 8  # as it was before this batch's refresh
    assert run(store.histories(["u1", "u2"]))[0].long_term == b"\x01" * 8  # the recovery path reads it too
    assert run(store.histories(["u2"]))[0].long_term is None


def test_each_interest_keeps_the_version_at_which_it_last_changed(store, run):
    from state import Profile

    names = ("current", "long_term", "text")
    first = Profile("u1", {}, b"[]", (), "m1", 1000, changed=("current", "long_term"))
    second = Profile("u1", {}, b"[]", (), "m1", 2000, changed=("current", "text"))
    assert run(store.write_profiles([first], names))[0].interest_versions == {"current": 1, "long_term": 1}
    (written,) = run(store.write_profiles([second], names))
    assert written.version == 2 and written.interest_versions == {"current": 2, "long_term": 1, "text": 2}
    assert run(store.profile("u1"))["version:long_term"] == b"1"


def test_resume_offsets_never_move_backwards(store, run):
    run(store.apply([click("u1", 7, 1000)]))
    run(store.apply([click("u1", 3, 2000)]))
    assert run(store.resume_offsets("clicks")) == {0: 7}


def test_keys_of_one_user_share_one_hash_tag():
    keys = KeySpace("iu").user("user:42")
    tags = {key[key.index("{"): key.index("}") + 1] for key in keys.script_keys() + [keys.profile]}
    assert tags == {"{u:user:42}"}


@pytest.mark.parametrize("user_id", ["a{b", "a}b", "{u:a}", "a b", "a\nb", "a\x00", ""])
def test_ids_that_could_leave_their_hash_tag_are_refused(user_id):
    with pytest.raises(ValueError, match="cannot be part of a Redis key"):
        KeySpace("iu").user(user_id)


def test_ids_with_colons_and_stars_stay_apart(store, run):
    users = ["a", "a:b", "a*", "*", "a:clicks", "a:*"]
    run(store.apply([click(u, i, 1000 + i, item=f"it:{i}*") for i, u in enumerate(users)]))
    for i, user in enumerate(users):
        assert [c.item_id for c in run(store.history(user)).clicks] == [f"it:{i}*"]


def test_a_resent_old_event_is_a_duplicate_not_late(store, run):
    store.lateness_ms = 10
    run(store.apply([click("u1", 0, 1000, event_id="old"), click("u1", 1, 9000)]))
    assert run(store.apply([click("u1", 2, 1000, event_id="old")])).outcomes == ["duplicate"]


def test_applied_clicks_are_ranked_against_the_last_published_list(store, run):
    from state import Profile

    run(store.apply([click("u1", 0, 1000)]))
    run(store.write_profiles([Profile("u1", {}, b"[]", ("a", "item5", "b"), "m1", 1000)]))
    result = run(store.apply([click("u1", 5, 2000), click("u1", 6, 3000, item="b"),
                              click("u1", 7, 4000, item="zz"), click("u1", 6, 5000, item="b")]))
    assert result.outcomes == ["applied", "applied", "applied", "replay"]
    assert result.ranks == [2, 3, 0, -1]
    assert result.users[0].clicks_applied == 4


def test_a_user_without_a_list_is_not_ranked(store, run):
    assert run(store.apply([click("u9", 0, 1000)])).ranks == [-1]


def test_scripts_lost_by_redis_are_loaded_again_and_the_batch_applied_once(store, run):
    """SCRIPT FLUSH (what a Redis restart does to the script cache) between two batches."""
    from state import Profile

    run(store.apply([click("u1", 0, 1000)]))
    run(store.client.script_flush())  # every node of a Cluster
    second = run(store.apply([click("u1", 1, 2000), click("u1", 0, 1000)]))
    assert second.outcomes == ["applied", "replay"]
    assert run(store.meta("u1"))["applied:c"] == 2
    run(store.client.script_flush())
    written = run(store.write_profiles([Profile("u1", {}, b"[]", (), "m", 2000, {}, changed=("current",))],
                                       ["current"]))
    assert written[0].version == 1 and written[0].interest_versions == {"current": 1}
