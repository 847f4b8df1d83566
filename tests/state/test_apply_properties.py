"""The apply path (`Store.apply`, the APPLY_EVENTS script) against a small model of its rules, on real Valkey.

A hypothesis state machine sends small batches of clicks and texts for three
users through `Store.apply` exactly as the worker does (entries plus the
partition ends, dead letters included), resends earlier batches (a replay after
a crash), writes profiles (the list clicks are ranked against, the previous
long-term vector, pending marks cleared), and after every step reads
everything back through the Store and compares it with a pure-Python model.

The model encodes the documented rules, not the script:

- replay: an event whose offset is at or below the highest offset seen on its
  (user, topic, partition) is skipped, unless its event id is among the user's
  last 32 late ones of its stream: then it is late again; every other event,
  whatever its outcome, raises that fence (``state.scripts`` docstring);
- duplicate: a click whose event id is among the user's kept clicks, or was
  applied earlier in the same call, is not applied again; a text whose id is
  among the user's last ``max_texts`` applied text ids likewise; a duplicate is
  found before lateness is looked at;
- late: an event more than ``lateness_ms`` older than the newest applied event
  of its stream (clicks, texts) is refused; exactly at the bound it is applied;
- order: the kept clicks are sorted by time, equal times in arrival order;
- bound: after each call only the newest ``max_clicks`` clicks are kept (oldest
  dropped first); ``applied:c`` / ``applied:t`` count every applied event ever;
- grouping: a user's events are applied one call per (stream, partition), in
  order of first appearance in the batch (`state.store._calls`);
- texts: ``count`` texts applied, their embeddings' mean over the ``folded``
  ones since the last change of width, within the int16 rounding of the
  running mean;
- ranks: an applied click gets the 1-based rank of its item in the user's last
  written list, 0 when absent, -1 without a list (and for anything not applied);
- sessions (derived on read, `state.sessions`): a session starts at the first
  click, after a gap longer than ``gap_ms``, or where both neighbours have a
  session id and they differ (an empty id is none);
- partition resume offsets never move backwards; pending marks hold each
  user's last offset of the batch and are cleared only while they still do.

Small alphabets (3 users, 4 event ids, 3 items, timestamps within 12 ms) make
duplicates, replays, ties and lateness boundaries common. Each example gets
its own key prefix, so nothing is flushed.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from state import Entry, KeySpace, Profile, Store, StoredClick, StoredText
from state.layout import INTEREST_NAMES, TEXT_SCALE, event_hash, id_hash, pack_embedding, session_hash
from state.sessions import session_starts, session_starts_of

pytestmark = pytest.mark.integration

USERS = ("u1", "u:2", "u*3")
EVENT_IDS = ("e0", "e1", "e2", "e3")  # shared by all users and both streams: ids are per user and stream
ITEMS = ("i0", "i1", "i2")
SESSIONS = (None, "", "s0", "s1")  # "" is no session id, like None
TOPIC = {"c": "clicks", "t": "texts"}
PARTITIONS = (0, 1)
BASE_MS = 1_700_000_000_000  # above 2**32: the 48-bit times are split across the record's words
LATE_KEPT = 32  # late event hashes each user keeps (state.scripts)

# The model compares ids where the store compares hashes: the alphabets must not collide.
assert len({event_hash(e) for e in EVENT_IDS}) == len(EVENT_IDS)
assert len({id_hash(i) for i in ITEMS}) == len(ITEMS)
assert len({session_hash(s) for s in SESSIONS if s}) == 2 and session_hash("") == session_hash(None) == 0

SETTINGS = settings(max_examples=500 if os.environ.get("CI") else 100, stateful_step_count=12, deadline=None,
                    database=None, suppress_health_check=[HealthCheck.too_slow])


class Spec(NamedTuple):
    """One event to produce; its offset is ``delta`` away from its partition's end (below it: an old offset)."""

    user: str
    stream: str  # "c" click, "t" text
    partition: int
    delta: int
    event_id: str
    ts: int  # ms after BASE_MS
    item: str = ""
    session: str | None = None
    action: int = 0
    embedding: tuple[float, ...] = ()


_values = st.sampled_from([-1.0, -0.5, -1 / 3, 0.0, 0.2, 0.7, 1.0])
_embeddings = st.sampled_from([0, 2, 2, 2, 3]).flatmap(lambda d: st.tuples(*[_values] * d))
_common = dict(user=st.sampled_from(USERS), partition=st.sampled_from(PARTITIONS), delta=st.integers(-3, 1),
               event_id=st.sampled_from(EVENT_IDS), ts=st.integers(0, 12))
