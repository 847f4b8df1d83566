"""The micro-batch pipeline without a broker: real Redis, a real trained encoder,
and a publisher that keeps what it is given (Kafka's behaviour is not under test here)."""

import time

import orjson
import pytest

from streams.metrics import Metrics
from streams.pipeline import Pipeline, RawRecord
from streams.refresh import Refresher

NOW = int(time.time() * 1000)


@pytest.fixture()
def pipeline(store, synthetic_checkpoint, keeping_publisher):
    from encoders.inference import InterestEncoder

    encoder = InterestEncoder.from_checkpoint(synthetic_checkpoint, device="cpu")
    refresher = Refresher(encoder, None, top_k=5)
    built = Pipeline(store, refresher, keeping_publisher, Metrics(), click_topic="clicks",
                     known_items=encoder.vocab)
    yield built
    built.close()


def click(offset, user, item, ts, partition=0, **extra):
    body = {"event_id": f"e{offset}", "user_id": user, "item_id": item, "action": "click", "ts": ts, **extra}
    return RawRecord("clicks", partition, offset, user.encode(), orjson.dumps(body), NOW)


def test_a_batch_is_applied_once_and_every_changed_user_is_published(pipeline, run):
    batch = [click(0, "u1", "i1", NOW - 3000), click(1, "u1", "i3", NOW - 2000),
             click(2, "u2", "i0", NOW - 1000),
             RawRecord("clicks", 0, 3, b"u1", b"{oops", NOW),
             click(4, "u1", "no-such-item", NOW - 500)]
    report = run(pipeline.process(batch))
    assert report.outcomes == {"applied": 4, "dead_letter": 1}
    assert [d.reason for d in pipeline.publisher.dead] == ["bad_json"]
    assert "clicks[0]@3" in pipeline.publisher.dead[0].error
    recs = {r.user_id: r for r in pipeline.publisher.recs}
    assert set(recs) == {"u1", "u2"} and all(r.version == 1 for r in recs.values())
    assert len(recs["u1"].items) == 5
    seen = {"i1", "i3", "no-such-item"}
    assert not seen & {item for item, _ in recs["u1"].items}
    assert pipeline.metrics.unknown_items._value.get() == 1

    again = run(pipeline.process(batch))
    assert again.outcomes == {"replay": 4, "dead_letter": 1} and again.recommendations == []


def test_context_keys_nobody_documented_are_counted_once_and_a_bad_context_is_dead_lettered(pipeline, run):
    batch = [click(0, "u1", "i1", NOW - 3000, context={"device": "phone", "page": "home", "ab": "b"}),
             click(1, "u1", "i3", NOW - 2000, context={"lat": 40.7}),
             click(2, "u2", "i0", NOW - 1000, context={"region": "US-NY", "lat": 40.7, "lon": -74.0})]
    report = run(pipeline.process(batch))
    assert report.outcomes == {"applied": 2, "dead_letter": 1}
    assert [(d.reason, d.offset) for d in pipeline.publisher.dead] == [("bad_context", 1)]
    assert "context.lat and context.lon come together" in pipeline.publisher.dead[0].error
    run(pipeline.process(batch))  # replayed: nothing applied, nothing counted again
    assert pipeline.metrics.context_keys_ignored._value.get() == 2
    # A click's context is kept with it in Redis, as the word training reads (`encoders.features.context_word`).
    from encoders.features import context_word
    from streams.events import Context

    assert run(pipeline.store.history("u2")).clicks.context.tolist() == [
        context_word(NOW - 1000, Context(region="US-NY", lat=40.7, lon=-74.0))]
    phone = context_word(NOW - 3000, Context(device="phone"))
    assert run(pipeline.store.history("u1")).clicks.context.tolist() == [phone]


def test_versions_rise_by_one_per_refresh(pipeline, run):
    for offset in range(3):
        run(pipeline.process([click(offset, "u1", f"i{offset}", NOW - 10_000 + offset)]))
    assert [r.version for r in pipeline.publisher.recs] == [1, 2, 3]


