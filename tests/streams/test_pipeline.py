"""The micro-batch pipeline without a broker: real Redis, a real trained encoder,
and a publisher that keeps what it is given (Kafka's behaviour is not under test here)."""

import time

import orjson
import pytest

from streams.metrics import Metrics
from streams.pipeline import Pipeline, RawRecord
from streams.refresh import Refresher

NOW = int(time.time() * 1000)


class KeepingPublisher:
    def __init__(self):
        self.dead, self.recs = [], []

    async def publish_dead_letters(self, letters):
        self.dead += letters

    async def publish_recommendations(self, events):
        self.recs += events


@pytest.fixture()
def pipeline(store, synthetic_checkpoint):
    from encoders.inference import InterestEncoder

    encoder = InterestEncoder.from_checkpoint(synthetic_checkpoint, device="cpu")
    refresher = Refresher(encoder, None, top_k=5)
    built = Pipeline(store, refresher, KeepingPublisher(), Metrics(), click_topic="clicks",
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
