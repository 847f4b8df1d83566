"""The Faust app: topics, the micro-batch agent and partition-assignment hooks.

Faust gives us consumer groups, partition assignment and micro-batching; the
state lives in Redis, not in Faust tables (the embedded broker's ListOffsets
answer breaks changelog recovery, and Redis is where consumers read anyway).

Resuming. Faust seeks each assigned partition to its committed offset. Kafka
commits can run ahead of what was applied (Faust acks a batch before a crash
finishes it) or behind it, so after Faust's seek we seek again to the offset
after the last one Redis has applied for that partition. Events before it are
never re-read; the per-user fences drop any replay that still gets through.
Users whose events were applied but whose recommendations a stopped worker
never published are left marked pending in Redis; a timer refreshes them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Sequence

import faust
from faust.types import TP

from encoders.interests import BlendWeights
from state import Store
from state.keys import KeySpace
from streams.events import DeadLetter, Limits, RecommendationEvent
from streams.faults import FaultPoints
from streams.metrics import Health, Metrics
from streams.pipeline import Pipeline, RawRecord
from streams.refresh import Refresher
from streams.security import faust_credentials
from streams.settings import Settings

__all__ = ["Worker", "FaustPublisher", "load_sequence_encoder"]

log = logging.getLogger("interest_updater.worker")

RETRY_MAX_SECONDS = 30.0


class FaustPublisher:
    """Publishes to the output topics and waits until the broker has the messages."""

    def __init__(self, recs: faust.TopicT, dead: faust.TopicT) -> None:
        self.recs = recs
        self.dead = dead

    async def publish_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        await self._send_all(self.dead, [(letter.key, letter.to_json()) for letter in letters])

    async def publish_recommendations(self, events: Sequence[RecommendationEvent]) -> None:
        await self._send_all(self.recs, [(event.user_id, event.to_json()) for event in events])

    @staticmethod
    async def _send_all(topic: faust.TopicT, messages: list[tuple[str | None, bytes]]) -> None:
        pending = [await topic.send(key=key.encode() if key else None, value=value) for key, value in messages]
        await asyncio.gather(*pending)


class Worker:
    """Everything one worker process holds: app, store, encoders, metrics."""

    def __init__(self, settings: Settings, encoder, text_encoder=None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store = Store.from_url(settings.redis_url, cluster=settings.redis_cluster,
                                    keys=KeySpace(settings.key_prefix),
                                    max_clicks=settings.max_history, max_texts=settings.max_texts,
                                    lateness_ms=int(settings.lateness * 1000))
        self.app = _faust_app(settings)
        topic = self.app.topic(settings.topic_clicks, settings.topic_texts, partitions=settings.partitions,
                               key_serializer="raw", value_serializer="raw")
        self.recs = self.app.topic(settings.topic_recs, partitions=settings.partitions,
                                   key_serializer="raw", value_serializer="raw")
        self.dead = self.app.topic(settings.topic_dead, partitions=settings.partitions,
                                   key_serializer="raw", value_serializer="raw")
        refresher = Refresher(encoder, text_encoder, top_k=settings.top_k, exclude_seen=settings.exclude_seen,
                              session_gap_ms=int(settings.session_gap * 1000),
                              weights=BlendWeights.parse(settings.blend), metrics=self.metrics)
        self.pipeline = Pipeline(
            self.store, refresher, FaustPublisher(self.recs, self.dead), self.metrics,
            click_topic=settings.topic_clicks,
            limits=Limits(settings.max_text_chars, int(settings.max_future * 1000)),
            known_items=getattr(encoder, "vocab", None), faults=FaultPoints.from_env())
        self.metrics.model.labels(encoder.model_version).set(1)
        # Batches and recoveries take turns: both bump versions and publish.
        self._turn = asyncio.Lock()
        self._to_recover: dict[tuple[str, int], set[str]] = {}
        self.health = Health()
        self.app.agent(topic, name="refresh", concurrency=1)(self._consume)
        self.app.timer(1.0, name="recover-pending")(self._recover_pending)
        self.app.timer(1.0, name="heartbeat")(self._beat)
        self._swapping = False
        self._bad_versions: set[str] = set()
        if settings.checkpoint and settings.checkpoint_poll > 0:
            self.app.timer(settings.checkpoint_poll, name="checkpoint-watch")(self._watch_checkpoint)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.app.on_before_shutdown.connect(self._on_shutdown)

    async def _consume(self, stream) -> None:
        async for events in stream.take_events(self.settings.batch_max, within=self.settings.batch_within):
            records = [_raw(event) for event in events]
            await self._process_until_done(records)
            self._record_lag(records)

    def stopping(self, reason: str) -> None:
        """A signal asked the worker to stop: say so, and stop answering ready at once."""
        self.health.ready = False
        log.info("%s received: finishing the micro-batch in flight, then stopping", reason)

    async def _on_shutdown(self, app, **kwargs) -> None:
        # No need to wait for the batch in flight here: take_events acknowledges a
        # batch only once processed, and Faust's consumer waits for unacknowledged
        # events before it stops (tested: SIGTERM during a long batch loses nothing).
        self.health.ready = False

    async def _beat(self) -> None:
        self.health.beat()

    async def _process_until_done(self, records: list[RawRecord]) -> None:
        """Retry a failed batch with backoff: fences make a retry safe, dropping it is not."""
        delay = 0.5
        while True:
            try:
                async with self._turn:
                    report = await self.pipeline.process(records)
                log.debug("batch of %d: %s", len(records), report.outcomes)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  (any failure: count, log, retry)
                kind = type(exc).__name__
                self.metrics.errors.labels(kind).inc()
                log.warning("batch of %d failed (%s: %s); retrying in %.1fs", len(records), kind, exc, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _recover_pending(self) -> None:
        """Publish users a stopped worker applied events for but never published (see state.store)."""
        if not self._to_recover:
            return
        marks, self._to_recover = self._to_recover, {}
        try:
            async with self._turn:
                events = await self.pipeline.recover(marks)
            log.info("recovered %d users left unpublished by a stopped worker", len(events))
        except Exception as exc:  # noqa: BLE001  (retried on the next tick)
            self.metrics.errors.labels(type(exc).__name__).inc()
            log.warning("recovering %d pending users failed (%s); retrying", sum(map(len, marks.values())), exc)
            for key, users in marks.items():
                self._to_recover.setdefault(key, set()).update(users)

    async def _watch_checkpoint(self) -> None:
        """Swap to a new model written to --checkpoint, without a restart or a lost event.

        The new checkpoint loads in its own thread while batches go on with the
        old one; the swap itself happens between micro-batches (under the same
        lock), so every batch is refreshed by one model, and the events are
        applied to Redis whatever the model (the fences do not depend on it).
        """
        from encoders.checkpoint import read_metadata
        from encoders.errors import EncoderError

        refresher = self.pipeline.refresher
        try:
            version = read_metadata(self.settings.checkpoint).model_version
        except (EncoderError, OSError):
            return  # mid-rename by a trainer, or removed: look again next tick
        if self._swapping or version in self._bad_versions or version == refresher.encoder.model_version:
            return
        self._swapping = True
        try:
            encoder = await asyncio.to_thread(load_sequence_encoder, self.settings)
            async with self._turn:
                old, refresher.encoder = refresher.encoder, encoder
                self.pipeline.known_items = encoder.vocab
            self.metrics.model.remove(old.model_version)
            self.metrics.model.labels(encoder.model_version).set(1)
            self.metrics.model_swaps.labels("swapped").inc()
            log.info("switched model %s -> %s (%s)", old.model_version, encoder.model_version, self.settings.checkpoint)
        except Exception as exc:  # noqa: BLE001  (a bad checkpoint must not stop the worker)
            self._bad_versions.add(version)
            self.metrics.model_swaps.labels("failed").inc()
            log.warning("could not load new checkpoint %s (%s); keeping model %s", version, exc,
                        refresher.encoder.model_version)
        finally:
            self._swapping = False

    def _record_lag(self, records: list[RawRecord]) -> None:
        last: dict[tuple[str, int], int] = {}
        for record in records:
            last[(record.topic, record.partition)] = record.offset
        consumer = self.app.consumer
        for (topic, partition), offset in last.items():
            highwater = consumer.highwater(TP(topic, partition))
            if highwater is not None:
                self.metrics.lag.labels(topic, str(partition)).set(max(0, highwater - offset - 1))

    async def _on_assigned(self, app, assigned, **kwargs) -> None:
        consumer = app.consumer
        _set_fetch_max_wait(consumer, self.settings.fetch_max_wait)
        if not getattr(consumer, "_iu_resume_wrapped", False):
            original = consumer.perform_seek

            async def perform_seek() -> None:
                await original()
                await self._seek_to_applied(consumer.assignment())

            consumer.perform_seek = perform_seek
            consumer._iu_resume_wrapped = True
        self.health.ready = True
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))

    async def _seek_to_applied(self, assignment) -> None:
        """Seek to Redis's resume offsets and queue the users left pending on these partitions."""
        for topic in (self.settings.topic_clicks, self.settings.topic_texts):
            partitions = [tp.partition for tp in assignment if tp.topic == topic]
            applied = await self.store.resume_offsets(topic)
            for partition in partitions:
                if partition in applied:
                    await self.app.consumer.seek(TP(topic, partition), applied[partition] + 1)
                    log.info("resume %s[%d] at offset %d (from Redis)", topic, partition, applied[partition] + 1)
            for partition, users in (await self.store.pending_users(topic, partitions)).items():
                self._to_recover.setdefault((topic, partition), set()).update(users)