def test_a_late_event_is_dead_lettered_after_the_store_decides(pipeline, run):
    pipeline.store.lateness_ms = 60_000
    run(pipeline.process([click(0, "u1", "i1", NOW - 1000)]))
    report = run(pipeline.process([click(1, "u1", "i3", NOW - 3_600_000)]))
    assert report.outcomes == {"dead_letter": 1} and report.dead_letters[0].reason == "late"


def test_a_batch_ending_in_dead_letters_still_advances_the_resume_offset(pipeline, run):
    run(pipeline.process([click(0, "u1", "i1", NOW - 1000), RawRecord("clicks", 0, 1, b"u1", b"{", NOW)]))
    assert run(pipeline.store.resume_offsets("clicks")) == {0: 1}


def text(offset, user, body, ts, partition=0):
    value = {"event_id": f"t{offset}", "user_id": user, "kind": "search", "text": body, "ts": ts}
    return RawRecord("texts", partition, offset, user.encode(), orjson.dumps(value), NOW)


def test_events_carry_every_interest_with_the_version_at_which_it_changed(pipeline, run):
    run(pipeline.process([click(0, "u1", "i1", NOW - 9000), click(1, "u1", "i2", NOW - 8000)]))
    run(pipeline.process([click(2, "u1", "i3", NOW - 7000)]))
    run(pipeline.process([text(0, "u1", "jazz records", NOW - 6000)]))
    first, second, third = pipeline.publisher.recs
    assert set(first.interests) >= {"current", "long_term", "session"} and first.drift is None
    assert second.drift is not None and 0.0 <= second.drift <= 2.0
    assert second.interest_profile["long_term"]["version"] == 2
    assert second.interest_profile["session"]["events"] == 3
    assert third.interests == ("current", "text")
    assert third.interest_profile["long_term"]["version"] == 2  # a text does not move the long-term interest
    assert third.interest_profile["text"]["version"] == 3 and third.interest_profile["text"]["texts"] == 1
    assert len(third.interest_profile["current"]["vector"]) == pipeline.refresher.encoder.dim
    assert third.drift is None  # drift is measured when clicks move the long-term interest
    body = orjson.loads(second.to_json())
    assert body["drift"] == body["interest_profile"]["long_term"]["drift"] == second.drift
    from streams.cli.format import format_interests
    line = format_interests(body)
    assert f"long-term drift {second.drift:.3f}" in line and "session 3 events" in line
    assert pipeline.metrics.drift._sum.get() == pytest.approx(second.drift)
    stored = run(pipeline.store.profile("u1"))
    assert stored.versions["long_term"] == 2 and stored.versions["text"] == 3
    assert len(stored.vectors["long_term"]) == pipeline.refresher.encoder.dim
    assert stored.body["texts"] == 1 and stored.body["items"] == [[i, round(s, 6)] for i, s in third.items]


def test_the_category_weight_moves_recommendations_toward_the_users_categories(pipeline, run):
    from encoders.interests import BlendWeights

    encoder = pipeline.refresher.encoder
    if not encoder.categories:
        pytest.skip("this checkpoint has no categories")
    favourite = encoder.categories.names[0]
    items = [i for i, cats in encoder.categories.categories.items() if favourite in cats][:6]
    run(pipeline.process([click(n, "u9", item, NOW - 9000 + n) for n, item in enumerate(items)]))
    share = lambda recs: sum(favourite in encoder.categories.categories.get(i, ()) for i, _ in recs.items)
    plain = pipeline.publisher.recs[-1]
    pipeline.refresher.weights = BlendWeights(categories=5.0)
    run(pipeline.process([click(len(items), "u9", items[0] + "-again", NOW - 100)]))
    assert share(pipeline.publisher.recs[-1]) > share(plain)
    assert pipeline.publisher.recs[-1].interest_profile["categories"]["top"][0][0] == favourite


@pytest.fixture(scope="module")
def minilm():
    from encoders.nn.text import TextEncoder

    return TextEncoder(device="cpu")