SPECS = st.one_of(
    st.builds(Spec, stream=st.just("c"), item=st.sampled_from(ITEMS), session=st.sampled_from(SESSIONS),
              action=st.sampled_from([0, 1, 255]), **_common),
    st.builds(Spec, stream=st.just("t"), embedding=_embeddings, **_common),
)


@dataclass
class Click:
    event_id: str
    item: str
    ts: int
    session: str | None
    action: int

    def stored(self) -> tuple[int, int, int, int, int]:
        """What the store keeps of it: (item hash, ms, event hash, session hash, action)."""
        return id_hash(self.item), BASE_MS + self.ts, event_hash(self.event_id), session_hash(self.session), \
            self.action


@dataclass
class UserModel:
    clicks: list[Click] = field(default_factory=list)  # kept, oldest first
    newest: int | None = None  # newest applied click time
    text_ids: list[str] = field(default_factory=list)  # the last max_texts applied text ids
    text_count: int = 0
    text_newest: int | None = None
    text_dim: int = 0
    folded: list[np.ndarray] = field(default_factory=list)  # int16 embeddings in the mean
    late_ids: dict[str, list[str]] = field(default_factory=lambda: {"c": [], "t": []})  # the last LATE_KEPT late ids
    meta: dict[str, int] = field(default_factory=dict)  # fences, applied:c, applied:t, version
    recs: list[str] | None = None  # items of the last written list
    long_term: list[float] | None = None
    interest_versions: dict[str, int] = field(default_factory=dict)

    def bump(self, name: str, by: int) -> None:
        if by:
            self.meta[name] = self.meta.get(name, 0) + by

    def late(self, stream: str, event_id: str) -> str:
        if event_id not in self.late_ids[stream]:
            self.late_ids[stream] = (self.late_ids[stream] + [event_id])[-LATE_KEPT:]
        return "late"


def model_session_starts(clicks: list[Click], gap_ms: int) -> list[int]:
    starts = []
    for i, click in enumerate(clicks):
        before = clicks[i - 1] if i else None
        if (before is None or click.ts - before.ts > gap_ms
                or (click.session and before.session and click.session != before.session)):
            starts.append(i)
    return starts