def load_sequence_encoder(settings: Settings):
    """The `InterestEncoder` of --checkpoint, with the settings that shape its interests."""
    from encoders.inference import InterestEncoder
    from encoders.interests import DAY_MS

    return InterestEncoder.from_checkpoint(settings.checkpoint, device=settings.device,
                                           half_life_ms=settings.long_term_half_life * DAY_MS)


def _set_fetch_max_wait(consumer, seconds: float) -> None:
    """Faust creates its aiokafka consumer with fetch_max_wait_ms=1500 and no setting to change it.

    The embedded broker answers a fetch only when that wait expires, even when
    events are waiting (measured: a 419 ms median delivery at 1500, 28 ms at
    100), so it is set on the consumer's fetcher here, before the first fetch of
    each assignment. On Kafka a shorter wait only adds empty fetches while idle.
    """
    fetcher = getattr(getattr(getattr(consumer, "_thread", None), "_consumer", None), "_fetcher", None)
    if fetcher is None:
        log.warning("cannot set --fetch-max-wait: this Faust consumer has no aiokafka fetcher")
        return
    fetcher._fetch_max_wait_ms = int(seconds * 1000)


def _raw(event) -> RawRecord:
    message = event.message
    return RawRecord(message.topic, message.partition, message.offset, message.key, message.value or b"",
                     int(message.timestamp * 1000))


def _faust_app(settings: Settings) -> faust.App:
    # Session timeout near 6 s: the embedded broker completes a group join only
    # after about half of it. Idempotent/transactional producers fail there, so
    # processing_guarantee stays at_least_once; Redis fences give exactly-once effects.
    return faust.App(
        settings.app_id, broker=[f"kafka://{host}" for host in settings.broker.split(",")],
        store="memory://", topic_partitions=settings.partitions, topic_allow_declare=True,
        broker_session_timeout=6, broker_heartbeat_interval=2, broker_rebalance_timeout=30,
        consumer_auto_offset_reset="earliest", web_enabled=False, processing_guarantee="at_least_once",
        producer_acks=-1, stream_buffer_maxsize=4 * settings.batch_max,
        broker_credentials=faust_credentials(settings),
    )