def test_a_user_whose_first_event_is_a_search_gets_recommendations_from_the_text(pipeline, minilm, run):
    encoder = pipeline.refresher.encoder
    assert encoder.fusion is not None  # the synthetic checkpoint is trained with a text fusion
    pipeline.refresher.text_encoder = minilm
    run(pipeline.process([text(0, "s1", "looking for jazz", NOW - 1000),
                          text(1, "s2", "best metal albums", NOW - 1000)]))
    recs = {r.user_id: r for r in pipeline.publisher.recs}
    genres = {user: [encoder.categories.categories[item][0] for item, _ in rec.items] for user, rec in recs.items()}
    assert all(len(rec.items) == 5 and rec.interests == ("current", "text") for rec in recs.values())
    assert "jazz" in genres["s1"] and "metal" in genres["s2"], genres
    # A click later, behaviour and text are fused: the list follows both.
    run(pipeline.process([click(0, "s1", "i0", NOW - 500)]))
    assert set(pipeline.publisher.recs[-1].interests) >= {"current", "long_term", "session"}


def test_overlapped_stages_keep_the_order_and_the_marks_of_a_later_batch(pipeline, run):
    """Batch 2 is ingested while batch 1 waits to be refreshed (as the worker overlaps them)."""
    first = run(pipeline.ingest([click(0, "u1", "i1", NOW - 3000), click(1, "u2", "i2", NOW - 3000)]))
    second = run(pipeline.ingest([click(2, "u1", "i3", NOW - 2000)]))
    run(pipeline.refresh(first))
    run(pipeline.flush_marks())
    pending = run(pipeline.store.pending_users("clicks", [0]))
    assert pending == {0: {"u1": "2"}}  # batch 1 cleared u2, not u1: batch 2 marked u1 again
    run(pipeline.refresh(second))
    run(pipeline.flush_marks())
    assert run(pipeline.store.pending_users("clicks", [0])) == {}
    u1 = [r for r in pipeline.publisher.recs if r.user_id == "u1"]
    assert [r.version for r in u1] == [1, 2] and u1[-1].clicks_applied == 2
    # Redis had no long-term interest for u1 when batch 2 was applied; the drift is from batch 1's.
    assert second.users[0].long_term is None and u1[-1].drift is not None


def test_a_batch_retried_after_a_lost_reply_counts_its_events_applied_and_refreshes_the_users(pipeline, run):
    from state import Entry, StoredClick

    run(pipeline.process([click(0, "u1", "i1", NOW - 5000)]))  # the worker has seen offset 0 applied
    batch = [click(1, "u1", "i2", NOW - 4000), click(2, "u2", "i3", NOW - 4000)]
    # The first attempt reached Redis, but the connection broke before its reply came back.
    run(pipeline.store.apply([Entry(user, "clicks", 0, offset, StoredClick(f"e{offset}", item, 3, NOW - 4000))
                              for offset, user, item in ((1, "u1", "i2"), (2, "u2", "i3"))]))
    report = run(pipeline.process(batch))
    assert report.outcomes == {"applied": 2, "dead_letter": 0}
    assert {r.user_id: r.clicks_applied for r in report.recommendations} == {"u1": 2, "u2": 1}
    again = run(pipeline.process(batch))  # a true replay stays one
    assert again.outcomes == {"replay": 2, "dead_letter": 0} and again.recommendations == []


def test_a_record_that_fails_alone_is_dead_lettered_and_the_rest_of_its_batch_goes_on(pipeline, run):
    """A failure that is not a lost connection would fail every retry: the batch is split down to the record."""
    embed = pipeline.refresher.embed_texts

    def embed_refusing_poison(texts):
        if "poison" in texts:
            raise ValueError("cannot embed this text")
        return embed(texts)

    pipeline.refresher.embed_texts = embed_refusing_poison
    batch = [click(0, "u1", "i1", NOW - 3000), click(1, "u2", "i2", NOW - 3000), click(2, "u3", "i3", NOW - 3000)]
    batch += [text(0, "u3", "jazz", NOW - 2000), text(1, "u2", "poison", NOW - 2000)]
    report = run(pipeline.process(batch))
    assert report.outcomes == {"applied": 4, "dead_letter": 1}
    [letter] = pipeline.publisher.dead
    assert (letter.topic, letter.offset, letter.reason) == ("texts", 1, "processing_error")
    assert "ValueError: cannot embed this text" in letter.error
    assert {r.user_id for r in pipeline.publisher.recs} == {"u1", "u2", "u3"}
    assert pipeline.metrics.isolated.labels("ingest")._value.get() == 1
    assert run(pipeline.store.resume_offsets("texts")) == {0: 1}  # passed: no one reads it again