class ApplyMachine(RuleBasedStateMachine):
    batches = Bundle("batches")

    def __init__(self, run, client) -> None:
        super().__init__()
        self.run, self.client = run, client
        self.store: Store | None = None
        self.users = {user: UserModel() for user in USERS}
        self.log_end: dict[tuple[str, int], int] = {}  # next offset per (topic, partition): generation only
        self.resume: dict[str, dict[int, int]] = {"clicks": {}, "texts": {}}
        self.pending: dict[tuple[str, int], dict[str, str]] = {}

    @initialize(max_clicks=st.sampled_from([1, 2, 3, 5]), max_texts=st.sampled_from([1, 2, 3]),
                lateness=st.sampled_from([0, 3, 6]), gap=st.sampled_from([0, 2, 5]))
    def configure(self, max_clicks, max_texts, lateness, gap) -> None:
        self.max_clicks, self.max_texts, self.lateness, self.gap = max_clicks, max_texts, lateness, gap
        self.store = Store(self.client, KeySpace(f"prop-{uuid.uuid4().hex[:12]}"), max_clicks=max_clicks,
                           max_texts=max_texts, lateness_ms=lateness)

    # ---- steps -------------------------------------------------------------------------------------------

    @rule(target=batches, specs=st.lists(SPECS, max_size=6),
          dead_letters=st.lists(st.tuples(st.sampled_from("ct"), st.sampled_from(PARTITIONS)), max_size=2))
    def apply_new_batch(self, specs, dead_letters):
        """A fetched batch: new events (some at old offsets), and dead letters that only move the ends."""
        entries = [self._entry(spec) for spec in specs]
        ends = {}
        for entry in entries:
            key = (entry.topic, entry.partition)
            ends[key] = max(ends.get(key, -1), entry.offset)
        for stream, partition in dead_letters:
            key = (TOPIC[stream], partition)
            ends[key] = max(ends.get(key, -1), self._next_offset(key, 0))
        batch = (tuple(entries), ends if dead_letters else None)
        self._apply(*batch)
        return batch

    @rule(batch=batches)
    def replay_batch(self, batch):
        """The same batch again, as after a crash before the resume offsets moved: nothing is applied twice."""
        entries, ends = batch
        outcomes = self._apply(entries, ends)
        assert set(outcomes) <= {"replay", "late"}

    @rule(user=st.sampled_from(USERS), items=st.lists(st.sampled_from(ITEMS), max_size=3),
          long_term=st.sampled_from([0.5, -1.25, 3.0]), changed=st.sets(st.sampled_from(INTEREST_NAMES)),
          clear=st.one_of(st.none(), batches))
    def write_profile(self, user, items, long_term, changed, clear):
        """A refresh: the list the next clicks are ranked against, and the marks of a batch published before."""
        vectors = {"current": np.zeros(2, np.float32), "long_term": np.array([long_term, -long_term], np.float32),
                   "session": np.ones(2, np.float32)}
        marks = _marks(clear[0]) if clear else {}
        profile = Profile(user, vectors, tuple(id_hash(i) for i in items), {"items": items}, tuple(changed))
        (written,) = self.run(self.store.write_profiles([profile], clear=marks))

        model = self.users[user]
        model.bump("version", 1)
        version = model.meta["version"]
        model.recs, model.long_term = list(items), [long_term, -long_term]
        for (topic, partition), users in marks.items():
            held = self.pending.get((topic, partition), {})
            for marked, offset in users.items():
                if held.get(marked) == offset:
                    del held[marked]
        model.interest_versions.update({name: version for name in changed})
        assert written.version == version
        assert written.interest_versions == model.interest_versions
        stored = self.run(self.store.profile(user))
        assert stored.rec_items == tuple(id_hash(i) for i in items) and stored.body == {"items": items}
        assert stored.versions == model.interest_versions

    # ---- the model ---------------------------------------------------------------------------------------

    def _next_offset(self, key: tuple[str, int], delta: int) -> int:
        end = self.log_end.get(key, 0)
        offset = max(0, end + delta)
        self.log_end[key] = max(end, offset + 1)
        return offset

    def _entry(self, spec: Spec) -> Entry:
        offset = self._next_offset((TOPIC[spec.stream], spec.partition), spec.delta)
        if spec.stream == "c":
            record = StoredClick(spec.event_id, spec.item, spec.action, BASE_MS + spec.ts, spec.session)
        else:
            embedding = pack_embedding(np.array(spec.embedding, np.float32)) if spec.embedding else b""
            record = StoredText(spec.event_id, BASE_MS + spec.ts, embedding)
        return Entry(spec.user, TOPIC[spec.stream], spec.partition, offset, record)

    def _apply(self, entries, ends) -> list[str]:
        result = self.run(self.store.apply(list(entries), ends))
        outcomes, ranks, changed = self._model_apply(entries, ends)
        assert result.outcomes == outcomes
        assert result.ranks == ranks
        got = {user.user_id: user for user in result.users}
        assert set(got) == changed
        for user_id, applied in got.items():
            self._check_user(user_id, applied)
        return outcomes

    def _model_apply(self, entries, ends):
        outcomes, ranks = [""] * len(entries), [-1] * len(entries)
        # Pending marks first: per (topic, partition), each user's last offset in the batch (overwriting).
        for key, users in _marks(entries).items():
            self.pending.setdefault(key, {}).update(users)
        # One call per user and (stream, partition), in order of first appearance.
        groups: dict[tuple[str, str, str, int], list[int]] = {}
        for index, entry in enumerate(entries):
            stream = "c" if isinstance(entry.record, StoredClick) else "t"
            groups.setdefault((entry.user_id, stream, entry.topic, entry.partition), []).append(index)
        for (user, stream, topic, partition), indices in groups.items():
            model = self.users[user]
            fence_field = KeySpace.fence_field(topic, partition)
            fence = model.meta.get(fence_field, -1)
            applied = []
            for index in indices:
                entry = entries[index]
                if entry.offset <= fence:
                    outcomes[index] = "late" if entry.record.event_id in model.late_ids[stream] else "replay"
                    continue
                fence = entry.offset
                outcome = (self._click if stream == "c" else self._text)(model, entry.record, applied)
                outcomes[index] = outcome
                if outcome == "applied" and stream == "c":
                    ranks[index] = _rank(model.recs, entry.record.item_id)
            model.meta[fence_field] = fence
            if stream == "c" and applied:
                model.clicks = sorted(model.clicks + applied, key=lambda c: c.ts)[-self.max_clicks:]  # stable
            model.bump("applied:" + stream, len(applied))
        # Resume offsets: the highest end ever given per partition.
        if ends is None:
            ends = {}
            for entry in entries:
                key = (entry.topic, entry.partition)
                ends[key] = max(ends.get(key, -1), entry.offset)
        for (topic, partition), end in ends.items():
            resume = self.resume[topic]
            resume[partition] = max(resume.get(partition, -1), end)
        changed = {entries[i].user_id for i, outcome in enumerate(outcomes) if outcome == "applied"}
        return outcomes, ranks, changed

    def _click(self, model: UserModel, record: StoredClick, applied: list[Click]) -> str:
        ts = record.ts - BASE_MS
        if any(c.event_id == record.event_id for c in model.clicks + applied):
            return "duplicate"
        if model.newest is not None and ts < model.newest - self.lateness:
            return model.late("c", record.event_id)
        applied.append(Click(record.event_id, record.item_id, ts, record.session_id, record.action))
        model.newest = ts if model.newest is None else max(model.newest, ts)
        return "applied"

    def _text(self, model: UserModel, record: StoredText, applied: list) -> str:
        ts = record.ts - BASE_MS
        if record.event_id in model.text_ids:
            return "duplicate"
        if model.text_newest is not None and ts < model.text_newest - self.lateness:
            return model.late("t", record.event_id)
        applied.append(record)
        model.text_count += 1
        model.text_newest = ts if model.text_newest is None else max(model.text_newest, ts)
        model.text_ids = (model.text_ids + [record.event_id])[-self.max_texts:]
        if record.embedding:
            vector = np.frombuffer(record.embedding, "<i2").astype(np.float64)
            if len(vector) != model.text_dim or not model.folded:  # a new width starts the mean again
                model.text_dim, model.folded = len(vector), []
            model.folded.append(vector)
        return "applied"

    # ---- reading back ------------------------------------------------------------------------------------

    def _check_user(self, user_id: str, stored) -> None:
        model = self.users[user_id]
        history = stored.clicks
        records = list(zip(history.items.tolist(), history.ts.tolist(), history.events.tolist(),
                           history.sessions.tolist(), history.actions.tolist()))
        assert records == [c.stored() for c in model.clicks], user_id
        # What holds whatever the model says: sorted, bounded, no event twice.
        assert (np.diff(history.ts) >= 0).all() and len(history) <= self.max_clicks
        assert len(set(history.events.tolist())) == len(history)
        assert stored.clicks_applied == model.meta.get("applied:c", 0)
        assert session_starts(history, self.gap).tolist() == model_session_starts(model.clicks, self.gap)
        assert (None if stored.long_term is None else stored.long_term.tolist()) == model.long_term
        texts = stored.texts
        if not model.text_count:
            assert texts is None
            return
        assert (texts.count, texts.newest_ts, texts.folded) == (model.text_count, BASE_MS + model.text_newest,
                                                               len(model.folded))
        if not model.folded:
            assert texts.mean is None
            return
        exact = np.mean(model.folded, axis=0)  # int16 units
        got = np.round(texts.mean.astype(np.float64) * TEXT_SCALE)
        # The running mean rounds to int16 at each fold: after n folds it is within (n + 1) / 4 of the mean.
        assert got.shape == exact.shape and np.abs(got - exact).max() <= (len(model.folded) + 1) / 4 + 1e-9

    async def _read_back(self):
        store = self.store
        return await asyncio.gather(
            store.histories(USERS), asyncio.gather(*(store.meta(u) for u in USERS)),
            asyncio.gather(*(store.resume_offsets(t) for t in TOPIC.values())),
            asyncio.gather(*(store.pending_users(t, PARTITIONS) for t in TOPIC.values())))

    @invariant()
    @precondition(lambda self: self.store is not None)
    def stored_state_is_the_model(self):
        histories, metas, offsets, pending = self.run(self._read_back())
        for user_id, stored, meta in zip(USERS, histories, metas):
            self._check_user(user_id, stored)
            assert meta == self.users[user_id].meta, user_id
        starts = session_starts_of([h.clicks for h in histories], self.gap)
        assert starts == [(model_session_starts(self.users[u].clicks, self.gap) or [0])[-1] for u in USERS]
        assert dict(zip(TOPIC.values(), offsets)) == self.resume
        for topic, marks in zip(TOPIC.values(), pending):
            expected = {p: {u: o for u, o in self.pending.get((topic, p), {}).items()} for p in PARTITIONS}
            assert marks == {p: users for p, users in expected.items() if users}, topic


def _marks(entries) -> dict[tuple[str, int], dict[str, str]]:
    """Each user's last offset per (topic, partition) in a batch: what the batch marks."""
    marks: dict[tuple[str, int], dict[str, str]] = {}
    for entry in entries:
        users = marks.setdefault((entry.topic, entry.partition), {})
        users[entry.user_id] = str(max(int(users.get(entry.user_id, -1)), entry.offset))
    return marks


def _rank(recs: list[str] | None, item: str) -> int:
    if recs is None:
        return -1
    return recs.index(item) + 1 if item in recs else 0


def test_apply_matches_its_model(redis_url, run):
    client = aioredis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        run_state_machine_as_test(lambda: ApplyMachine(run, client), settings=SETTINGS)
    finally:
        run(client.aclose())
