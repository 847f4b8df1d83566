"""The worker's runtime: one consumer in a Kafka group, the micro-batch loop, timers, publishing.

Consumption. The worker is an aiokafka consumer in the group ``--app-id``,
subscribed to the click and text topics. Each turn of the loop takes every
record the consumer has already fetched (``getmany``, up to ``--batch-max``;
it waits up to ``--batch-within`` only when nothing is there) and hands the
batch to `streams.pipeline.Pipeline`. A micro-batch is therefore whatever
arrived while the previous one was processed: small and fresh when traffic is
light, large when it is heavy. This replaced a Faust agent: Faust's
per-message path (conductor, stream, event and acknowledgement objects) costs
about 220 us of one core per event here (``bench/consume_ceiling.py``: 4,487
events/s from an agent that only takes events, against 388,000 from
``getmany``), which alone would cap a worker below the capacity target.
Faust itself used aiokafka underneath, with the same group protocol.

Resuming. When partitions are assigned the worker seeks each to the offset
after the last one Redis has applied for it (written atomically with the
events, see `state.store`), whatever Kafka's committed offset says: events
before it are never re-read, and the per-user fences drop any replay that
still gets through. Kafka commits (every second, on revocation and on exit)
only serve outside tools that watch the group's lag. Users whose events were
applied but whose recommendations a stopped worker never published are left
marked pending in Redis; a timer refreshes them.

Rebalancing and stopping. A revocation waits for the batch in flight, then
commits; records fetched for partitions this worker no longer owns are
dropped before processing (the new owner reads them from Redis's offsets).
SIGTERM or SIGINT flips readiness at once, finishes the batch in flight,
commits, leaves the group and exits with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from typing import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.protocol.transaction import InitProducerIdRequest

from encoders.interests import BlendWeights
from state import Store
from state.keys import KeySpace
from state.store import Marks
from streams.catalogue import Catalogue
from streams.errors import ConfigurationError
from streams.events import DeadLetter, Limits, RecommendationEvent
from streams.faults import FaultPoints
from streams.metrics import Health, Metrics
from streams.pipeline import Pipeline, RawRecord
from streams.refresh import Refresher
from streams.retry import is_transient
from streams.security import aiokafka_config
from streams.settings import Settings

__all__ = ["Worker", "KafkaPublisher", "load_sequence_encoder"]

log = logging.getLogger("interest_updater.worker")
PRODUCER_ID_WAIT_SECONDS = 30.0  # how long a broker may answer "retry" before the probe gives up

RETRY_MAX_SECONDS = 30.0
COMMIT_EVERY_SECONDS = 1.0
MARKS_EVERY_SECONDS = 0.5  # pending marks of published batches, when no later write has cleared them


class KafkaPublisher:
    """Publishes to the output topics: every message of a call is queued, then all acknowledgements awaited."""

    def __init__(self, producer: AIOKafkaProducer, recs_topic: str, dead_topic: str) -> None:
        self.producer = producer
        self.recs_topic = recs_topic
        self.dead_topic = dead_topic

    async def publish_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        await self._send_all(self.dead_topic, [(letter.key, letter.to_json()) for letter in letters])

    async def publish_recommendations(self, events: Sequence[RecommendationEvent]) -> None:
        await self._send_all(self.recs_topic, [(event.user_id, event.to_json()) for event in events])

    async def _send_all(self, topic: str, messages: list[tuple[str | None, bytes]]) -> None:
        # send() returns once the message is in the producer's batch; its future
        # resolves when the broker has it. Queue all, then wait for all.
        send = self.producer.send
        pending = [await send(topic, value, key=key.encode() if key else None) for key, value in messages]
        await asyncio.gather(*pending)


async def _producer_ids_refused(producer: AIOKafkaProducer) -> str | None:
    """None when the broker grants producer ids (what an idempotent producer needs), else its error's name.

    Asked before an idempotent producer is made: where the broker refuses (the
    embedded broker answers UNKNOWN_SERVER_ERROR), aiokafka's sender task dies
    and every later send would hang instead of failing.
    """
    client = producer.client
    deadline = asyncio.get_running_loop().time() + PRODUCER_ID_WAIT_SECONDS
    while True:
        response = await client.send(client.get_random_node(),
                                     InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60_000))
        error = kafka_errors.for_code(response.error_code)
        if error is kafka_errors.NoError:
            return None
        # Kafka answers "coordinator loading" while it creates its transaction-state topic on first use.
        if not error.retriable or asyncio.get_running_loop().time() > deadline:
            return error.__name__
        await asyncio.sleep(0.2)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: "Worker") -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked) -> None:
        await self.worker._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned) -> None:
        await self.worker._on_assigned(assigned)


class Worker:
    """Everything one worker process holds: consumer, producer, store, encoders, metrics.

    >>> worker = Worker(settings, encoder, text_encoder)       # doctest: +SKIP
    >>> exit_status = asyncio.run(worker.run())                # until SIGTERM  # doctest: +SKIP
    """

    def __init__(self, settings: Settings, encoder, text_encoder=None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.health = Health()
        self.store = Store.from_url(settings.redis_url, cluster=settings.redis_cluster,
                                    keys=KeySpace(settings.key_prefix),
                                    max_clicks=settings.max_history, max_texts=settings.max_texts,
                                    lateness_ms=int(settings.lateness * 1000))
        self.catalogue = Catalogue(self.store, self.metrics)
        self.refresher = Refresher(encoder, text_encoder, top_k=settings.top_k, exclude_seen=settings.exclude_seen,
                                   session_gap_ms=int(settings.session_gap * 1000),
                                   weights=BlendWeights.parse(settings.blend), metrics=self.metrics,
                                   catalogue=self.catalogue)
        self.metrics.model.labels(encoder.model_version).set(1)
        self.topics = (settings.topic_clicks, settings.topic_texts, settings.topic_items)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.pipeline: Pipeline | None = None
        # Batches, recoveries, model swaps and revocations take turns: each bumps
        # versions, publishes or changes what the next batch may touch.
        self._turn = asyncio.Lock()
        self._stop = asyncio.Event()
        self._to_recover: Marks = {}  # users a stopped worker left pending, with their marks
        self._applied: dict[TopicPartition, int] = {}  # last applied offset, not yet committed to Kafka
        self._unresumed: set[TopicPartition] = set()  # assigned, not yet sought to Redis's resume offsets
        self._refreshing: asyncio.Task | None = None  # stage two of the last batch ingested
        self._swapping = False
        self._bad_versions: set[str] = set()

    # ------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        """Consume until SIGTERM/SIGINT (or `stop`); returns the exit status."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping, signal.Signals(signum).name)
        s = self.settings
        security = aiokafka_config(s)
        await self.store.check_layout()
        self.producer = await self._start_producer(security)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.broker, client_id=f"{s.app_id}-consumer", group_id=s.app_id,
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=int(s.fetch_max_wait * 1000),
            fetch_min_bytes=s.fetch_min_bytes, max_poll_records=s.batch_max,
            # The embedded broker completes a group join only after about half the session timeout.
            session_timeout_ms=6000, heartbeat_interval_ms=2000, rebalance_timeout_ms=30000, **security)
        self.pipeline = Pipeline(
            self.store, self.refresher, KafkaPublisher(self.producer, s.topic_recs, s.topic_dead), self.metrics,
            click_topic=s.topic_clicks, items_topic=s.topic_items, catalogue=self.catalogue,
            limits=Limits(s.max_text_chars, int(s.max_future * 1000)),
            known_items=getattr(self.refresher.encoder, "vocab", None), faults=FaultPoints.from_env())
        timers: list[asyncio.Task] = []
        try:
            await self.consumer.start()
            self.consumer.subscribe(list(self.topics), listener=_Rebalance(self))
            timers = [asyncio.create_task(self._every(1.0, self._beat), name="heartbeat"),
                      asyncio.create_task(self._every(1.0, self._recover_pending), name="recover-pending"),
                      asyncio.create_task(self._every(COMMIT_EVERY_SECONDS, self._commit), name="commit"),
                      asyncio.create_task(self._every(MARKS_EVERY_SECONDS, self._flush_marks), name="pending-marks")]
            if s.checkpoint and s.checkpoint_poll > 0:
                timers.append(asyncio.create_task(self._every(s.checkpoint_poll, self._watch_checkpoint),
                                                  name="checkpoint-watch"))
            await self._consume()
        finally:
            for timer in timers:
                timer.cancel()
            await asyncio.gather(*timers, return_exceptions=True)
            await self._shutdown()
        return 0

    async def _start_producer(self, security: dict) -> AIOKafkaProducer:
        """The started producer of recommendations and dead letters, idempotent as --idempotent-producer says."""
        s = self.settings
        options = dict(bootstrap_servers=s.broker, client_id=f"{s.app_id}-producer", acks="all", linger_ms=2,
                       **security)
        producer = AIOKafkaProducer(enable_idempotence=False, **options)
        await producer.start()
        if s.idempotent_producer == "off":
            self.metrics.idempotent.set(0)
            return producer
        try:
            refused = await _producer_ids_refused(producer)
        except BaseException:
            await producer.stop()  # a broker lost mid-question: nothing may be left running
            raise
        if refused and s.idempotent_producer == "on":
            await producer.stop()
            raise ConfigurationError(f"--idempotent-producer on: the broker at {s.broker} refused a producer id "
                                     f"({refused}); use --idempotent-producer auto or off with this broker")
        if refused:
            log.warning("broker refused a producer id (%s): publishing without idempotence, so a retried send "
                        "may write a recommendation or dead letter twice (--idempotent-producer)", refused)
            self.metrics.idempotent.set(0)
            return producer
        await producer.stop()
        producer = AIOKafkaProducer(enable_idempotence=True, **options)
        await producer.start()
        self.metrics.idempotent.set(1)
        return producer

    def stopping(self, reason: str) -> None:
        """A signal asked the worker to stop: say so, stop answering ready, finish the batch in flight."""
        if not self._stop.is_set():
            log.info("%s received: finishing the micro-batch in flight, then stopping", reason)
        self.health.ready = False
        self._stop.set()

    async def _shutdown(self) -> None:
        self.health.ready = False
        try:
            if self.pipeline is not None:
                with contextlib.suppress(Exception):  # left marked, a published user is only refreshed again
                    await self.pipeline.flush_marks()
            if self.consumer is not None:
                await self._commit()
                await self.consumer.stop()  # leaves the group: the partitions move on at once
        finally:
            if self.producer is not None:
                await self.producer.stop()  # flushes what is queued
            if self.pipeline is not None:
                self.pipeline.close()
            await self.store.close()

    async def _every(self, seconds: float, tick) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  (a timer must outlive one bad tick)
                self.metrics.errors.labels(type(exc).__name__).inc()
                log.warning("%s failed (%s: %s); next tick in %.1fs", tick.__name__, type(exc).__name__, exc, seconds)

    async def _beat(self) -> None:
        self.health.beat()

    async def _flush_marks(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            try:
                await self.pipeline.flush_marks()
            except Exception as exc:  # noqa: BLE001  (kept, and cleared with the next write)
                log.debug("clearing pending marks failed (%s); will try again", exc)

    # ------------------------------------------------------------ the loop
    async def _consume(self) -> None:
        batch_ms = max(1, int(self.settings.batch_within * 1000))
        while not self._stop.is_set():
            if self._unresumed and not await self._resume():
                await asyncio.sleep(0.5 * (0.5 + random.random()))  # Redis unreachable: try again soon
                continue
            fetched = await self.consumer.getmany(timeout_ms=batch_ms, max_records=self.settings.batch_max)
            if not fetched:
                continue
            async with self._turn:
                # Partitions revoked since the fetch, or not yet sought to Redis's offsets, are skipped.
                ready = self.consumer.assignment() - self._unresumed
                records = [_raw(record) for tp, batch in fetched.items() if tp in ready for record in batch]
                if records:
                    self.metrics.in_flight.inc()
                    parts = await self._until_done("ingest", self.pipeline.ingest_isolating, records)
                    # Item upserts are applied in stage two: their offsets are committed after it.
                    self._record_progress([r for r in records if r.topic != self.settings.topic_items])
                    # Batch N+1 was ingested while batch N refreshed; its refresh waits for N's (user order).
                    await self._drain()
                    self._refreshing = asyncio.create_task(self._refresh(parts))
                    if not self.settings.overlap:
                        await self._drain()
        async with self._turn:
            await self._drain()

    async def _refresh(self, parts) -> None:
        try:
            for part in parts:  # one batch, unless ingesting it had to isolate a record
                await self._until_done("refresh", self.pipeline.refresh, part)
                self._record_progress([r for r in part.records if r.topic == self.settings.topic_items])
        finally:
            self.metrics.in_flight.dec()

    async def _drain(self) -> None:
        """Wait for the batch being refreshed, if any."""
        if self._refreshing is not None:
            refreshing, self._refreshing = self._refreshing, None
            await refreshing

    async def _until_done(self, stage: str, step, arg):
        """Retry a stage with backoff while Redis or the broker is unreachable: fences make a retry safe.

        The stages isolate other failures themselves (`streams.pipeline`);
        one that still escapes them (the dead-letter topic refusing a
        letter, say) is retried the same way, since dropping the batch is not safe.
        """
        delay = 0.5
        while True:
            try:
                return await step(arg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  (count, log, retry)
                kind = type(exc).__name__
                self.metrics.errors.labels(kind).inc()
                self.metrics.retries.labels(stage).inc()
                level = logging.WARNING if is_transient(exc) else logging.ERROR
                log.log(level, "%s of a batch of %d failed (%s: %s); retrying in %.1fs", stage,
                        len(getattr(arg, "records", arg)), kind, exc, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    def _record_progress(self, records: list[RawRecord]) -> None:
        """Remember what to commit and export each partition's lag."""
        last: dict[TopicPartition, int] = {}
        for record in records:
            last[TopicPartition(record.topic, record.partition)] = record.offset
        for tp, offset in last.items():
            self._applied[tp] = max(self._applied.get(tp, -1), offset)
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - offset - 1))

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit applied offsets to Kafka: for tools watching the group (the worker resumes from Redis)."""
        offsets = {tp: offset + 1 for tp, offset in self._applied.items() if only is None or tp in only}
        if not offsets or self.consumer is None:
            return
        try:
            await self.consumer.commit(offsets)
            for tp in offsets:
                self._applied.pop(tp, None)
        except Exception as exc:  # noqa: BLE001  (a failed commit is retried next time; Redis has the truth)
            log.debug("commit of %d partitions failed (%s); will try again", len(offsets), exc)

    # ------------------------------------------------------------ group membership
    async def _on_revoked(self, revoked) -> None:
        revoked = set(revoked)
        async with self._turn:  # the batch in flight finishes first
            await self._drain()
            await self._commit(revoked)
        self._unresumed -= revoked
        self.pipeline.forget((tp.topic, tp.partition) for tp in revoked)
        for tp in revoked:
            self._applied.pop(tp, None)
            self._to_recover.pop((tp.topic, tp.partition), None)
            try:
                self.metrics.lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass  # never reported
        if revoked:
            log.info("revoked %s", _names(revoked))

    async def _on_assigned(self, assigned) -> None:
        # The seek to Redis's offsets happens in the loop (`_resume`), where a Redis
        # outage is retried instead of failing the group's rebalance.
        self._unresumed |= set(assigned)
        log.info("assigned %s", _names(assigned))
        await self._resume()
        if not self._stop.is_set():
            self.health.ready = True

    async def _resume(self) -> bool:
        """Seek new partitions to Redis's resume offsets and queue their pending users; False if Redis failed."""
        partitions = set(self._unresumed)
        try:
            for topic in self.topics:
                numbers = sorted(tp.partition for tp in partitions if tp.topic == topic)
                if not numbers:
                    continue
                applied = await self.store.resume_offsets(topic)
                pending = await self.store.pending_users(topic, numbers)
                for partition in numbers:
                    await self._seek(TopicPartition(topic, partition), applied.get(partition))
                for partition, users in pending.items():
                    self._to_recover.setdefault((topic, partition), {}).update(users)
        except Exception as exc:  # noqa: BLE001  (Redis down: the loop tries again)
            self.metrics.errors.labels(type(exc).__name__).inc()
            log.warning("cannot read resume offsets for %s (%s); retrying", _names(partitions), exc)
            return False
        self._unresumed -= partitions
        return True

    async def _seek(self, tp: TopicPartition, applied: int | None) -> None:
        """Position ``tp`` after Redis's last applied offset; without one, at Kafka's commit or the start.

        The explicit seek also covers records fetched before it: the loop drops
        them, and the consumer reads them again from here.
        """
        if applied is not None:
            self.consumer.seek(tp, applied + 1)
            log.info("resume %s[%d] at offset %d (from Redis)", tp.topic, tp.partition, applied + 1)
            return
        committed = await self.consumer.committed(tp)
        if committed is not None:
            self.consumer.seek(tp, committed)
        else:
            await self.consumer.seek_to_beginning(tp)

    # ------------------------------------------------------------ timers
    async def _recover_pending(self) -> None:
        """Publish users a stopped worker applied events for but never published (see state.store)."""
        if not self._to_recover:
            return
        marks, self._to_recover = self._to_recover, {}
        try:
            async with self._turn:
                await self._drain()
                events = await self.pipeline.recover(marks)
            log.info("recovered %d users left unpublished by a stopped worker", len(events))
        except Exception as exc:  # noqa: BLE001  (retried on the next tick)
            self.metrics.errors.labels(type(exc).__name__).inc()
            log.warning("recovering %d pending users failed (%s); retrying", sum(map(len, marks.values())), exc)
            for key, users in marks.items():
                self._to_recover.setdefault(key, {}).update(users)

    async def _watch_checkpoint(self) -> None:
        """Swap to a new model written to --checkpoint, without a restart or a lost event.

        The new checkpoint loads in its own thread while batches go on with the
        old one; the swap itself happens between micro-batches (under the same
        lock), so every batch is refreshed by one model, and the events are
        applied to Redis whatever the model (the fences do not depend on it).
        """
        from encoders.checkpoint import read_metadata
        from encoders.errors import EncoderError

        refresher = self.refresher
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
                await self._drain()
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


def load_sequence_encoder(settings: Settings):
    """The `InterestEncoder` of --checkpoint, with the settings that shape its interests."""
    import os

    from encoders.inference import InterestEncoder
    from encoders.interests import DAY_MS

    return InterestEncoder.from_checkpoint(settings.checkpoint, device=settings.device,
                                           half_life_ms=settings.long_term_half_life * DAY_MS,
                                           window_hop=settings.window_hop,
                                           cache_bytes=settings.encoder_cache_mb * 2**20,
                                           ann_above=settings.ann_above, ann_candidates=settings.ann_candidates,
                                           ann_probe=settings.ann_probe,
                                           index_cache=os.path.expanduser(settings.index_cache))


def _raw(record) -> RawRecord:
    return RawRecord(record.topic, record.partition, record.offset, record.key, record.value or b"",
                     record.timestamp)


def _names(partitions) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)
