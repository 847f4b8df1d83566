"""One micro-batch, start to finish, as plain functions over typed records.

The worker (`streams.app`) only turns fetched records into :class:`RawRecord`
and calls the two stages below; everything here can run without a broker.

Stage one, `Pipeline.ingest` (on the event loop, texts in their own thread):
1. decode and validate every record (events older than the lateness bound are
   found in step 4 and dead-lettered then, at most once);
2. publish the dead letters and wait until the broker has them (if the worker
   dies after this, a replay sends them again: dead letters are at least once);
3. embed the texts (all-MiniLM-L6-v2, cached; executor thread);
4. apply all events to Redis in one round trip; fences skip replays; pending
   marks are set; the reply carries each changed user's packed history, text
   mean and previous long-term interest.

Stage two, `Pipeline.refresh` (the encoder in its own thread):
5. encode the changed users (cached windows extended), measure their drift from
   the previous long-term interest, and score;
6. write profiles in one round trip, which also returns each user's new version
   and the version at which each interest last changed, and clears the pending
   marks of the batch published before (step 8);
7. publish one recommendation event per refreshed user;
8. remember the batch's pending marks, cleared with the next write (or by
   `flush_marks` when none comes). A worker that dies between 4 and 8 leaves
   them marked; the next owner of the partition calls ``recover``.

Item upserts (the items topic) are decoded in stage one and applied at the
start of stage two, with their partitions' resume offsets, before the
catalogue is synced (`streams.catalogue`): refreshes run in batch order, so
every list this worker publishes after an item was marked unavailable leaves
it out. Upserts need no fences: the newest ``ts`` wins and a replay changes
nothing.

The worker overlaps the stages: batch N+1 is ingested while batch N is
refreshed, and batch N+1's refresh starts only when batch N's has ended, so
each user's refreshes run in order. A mark holds the offset of the batch
that set it and is cleared only while it still does, so batch N never
unmarks a user that batch N+1 marked again. A failed stage is retried
whole: step 4 is idempotent for the events (fences), and step 6 only bumps
versions.

What "failed" means decides what happens next (`streams.retry`): a lost
connection or a timeout is retried by the worker, as long as it lasts; any
other failure would fail every retry too, so ``ingest_isolating`` and
``refresh`` split the batch (records, or users) in halves until the one at
fault is alone. A record that fails alone is dead-lettered with reason
``processing_error`` and its offset passed; a user whose refresh fails alone
keeps the events just applied to their history, has their events of the
batch dead-lettered the same way, and keeps their previous recommendations
until their next event. A batch's dead letters are published once, however
often the batch is retried.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence

from encoders.features import context_word
from encoders.interests import INTERESTS
from encoders.vocab import action_index
from state import AppliedUser, Entry, Store, StoredClick, StoredText
from state.store import ItemState, Marks, partition_ends, pending_marks
from streams.catalogue import Catalogue
from streams.events import (ClickEvent, DeadLetter, InvalidEvent, ItemEvent, Limits, RecommendationEvent, TextEvent,
                            decode_click, decode_item, decode_text)
from streams.faults import NO_FAULTS, FaultPoints
from streams.metrics import Metrics
from streams.refresh import Refresher
from streams.retry import is_transient

__all__ = ["RawRecord", "Decoded", "decode_batch", "Pipeline", "Publisher", "BatchReport"]

log = logging.getLogger("interest_updater.pipeline")


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A message as consumed: where it came from and its undecoded bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Decoded:
    record: RawRecord
    event: ClickEvent | TextEvent | ItemEvent


@dataclass
class BatchReport:
    outcomes: dict[str, int]
    dead_letters: list[DeadLetter] = field(default_factory=list)
    recommendations: list[RecommendationEvent] = field(default_factory=list)


@dataclass
class Ingested:
    """A batch after stage one: applied to Redis, waiting to be refreshed and published."""

    records: Sequence[RawRecord]
    valid: list[Decoded]
    users: list[AppliedUser]  # whose history changed, as it is now
    changed_clicks: set[str]
    changed_texts: set[str]
    marks: Marks  # pending marks this batch set
    report: BatchReport
    started: float  # perf_counter at the start of stage one
    items: list[Decoded] = field(default_factory=list)  # item upserts, applied at the start of stage two
    item_ends: dict[tuple[str, int], int] = field(default_factory=dict)  # their partitions' last offsets


class Publisher(Protocol):
    async def publish_dead_letters(self, letters: Sequence[DeadLetter]) -> None: ...

    async def publish_recommendations(self, events: Sequence[RecommendationEvent]) -> None: ...


def decode_batch(records: Sequence[RawRecord], click_topic: str, now_ms: int,
                 limits: Limits, items_topic: str | None = None) -> tuple[list[Decoded], list[DeadLetter]]:
    """Split records into valid events and dead letters; never raises on bad input."""
    valid: list[Decoded] = []
    dead: list[DeadLetter] = []
    for record in records:
        decode = (decode_click if record.topic == click_topic else
                  decode_item if record.topic == items_topic else decode_text)
        try:
            valid.append(Decoded(record, decode(record.value, record.key, now_ms, limits)))
        except InvalidEvent as exc:
            dead.append(_dead_letter(record, exc, now_ms))
    return valid, dead


def _dead_letter(record: RawRecord, exc: InvalidEvent, now_ms: int) -> DeadLetter:
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    value, encoding = DeadLetter.kept_value(record.value)
    error = f"{record.topic}[{record.partition}]@{record.offset}: {exc}"
    return DeadLetter(record.topic, record.partition, record.offset, key, value, exc.reason, error, now_ms, encoding)


class Pipeline:
    """Processes micro-batches; one instance per worker."""

    def __init__(self, store: Store, refresher: Refresher, publisher: Publisher, metrics: Metrics, *,
                 click_topic: str, items_topic: str | None = None, catalogue: Catalogue | None = None,
                 limits: Limits = Limits(), known_items=None, faults: FaultPoints = NO_FAULTS) -> None:
        self.store = store
        self.refresher = refresher
        self.publisher = publisher
        self.metrics = metrics
        self.click_topic = click_topic
        self.items_topic = items_topic
        self.catalogue = catalogue
        self.limits = limits
        self.known_items = known_items
        self.faults = faults  # test-only: stop a batch at an exact step (streams/faults.py)
        # One thread per encoder: texts of batch N+1 are embedded while batch N is
        # encoded; neither encoder is re-entrant.
        self.encoder_thread = ThreadPoolExecutor(1, thread_name_prefix="encoder")
        self.text_thread = ThreadPoolExecutor(1, thread_name_prefix="text")
        self._published: Marks = {}  # pending marks of published batches, cleared with the next write
        self._acknowledged: dict[tuple[str, int], int] = {}  # last offset applied per partition, reply received
        # Dead letters published by earlier tries of the batch in each stage, not to be published again.
        self._dead_sent: dict[str, set[tuple[str, int, int]]] = {"ingest": set(), "refresh": set()}

    async def process(self, records: Sequence[RawRecord]) -> BatchReport:
        """Both stages, one after the other, and the batch's pending marks cleared."""
        reports = [await self.refresh(part) for part in await self.ingest_isolating(records)]
        await self.flush_marks()
        return _merged(reports)

    async def ingest_isolating(self, records: Sequence[RawRecord]) -> list[Ingested]:
        """Stage one (`ingest`), splitting a batch that fails for a reason other than a lost connection.

        Returns the parts in order, each one a batch to refresh in that order;
        a record that failed alone is a part of its own with no user to refresh.
        """
        parts = await self._ingest_parts(records)
        self._dead_sent["ingest"].clear()  # the batch is through: it is never tried again
        return parts

    async def _ingest_parts(self, records: Sequence[RawRecord]) -> list[Ingested]:
        try:
            return [await self.ingest(records)]
        except Exception as exc:  # noqa: BLE001  (anything but a lost connection: find the record at fault)
            if is_transient(exc):
                raise
            self.metrics.errors.labels(type(exc).__name__).inc()
            if len(records) == 1:
                return [await self._reject_record(records[0], exc)]
            log.warning("ingest of a batch of %d failed (%s: %s); splitting it to find the record at fault",
                        len(records), type(exc).__name__, exc)
            middle = len(records) // 2
            return await self._ingest_parts(records[:middle]) + await self._ingest_parts(records[middle:])

    async def _reject_record(self, record: RawRecord, exc: Exception) -> Ingested:
        """Dead-letter the one record a batch failed on, and pass its offset so no one reads it again."""
        started = time.perf_counter()
        error = InvalidEvent("processing_error", f"{type(exc).__name__}: {exc}")
        letter = _dead_letter(record, error, int(time.time() * 1000))
        log.error("record %s[%d]@%d could not be processed (%s); dead-lettered as processing_error",
                  record.topic, record.partition, record.offset, error.detail)
        if await self._publish_dead_letters([letter], "ingest"):
            self.metrics.isolated.labels("ingest").inc()
        await self.store.apply([], {(record.topic, record.partition): record.offset})
        report = BatchReport(self._count_events([], [], [], [letter]), [letter])
        return Ingested([record], [], [], set(), set(), {}, report, started)

    async def ingest(self, records: Sequence[RawRecord]) -> Ingested:
        """Stage one: decode, dead-letter, embed texts, apply to Redis (steps 1-4)."""
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        valid, dead = decode_batch(records, self.click_topic, now_ms, self.limits, self.items_topic)
        items = [d for d in valid if isinstance(d.event, ItemEvent)]
        valid = [d for d in valid if not isinstance(d.event, ItemEvent)]
        await self._publish_dead_letters(dead, "ingest")
        entries = await self._entries(valid)
        await self.faults.at("after_embed", records)
        ends = partition_ends(r for r in records if r.topic != self.items_topic)
        item_ends = partition_ends(r for r in records if r.topic == self.items_topic)
        with self.metrics.redis_seconds.labels("apply").time():
            applied = await self.store.apply(entries, ends)  # dead letters included
        outcomes, users = await self._lost_attempts(entries, applied.outcomes, applied.users)
        for key, offset in ends.items():
            self._acknowledged[key] = max(self._acknowledged.get(key, -1), offset)
        await self.faults.at("after_apply", records)
        late = _late_letters(valid, entries, outcomes, now_ms)
        await self._publish_dead_letters(late, "ingest")
        report = BatchReport(self._count_events(valid, entries, outcomes, dead + late), dead + late)
        self._count_online_quality(applied.ranks)
        applied_now = [e for e, o in zip(entries, outcomes) if o == "applied"]
        changed = {stream: {e.user_id for e in applied_now if e.stream == stream} for stream in ("c", "t")}
        return Ingested(records, valid, users, changed["c"], changed["t"], pending_marks(entries), report, started,
                        items, item_ends)

    async def _lost_attempts(self, entries: Sequence[Entry], outcomes: list[str],
                             users: list[AppliedUser]) -> tuple[list[str], list[AppliedUser]]:
        """Events a failed attempt of this batch applied (its reply was lost): applied, not replays.

        Redis ran the attempt but the connection broke before its reply came
        back, so the retry finds the events behind their fences. An event past
        the last offset this worker saw applied on its partition cannot be an
        old one: it was applied by that lost attempt, is counted as applied,
        and its user is refreshed (from a read of their history).
        """
        lost = [i for i, (e, o) in enumerate(zip(entries, outcomes))
                if o == "replay" and e.offset > self._acknowledged.get((e.topic, e.partition), 1 << 62)]
        if not lost:
            return outcomes, users
        outcomes = list(outcomes)
        for i in lost:
            outcomes[i] = "applied"
        known = {u.user_id for u in users}
        missing = sorted({entries[i].user_id for i in lost} - known)
        if missing:
            with self.metrics.redis_seconds.labels("read").time():
                users = users + await self.store.histories(missing)
        return outcomes, users

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Partitions this worker no longer owns: another may apply their events now."""
        for key in partitions:
            self._acknowledged.pop(key, None)

    async def refresh(self, batch: Ingested) -> BatchReport:
        """Stage two: the batch's item upserts, the catalogue synced, then encode, score, write, publish (5-8)."""
        report = batch.report
        if batch.item_ends:
            await self._apply_items(batch)
        await self.sync_catalogue()
        report.recommendations = await self._refresh_isolating(batch, batch.users)
        self._dead_sent["refresh"].clear()
        _merge_marks(self._published, batch.marks)
        self.metrics.batch_size.observe(len(batch.records))
        self.metrics.batch_seconds.observe(time.perf_counter() - batch.started)
        return report

    async def _apply_items(self, batch: Ingested) -> None:
        """Upsert the batch's items and advance their partitions' resume offsets; count the outcomes once."""
        upserts = [ItemState(e.item_id, e.available, e.ts, e.title, e.categories)
                   for e in (d.event for d in batch.items)]
        with self.metrics.redis_seconds.labels("items").time():
            outcomes = await self.store.apply_items(upserts, batch.item_ends)
        batch.item_ends = {}  # applied: a retry of the stage does not apply or count them again
        for decoded, outcome in zip(batch.items, outcomes):
            self.metrics.events.labels(decoded.record.topic, outcome).inc()
            batch.report.outcomes[outcome] = batch.report.outcomes.get(outcome, 0) + 1

    async def sync_catalogue(self) -> None:
        """Bring this worker's catalogue up to Redis's (upserts applied by any worker)."""
        if self.catalogue is not None:
            with self.metrics.redis_seconds.labels("catalogue").time():
                await self.catalogue.sync()

    async def _refresh_isolating(self, batch: Ingested, users: Sequence[AppliedUser]) -> list[RecommendationEvent]:
        """Refresh and publish ``users``, splitting them on a failure other than a lost connection."""
        try:
            events = await self._refresh_and_write(users, batch.changed_clicks, batch.changed_texts)
            await self.faults.at("after_write", batch.records)
            await self._publish(events)
            await self.faults.at("after_publish", batch.records)
        except Exception as exc:  # noqa: BLE001  (anything but a lost connection: find the user at fault)
            if is_transient(exc) or not users:
                raise
            self.metrics.errors.labels(type(exc).__name__).inc()
            if len(users) == 1:
                await self._reject_user(batch, users[0].user_id, exc)
                return []
            log.warning("refresh of %d users failed (%s: %s); splitting them to find the user at fault",
                        len(users), type(exc).__name__, exc)
            middle = len(users) // 2
            return (await self._refresh_isolating(batch, users[:middle])
                    + await self._refresh_isolating(batch, users[middle:]))
        self._count_freshness(events, batch.valid)
        return events

    async def _reject_user(self, batch: Ingested, user_id: str, exc: Exception) -> None:
        """Dead-letter the batch's events of the one user whose refresh fails (they stay in the history)."""
        now_ms = int(time.time() * 1000)
        error = InvalidEvent("processing_error", f"refreshing user {user_id!r} failed: {type(exc).__name__}: {exc}")
        log.error("%s; their events of this batch are dead-lettered as processing_error", error.detail)
        letters = [_dead_letter(d.record, error, now_ms) for d in batch.valid if d.event.user_id == user_id]
        fresh = await self._publish_dead_letters(letters, "refresh")
        batch.report.dead_letters.extend(fresh)
        self.metrics.isolated.labels("refresh").inc(len(fresh))
        for letter in fresh:
            self.metrics.dead_letters.labels(letter.topic, letter.reason).inc()

    async def flush_marks(self) -> None:
        """Clear the pending marks of published batches now, without waiting for the next write."""
        if self._published:
            marks, self._published = self._published, {}
            try:
                await self.store.clear_pending(marks)
            except BaseException:
                _merge_marks(self._published, marks)  # cleared with the next write instead
                raise

    async def recover(self, marks: Marks) -> list[RecommendationEvent]:
        """Refresh and publish users a stopped worker applied events for but never published."""
        await self.sync_catalogue()
        users = sorted(set().union(*marks.values())) if marks else []
        with self.metrics.redis_seconds.labels("read").time():
            histories = await self.store.histories(users)
        # Their events were applied but never published: every interest they have may have changed.
        users = [h for h in histories if len(h.clicks) or h.texts]
        events = await self._recover_isolating(users)
        await self.store.clear_pending(marks)
        return events

    async def _recover_isolating(self, users: Sequence[AppliedUser]) -> list[RecommendationEvent]:
        """Refresh and publish recovered ``users``, splitting them on a failure other than a lost connection.

        A user whose refresh fails alone is given up: their history stays as
        applied, their pending mark is cleared with the others' (retrying would
        fail again, every second), and their next event refreshes them.  Their
        events were dead-lettered by no one: a stopped worker applied them.
        """
        try:
            events = await self._refresh_and_write(users, {u.user_id for u in users if len(u.clicks)},
                                                   {u.user_id for u in users if u.texts})
            await self._publish(events)
            return events
        except Exception as exc:  # noqa: BLE001  (anything but a lost connection: find the user at fault)
            if is_transient(exc) or not users:
                raise
            self.metrics.errors.labels(type(exc).__name__).inc()
            if len(users) == 1:
                log.error("recovering user %r failed (%s: %s); given up until their next event",
                          users[0].user_id, type(exc).__name__, exc)
                self.metrics.unrecovered.inc()
                return []
            middle = len(users) // 2
            return (await self._recover_isolating(users[:middle])
                    + await self._recover_isolating(users[middle:]))

    async def _refresh_and_write(self, users: Sequence[AppliedUser], changed_clicks: set[str],
                                 changed_texts: set[str]) -> list[RecommendationEvent]:
        """One forward pass for all users and one round trip to store: one event per user, to publish."""
        if not users:
            return []
        refreshed = await self._run(self.encoder_thread, self.refresher.refresh, users, changed_clicks, changed_texts)
        marks, self._published = self._published, {}
        try:
            with self.metrics.redis_seconds.labels("write").time():
                written = await self.store.write_profiles([r.profile for r in refreshed], clear=marks)
        except BaseException:
            _merge_marks(self._published, marks)
            raise
        events = [self._event(r, w) for r, w in zip(refreshed, written)]
        for r in refreshed:
            if r.drift is not None:
                self.metrics.drift.observe(r.drift)
        self.metrics.users_refreshed.inc(len(events))
        return events

    async def _publish(self, events: list[RecommendationEvent]) -> None:
        if events:
            await self.publisher.publish_recommendations(events)
            self.metrics.recommendations.inc(len(events))

    async def _publish_dead_letters(self, letters: list[DeadLetter], stage: str) -> list[DeadLetter]:
        """Publish the letters an earlier try of this stage's batch has not; returns those."""
        sent = self._dead_sent[stage]
        fresh = [letter for letter in letters if (letter.topic, letter.partition, letter.offset) not in sent]
        if fresh:
            await self.publisher.publish_dead_letters(fresh)
            sent.update((letter.topic, letter.partition, letter.offset) for letter in fresh)
        return fresh

    async def _entries(self, valid: Sequence[Decoded]) -> list[Entry]:
        texts = [d.event.text for d in valid if isinstance(d.event, TextEvent)]
        embeddings = iter(await self._run(self.text_thread, self.refresher.embed_texts, texts))
        return [Entry(d.event.user_id, d.record.topic, d.record.partition, d.record.offset,
                      _stored(d.event, embeddings)) for d in valid]

    @staticmethod
    async def _run(executor, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def _event(self, refreshed, written) -> RecommendationEvent:
        profile = refreshed.profile
        interests = {name: {"version": written.interest_versions.get(name), **refreshed.summary.get(name, {})}
                     for name in INTERESTS}
        return RecommendationEvent(
            user_id=profile.user_id, version=written.version, items=refreshed.items, interests=refreshed.interests,
            model_version=profile.body["model_version"], last_event_ts=refreshed.last_event_ts,
            published_at=int(time.time() * 1000), clicks_applied=refreshed.clicks_applied,
            interest_profile=interests, next_action=refreshed.next_action, drift=refreshed.drift)

    def _count_events(self, valid: Sequence[Decoded], entries: Sequence[Entry], outcomes: Sequence[str],
                      dead: Sequence[DeadLetter]) -> dict[str, int]:
        """Count outcomes as soon as Redis has them, so /metrics never lags the store.

        ``valid``, ``entries`` and ``outcomes`` are parallel: an event, as stored, and what Redis did with it.
        """
        m = self.metrics
        counts: dict[str, int] = {"dead_letter": len(dead)}
        for letter in dead:
            m.events.labels(letter.topic, "dead_letter").inc()
            m.dead_letters.labels(letter.topic, letter.reason).inc()
        for decoded, entry, outcome in zip(valid, entries, outcomes):
            if outcome == "late":
                continue  # a dead letter, counted above
            m.events.labels(entry.topic, outcome).inc()
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome != "applied" or entry.stream != "c":
                continue
            if self.known_items is not None and entry.record.item_id not in self.known_items:
                m.unknown_items.inc()
            context = decoded.event.context
            if context is not None and context.ignored_keys:
                m.context_keys_ignored.inc(context.ignored_keys)
        return counts

    def _count_online_quality(self, ranks: Sequence[int]) -> None:
        """Online HR@K / NDCG@K: each applied click against the list the user last saw."""
        k = self.refresher.top_k
        for rank in ranks:
            if rank < 0:
                continue  # not an applied click, or the user had no list yet
            self.metrics.online_clicks.inc()
            if 0 < rank <= k:
                self.metrics.online_hits.inc()
                self.metrics.online_gain.inc(1.0 / math.log2(rank + 1))

    def _count_freshness(self, events: Sequence[RecommendationEvent], valid: Sequence[Decoded]) -> None:
        newest = _newest_record_ms(valid)
        for event in events:
            self.metrics.freshness.observe(max(0.0, (event.published_at - newest[event.user_id]) / 1000))

    def close(self) -> None:
        for executor in (self.encoder_thread, self.text_thread):
            executor.shutdown(wait=False, cancel_futures=True)


def _merged(reports: Sequence[BatchReport]) -> BatchReport:
    """One report of a batch processed in parts."""
    merged = BatchReport({})
    for report in reports:
        for outcome, count in report.outcomes.items():
            merged.outcomes[outcome] = merged.outcomes.get(outcome, 0) + count
        merged.dead_letters += report.dead_letters
        merged.recommendations += report.recommendations
    return merged


def _merge_marks(into: Marks, marks: Marks) -> None:
    """Add ``marks`` to ``into``; for a user marked twice the later batch's offset is the one to clear."""
    for key, users in marks.items():
        known = into.setdefault(key, {})
        for user, offset in users.items():
            if int(offset) > int(known.get(user, -1)):
                known[user] = offset


def _late_letters(valid: Sequence[Decoded], entries: Sequence[Entry], outcomes: Sequence[str],
                  now_ms: int) -> list[DeadLetter]:
    records = {(d.record.topic, d.record.partition, d.record.offset): d.record for d in valid}
    letters = []
    for entry, outcome in zip(entries, outcomes):
        if outcome == "late":
            error = InvalidEvent("late", f"event time {entry.record.ts} is more than the lateness bound older "
                                         f"than user {entry.user_id!r}'s newest event")
            letters.append(_dead_letter(records[(entry.topic, entry.partition, entry.offset)], error, now_ms))
    return letters


def _stored(event: ClickEvent | TextEvent, embeddings) -> StoredClick | StoredText:
    if isinstance(event, ClickEvent):
        return StoredClick(event.event_id, event.item_id, action_index(event.action), event.ts, event.session_id,
                           context_word(event.ts, event.context))
    return StoredText(event.event_id, event.ts, next(embeddings))


def _newest_record_ms(valid: Sequence[Decoded]) -> dict[str, int]:
    """Per user, when their newest event in this batch entered Kafka (the freshness clock)."""
    newest: dict[str, int] = {}
    for d in valid:
        newest[d.event.user_id] = max(newest.get(d.event.user_id, 0), d.record.timestamp_ms)
    return newest