def refuse_refresh_of(pipeline, bad_user: str) -> None:
    """Make the real refresher raise for any call that includes ``bad_user`` (an encoder bug for one user)."""
    refresh = pipeline.refresher.refresh

    def refresh_refusing(users, changed_clicks, changed_texts):
        if any(u.user_id == bad_user for u in users):
            raise RuntimeError("the encoder cannot take this user")
        return refresh(users, changed_clicks, changed_texts)

    pipeline.refresher.refresh = refresh_refusing


def test_a_user_whose_refresh_fails_alone_has_their_events_dead_lettered_and_the_others_are_published(
        pipeline, run):
    refuse_refresh_of(pipeline, "u-bad")
    report = run(pipeline.process([click(0, "u1", "i1", NOW - 3000), click(1, "u-bad", "i2", NOW - 3000),
                                   click(2, "u-bad", "i3", NOW - 2500), click(3, "u2", "i3", NOW - 2000)]))
    assert report.outcomes == {"applied": 4, "dead_letter": 0}
    assert sorted(r.user_id for r in report.recommendations) == ["u1", "u2"]
    assert [(d.offset, d.reason) for d in pipeline.publisher.dead] == [(1, "processing_error"),
                                                                      (2, "processing_error")]
    assert "refreshing user 'u-bad' failed: RuntimeError" in pipeline.publisher.dead[0].error
    [history] = run(pipeline.store.histories(["u-bad"]))
    assert len(history.clicks) == 2  # the events stay applied; only the refresh was given up
    assert run(pipeline.store.pending_users("clicks", [0])) == {}


def test_a_pending_user_whose_recovery_fails_alone_is_given_up_and_the_others_are_published(pipeline, run):
    batch = [click(0, "u1", "i1", NOW - 3000), click(1, "u-bad", "i2", NOW - 3000), click(2, "u2", "i3", NOW - 2000)]
    run(pipeline.ingest_isolating(batch))  # applied and marked pending, never refreshed: a worker that died
    marks = {("clicks", 0): run(pipeline.store.pending_users("clicks", [0]))[0]}
    assert set(marks["clicks", 0]) == {"u1", "u-bad", "u2"}
    refuse_refresh_of(pipeline, "u-bad")
    events = run(pipeline.recover(marks))
    assert sorted(e.user_id for e in events) == sorted(r.user_id for r in pipeline.publisher.recs) == ["u1", "u2"]
    assert pipeline.metrics.unrecovered._value.get() == 1
    assert run(pipeline.store.pending_users("clicks", [0])) == {}  # not retried every second
    [history] = run(pipeline.store.histories(["u-bad"]))
    assert len(history.clicks) == 1


def test_a_batch_retried_after_a_lost_connection_publishes_its_dead_letters_once(pipeline, run):
    from aiokafka.errors import KafkaConnectionError

    publish = pipeline.publisher.publish_recommendations
    calls = []

    async def publish_failing_once(events):
        calls.append(len(events))
        if len(calls) == 1:
            raise KafkaConnectionError("broker unreachable")
        await publish(events)

    pipeline.publisher.publish_recommendations = publish_failing_once
    batch = [click(0, "u1", "i1", NOW - 3000), RawRecord("clicks", 0, 1, b"u1", b"{oops", NOW)]
    parts = run(pipeline.ingest_isolating(batch))
    with pytest.raises(KafkaConnectionError):  # transient: the worker retries the stage as it is
        run(pipeline.refresh(parts[0]))
    run(pipeline.refresh(parts[0]))
    assert [d.reason for d in pipeline.publisher.dead] == ["bad_json"]
    assert [r.user_id for r in pipeline.publisher.recs] == ["u1"]


def test_a_late_dead_letter_is_published_by_the_retry_when_the_broker_failed_after_the_redis_step(pipeline, run):
    from aiokafka.errors import KafkaConnectionError

    pipeline.store.lateness_ms = 10_000
    publish = pipeline.publisher.publish_dead_letters
    tries = []

    async def publish_failing_once(letters):
        tries.append([d.reason for d in letters])
        if len(tries) == 1:
            raise KafkaConnectionError("broker unreachable")
        await publish(letters)

    pipeline.publisher.publish_dead_letters = publish_failing_once
    batch = [click(0, "u1", "i1", NOW - 1000), click(1, "u1", "i2", NOW - 60_000)]
    with pytest.raises(KafkaConnectionError):  # the events are in Redis; the late one's dead letter is not out
        run(pipeline.process(batch))
    report = run(pipeline.process(batch))  # the worker's retry: the late event is late again, not a replay
    assert report.outcomes == {"replay": 1, "dead_letter": 1}
    assert [(d.reason, d.offset) for d in pipeline.publisher.dead] == [("late", 1)] and len(tries) == 2


def test_only_lost_connections_and_timeouts_are_transient():
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, UnknownTopicOrPartitionError
    from redis import exceptions as redis_errors

    from streams.retry import is_transient

    for exc in (ConnectionRefusedError(), TimeoutError(), redis_errors.ConnectionError("down"),
                redis_errors.BusyLoadingError("loading"), redis_errors.TimeoutError(), KafkaConnectionError(),
                KafkaTimeoutError(), UnknownTopicOrPartitionError()):
        assert is_transient(exc), exc
    for exc in (ValueError(), RuntimeError(), redis_errors.ResponseError("ERR script"), KeyError("x")):
        assert not is_transient(exc), exc


def item(offset, item_id, available, ts, partition=0, **extra):
    body = {"item_id": item_id, "available": available, "ts": ts, **extra}
    return RawRecord("items", partition, offset, item_id.encode(), orjson.dumps(body), NOW)


def catalogued_pipeline(store, checkpoint, publisher):
    """A worker's pipeline with the live catalogue, as `streams.app.Worker` builds it."""
    from encoders.inference import InterestEncoder
    from streams.catalogue import Catalogue

    metrics = Metrics()
    catalogue = Catalogue(store, metrics)
    refresher = Refresher(InterestEncoder.from_checkpoint(checkpoint, device="cpu"), None, top_k=5,
                          metrics=metrics, catalogue=catalogue)
    return Pipeline(store, refresher, publisher, metrics, click_topic="clicks", items_topic="items",
                    catalogue=catalogue)


def test_an_item_announced_unavailable_is_in_no_list_published_after_it_on_any_worker(store, synthetic_checkpoint,
                                                                                       run):
    from tests.streams.conftest import KeepingPublisher

    one = catalogued_pipeline(store, synthetic_checkpoint, KeepingPublisher())
    other = catalogued_pipeline(store, synthetic_checkpoint, KeepingPublisher())  # a second worker, same Redis
    try:
        run(one.process([click(0, "u1", "i1", NOW - 9000), click(1, "u2", "i2", NOW - 9000)]))
        first = {r.user_id: [i for i, _ in r.items] for r in one.publisher.recs}
        gone = first["u1"][0]
        report = run(one.process([item(0, gone, False, NOW - 5000, title="Old stock", categories=["Misc"]),
                                  click(2, "u1", "i3", NOW - 8000), click(3, "u2", "i4", NOW - 8000),
                                  item(1, "brand-new", True, NOW - 5000), RawRecord("items", 0, 2, b"x", b"{", NOW)]))
        assert report.outcomes == {"applied": 4, "dead_letter": 1}
        assert [d.reason for d in one.publisher.dead] == ["bad_json"]
        run(other.process([click(4, "u1", "i5", NOW - 7000, partition=1), click(5, "u3", "i1", NOW - 7000,
                                                                                   partition=1)]))
        after = one.publisher.recs[2:] + other.publisher.recs
        assert len(after) == 4 and all(len(r.items) == 5 for r in after)
        assert not any(gone == i for r in after for i, _ in r.items)
        assert run(store.resume_offsets("items")) == {0: 2}
        metrics = one.metrics
        assert metrics.catalogue_items.labels("unavailable")._value.get() == 1
        assert metrics.catalogue_items.labels("unscored")._value.get() == 1  # brand-new: not in the model yet
        assert metrics.events.labels("items", "applied")._value.get() == 2

        # Replayed after a crash: nothing changes; announced again as available, it may come back.
        again = run(one.process([item(0, gone, False, NOW - 5000, title="Old stock", categories=["Misc"])]))
        assert again.outcomes == {"stale": 1, "dead_letter": 0}
        run(one.process([item(3, gone, True, NOW - 4000), click(6, "u1", "i6", NOW - 6000)]))
        assert one.catalogue.unavailable == frozenset() and one.refresher.encoder._blocked is None
    finally:
        one.close()
        other.close()


def test_a_new_item_is_scored_from_its_title_and_left_out_once_clicked(pipeline, minilm, run):
    from streams.catalogue import Catalogue

    catalogue = Catalogue(pipeline.store, pipeline.metrics)
    pipeline.catalogue, pipeline.items_topic = catalogue, "items"
    pipeline.refresher.catalogue, pipeline.refresher.text_encoder = catalogue, minilm
    pipeline.refresher.metrics = pipeline.metrics
    encoder = pipeline.refresher.encoder
    run(pipeline.process([item(0, "new-jazz", True, NOW - 5000, title="Late night jazz trio", categories=["jazz"]),
                          item(1, "new-metal", True, NOW - 5000, title="Heavy metal anthems", categories=["metal"]),
                          item(2, "no-text", True, NOW - 5000),
                          text(0, "s1", "looking for jazz", NOW - 1000),
                          text(1, "s2", "best metal albums", NOW - 1000)]))
    assert set(encoder.new_items) == {"new-jazz", "new-metal"}
    assert pipeline.metrics.catalogue_items.labels("from_text")._value.get() == 2
    assert pipeline.metrics.catalogue_items.labels("unscored")._value.get() == 1  # no title, no categories
    # Each searcher's interest scores the new item of their genre above the other one.
    current = {u: run(pipeline.store.profile(u)).vectors["current"] for u in ("s1", "s2")}
    rows = {i: encoder.row(i) for i in ("new-jazz", "new-metal")}
    score = {(u, i): float(encoder._table[r].numpy() @ current[u]) for u in current for i, r in rows.items()}
    assert score["s1", "new-jazz"] > score["s1", "new-metal"] and score["s2", "new-metal"] > score["s2", "new-jazz"]

    run(pipeline.process([click(0, "s1", "new-jazz", NOW - 500), item(3, "new-metal", False, NOW - 400)]))
    rec = pipeline.publisher.recs[-1]
    assert rec.user_id == "s1" and not {"new-jazz", "new-metal"} & {i for i, _ in rec.items}
    assert encoder.new_items == ("new-jazz",)


def test_a_model_with_context_reads_each_clicks_context_back_from_redis(store, keeping_publisher, run):
    import numpy as np
    import torch

    from encoders.config import EncoderConfig
    from encoders.inference import InterestEncoder
    from encoders.nn.model import SequenceEncoder
    from encoders.vocab import ItemVocab

    torch.manual_seed(0)
    vocab = ItemVocab([f"i{n}" for n in range(10)])
    model = SequenceEncoder(EncoderConfig(n_items=len(vocab), d_model=16, n_layers=1, n_heads=1, max_len=8,
                                          block="sasrec", context=True))
    encoder = InterestEncoder(model, vocab)
    pipeline = Pipeline(store, Refresher(encoder, None, top_k=3), keeping_publisher, Metrics(), click_topic="clicks",
                        known_items=encoder.vocab)
    here = {"device": "phone", "lat": 40.758, "lon": -73.9855, "tz_offset_min": -300}
    batch = [click(n, user, f"i{n % 3}", NOW - 5000 + n, **extra) for n, (user, extra) in
             enumerate([("with", {"context": here}), ("without", {})] * 3)]
    run(pipeline.process(batch))
    pipeline.close()
    vectors = {user: run(store.profile(user)).vectors["current"] for user in ("with", "without")}
    plain = encoder.encode([[(f"i{n % 3}", "click", NOW - 5000 + n) for n in range(1, 6, 2)]])[0]
    np.testing.assert_allclose(vectors["without"], plain, atol=1e-5)  # no context: the "unknown" rows
    assert not np.allclose(vectors["with"], vectors["without"], atol=1e-4)  # the stored context reached the model
