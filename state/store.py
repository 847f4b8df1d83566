"""The Redis store: one pipeline to apply a micro-batch, one to write results, one to clear marks.

Scripts are called by their SHA1 (EVALSHA), loaded once per store: redis-py's
own script objects ask ``SCRIPT EXISTS`` before every pipeline that uses them,
an extra round trip each. When Redis has lost them (a restart, ``SCRIPT
FLUSH``), every EVALSHA of the pipeline fails with NOSCRIPT and none of the
scripts runs; they are loaded again and the same pipeline is sent once more
(its other commands, pending marks, are idempotent). On Redis Cluster, where redis-py refuses
EVALSHA in a pipeline, the scripts go by body (EVAL).

``apply`` sends, in one pipeline, the pending marks of the batch's users, one
APPLY_EVENTS call per (user, stream) and then one ADVANCE_OFFSET per source
partition. The pending marks come first: a worker that dies after applying
events but before publishing their recommendations leaves the users marked, and
whoever owns the partition next refreshes them (``pending_users``). Redis runs a pipeline in order,
so a partition's resume offset is written only after the events it covers; if
the connection drops midway the resume offset lags, and the per-user fences
make the replay harmless. On Redis Cluster the same calls go through a cluster
pipeline: every script touches the keys of one user, hence one slot. (A cluster
pipeline is one round trip per node, sent concurrently.)
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from state.keys import KeySpace
from state.scripts import ADVANCE_OFFSET, APPLY_EVENTS, WRITE_PROFILE

_SCRIPTS = (APPLY_EVENTS, ADVANCE_OFFSET, WRITE_PROFILE)
LONG_TERM_FIELD = "vector:long_term"  # the profile field read back with each history (``AppliedUser.long_term``)

__all__ = ["Store", "Entry", "StoredClick", "StoredText", "AppliedUser", "Profile", "ApplyResult", "Written",
           "pending_marks", "partition_ends"]


@dataclass(frozen=True, slots=True)
class StoredClick:
    event_id: str
    item_id: str
    action: str
    ts: int
    session_id: str | None = None

    def payload(self) -> bytes:
        return orjson.dumps([self.item_id, self.action, self.session_id])

    @classmethod
    def parse(cls, event_id: bytes, ts: bytes, payload: bytes) -> "StoredClick":
        item_id, action, session_id = orjson.loads(payload)
        return cls(event_id.decode(), item_id, action, int(float(ts)), session_id)


@dataclass(frozen=True, slots=True)
class StoredText:
    """A text event as kept: its embedding (float16 bytes), not its text."""

    event_id: str
    kind: str
    ts: int
    embedding: bytes
    item_id: str | None = None

    def payload(self) -> bytes:
        # orjson never emits a raw newline, so the first one ends the header.
        return orjson.dumps([self.kind, self.item_id]) + b"\n" + self.embedding

    @classmethod
    def parse(cls, event_id: bytes, ts: bytes, payload: bytes) -> "StoredText":
        header, _, embedding = payload.partition(b"\n")
        kind, item_id = orjson.loads(header)
        return cls(event_id.decode(), kind, int(float(ts)), embedding, item_id)


@dataclass(frozen=True, slots=True)
class Entry:
    """One event to apply, with the Kafka position that fences it."""

    user_id: str
    topic: str
    partition: int
    offset: int
    record: StoredClick | StoredText

    @property
    def stream(self) -> str:
        return "c" if isinstance(self.record, StoredClick) else "t"


@dataclass(frozen=True, slots=True)
class AppliedUser:
    """A user whose history changed in this batch, with the history after the change."""

    user_id: str
    clicks: tuple[StoredClick, ...]
    texts: tuple[StoredText, ...]
    clicks_applied: int = 0  # ever, unlike ``clicks``, which is bounded
    long_term: bytes | None = None  # the stored long-term vector before this change: drift is measured from it


@dataclass(frozen=True, slots=True)
class ApplyResult:
    outcomes: list[str]  # aligned with the entries given to apply()
    ranks: list[int]  # per entry: rank of an applied click in the user's last published list, 0 absent, -1 n/a
    users: list[AppliedUser]


@dataclass(frozen=True, slots=True)
class Profile:
    """What a refresh writes for one user; vectors are float32 bytes by name.

    ``changed`` names the interests this refresh changed: each gets the new
    user version as its ``version:<name>``.
    """

    user_id: str
    vectors: dict[str, bytes]
    recommendations: bytes
    rec_items: tuple[str, ...]
    model_version: str
    last_event_ts: int
    extra: dict[str, bytes | str | int | float] = field(default_factory=dict)
    changed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Written:
    """A profile's new user version and the version at which each interest last changed."""

    version: int
    interest_versions: dict[str, int]


class Store:
    """Per-user histories, fences and profiles in Redis.

    >>> store = Store.from_url("redis://127.0.0.1:6379/0")
    >>> result = await store.apply(entries)          # doctest: +SKIP
    """

    def __init__(self, client: aioredis.Redis, keys: KeySpace = KeySpace(), *,
                 max_clicks: int = 200, max_texts: int = 32, lateness_ms: int = 86_400_000) -> None:
        self.client = client
        self.keys = keys
        self.max_clicks = max_clicks
        self.max_texts = max_texts
        self.lateness_ms = lateness_ms
        # redis-py refuses EVALSHA in a Redis Cluster pipeline; EVAL with the body works.
        self._cluster = isinstance(client, RedisCluster)
        self._sha = {text: hashlib.sha1(text.encode()).hexdigest() for text in _SCRIPTS}
        self._scripts_loaded = False

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, **kwargs) -> "Store":
        """A store on ``url``; ``cluster`` for Redis Cluster (any node's URL)."""
        options = dict(socket_timeout=10, socket_connect_timeout=5)
        if cluster:
            client = RedisCluster.from_url(url, **options)
        else:
            client = aioredis.Redis.from_url(url, health_check_interval=15, **options)
        return cls(client, kwargs.pop("keys", KeySpace()), **kwargs)

    def _pipeline(self):
        # Not a MULTI transaction: atomicity is per user, in the scripts.
        return self.client.pipeline() if self._cluster else self.client.pipeline(transaction=False)

    def _script(self, pipe, text: str, keys: list[str], args: list) -> None:
        if self._cluster:
            pipe.eval(text, len(keys), *keys, *args)
        else:
            pipe.evalsha(self._sha[text], len(keys), *keys, *args)

    async def _execute(self, queue: Callable[[object], None]) -> list:
        """One round trip: a pipeline ``queue`` fills, sent again once if Redis had lost the scripts."""
        if not self._cluster and not self._scripts_loaded:
            await self._load_scripts()
        pipe = self._pipeline()
        queue(pipe)
        try:
            return await pipe.execute()
        except NoScriptError:
            await self._load_scripts()
            pipe = self._pipeline()
            queue(pipe)
            return await pipe.execute()

    async def _load_scripts(self) -> None:
        for text in _SCRIPTS:
            await self.client.script_load(text)
        self._scripts_loaded = True

    async def close(self) -> None:
        await self.client.aclose()

    async def apply(self, entries: Sequence[Entry], ends: dict[tuple[str, int], int] | None = None) -> ApplyResult:
        """Apply events atomically per user and advance partition offsets; one round trip.

        ``ends`` is the last offset consumed per (topic, partition), dead letters
        included; it defaults to the entries' own offsets.
        """
        groups = _group(entries)
        marks = pending_marks(entries)

        def queue(pipe) -> None:
            for (topic, partition), users in marks.items():
                pipe.sadd(self.keys.pending(topic, partition), *users)
            for (user_id, stream, topic, partition), members in groups.items():
                limit = self.max_clicks if stream == "c" else self.max_texts
                args: list[bytes | str | int] = [stream, KeySpace.fence_field(topic, partition), limit,
                                                 self.lateness_ms, LONG_TERM_FIELD]
                for _, entry in members:
                    item = entry.record.item_id if stream == "c" else ""
                    args += [entry.offset, entry.record.ts, entry.record.event_id, item, entry.record.payload()]
                self._script(pipe, APPLY_EVENTS, self.keys.user(user_id).script_keys(), args)
            for (topic, partition), offset in (ends or partition_ends(entries)).items():
                self._script(pipe, ADVANCE_OFFSET, [self.keys.offsets(topic)], [partition, offset])

        replies = await self._execute(queue)
        return _collect(entries, groups, replies[len(marks): len(marks) + len(groups)])

    async def clear_pending(self, marks: dict[tuple[str, int], set[str]]) -> None:
        """Unmark users whose recommendations are published (see ``pending_marks``)."""
        if not marks:
            return
        pipe = self._pipeline()
        for (topic, partition), users in marks.items():
            pipe.srem(self.keys.pending(topic, partition), *users)
        await pipe.execute()

    async def pending_users(self, topic: str, partitions: Iterable[int]) -> dict[int, set[str]]:
        """Users left marked on these partitions by a worker that stopped mid-batch."""
        pipe = self._pipeline()
        partitions = list(partitions)
        for partition in partitions:
            pipe.smembers(self.keys.pending(topic, partition))
        replies = await pipe.execute()
        return {p: {u.decode() for u in users} for p, users in zip(partitions, replies) if users}

    async def histories(self, user_ids: Sequence[str]) -> list[AppliedUser]:
        """Stored clicks and texts of several users, oldest first; one round trip."""
        pipe = self._pipeline()
        for user_id in user_ids:
            keys = self.keys.user(user_id)
            for zset, data in ((keys.clicks, keys.clicks_data), (keys.texts, keys.texts_data)):
                pipe.zrange(zset, 0, -1, withscores=True)
                pipe.hgetall(data)
            pipe.hget(keys.meta, "applied:c")
            pipe.hget(keys.profile, LONG_TERM_FIELD)
        replies = await pipe.execute()
        return [_history(user_id, *replies[6 * i: 6 * i + 6]) for i, user_id in enumerate(user_ids)]

    async def write_profiles(self, profiles: Sequence[Profile], interests: Sequence[str] = ()) -> list[Written]:
        """Store refreshed profiles; one round trip.

        Returns each user's new version and, for every name in ``interests``,
        the version at which that interest last changed (absent if never).
        """
        now = int(time.time() * 1000)

        def queue(pipe) -> None:
            for profile in profiles:
                keys = self.keys.user(profile.user_id)
                mapping = {f"vector:{name}": value for name, value in profile.vectors.items()}
                mapping.update(profile.extra)
                mapping.update(recommendations=profile.recommendations, model_version=profile.model_version,
                               rec_items="\n" + "\n".join(profile.rec_items) + "\n",
                               last_event_ts=profile.last_event_ts, updated_at=now)
                args = [len(mapping), *[x for pair in mapping.items() for x in pair],
                        len(profile.changed), *profile.changed, *interests]
                self._script(pipe, WRITE_PROFILE, [keys.meta, keys.profile], args)

        replies = await self._execute(queue)
        return [Written(int(reply[0]), {name: int(v) for name, v in zip(interests, reply[1:]) if v})
                for reply in replies]

    async def resume_offsets(self, topic: str) -> dict[int, int]:
        """Last applied offset of each partition of ``topic`` (absent: nothing applied yet)."""
        raw = await self.client.hgetall(self.keys.offsets(topic))
        return {int(partition): int(offset) for partition, offset in raw.items()}

    async def profile(self, user_id: str) -> dict[str, bytes]:
        raw = await self.client.hgetall(self.keys.user(user_id).profile)
        return {key.decode(): value for key, value in raw.items()}

    async def meta(self, user_id: str) -> dict[str, int]:
        raw = await self.client.hgetall(self.keys.user(user_id).meta)
        return {key.decode(): int(value) for key, value in raw.items()}

    async def history(self, user_id: str) -> AppliedUser:
        """A user's stored clicks and texts, oldest first."""
        return (await self.histories([user_id]))[0]


def _history(user_id: str, click_ids, click_data, text_ids, text_data, clicks_applied, long_term) -> AppliedUser:
    clicks = tuple(StoredClick.parse(i, str(ts).encode(), click_data[i]) for i, ts in click_ids)
    texts = tuple(StoredText.parse(i, str(ts).encode(), text_data[i]) for i, ts in text_ids)
    return AppliedUser(user_id, clicks, texts, int(clicks_applied or 0), long_term)


def pending_marks(entries: Iterable[Entry]) -> dict[tuple[str, int], set[str]]:
    """The users of a batch by the (topic, partition) their events came from."""
    marks: dict[tuple[str, int], set[str]] = defaultdict(set)
    for entry in entries:
        marks[(entry.topic, entry.partition)].add(entry.user_id)
    return marks


GroupKey = tuple[str, str, str, int]


def _group(entries: Sequence[Entry]) -> dict[GroupKey, list[tuple[int, Entry]]]:
    groups: dict[GroupKey, list[tuple[int, Entry]]] = defaultdict(list)
    for index, entry in enumerate(entries):
        groups[(entry.user_id, entry.stream, entry.topic, entry.partition)].append((index, entry))
    return groups


def partition_ends(messages: Iterable) -> dict[tuple[str, int], int]:
    """The last offset per (topic, partition) of anything with ``topic``, ``partition``, ``offset``."""
    ends: dict[tuple[str, int], int] = {}
    for message in messages:
        key = (message.topic, message.partition)
        ends[key] = max(ends.get(key, -1), message.offset)
    return ends


def _collect(entries: Sequence[Entry], groups: dict[GroupKey, list[tuple[int, Entry]]],
             replies: list) -> ApplyResult:
    outcomes = [""] * len(entries)
    ranks = [-1] * len(entries)
    latest: dict[str, AppliedUser] = {}
    for ((user_id, *_), members), reply in zip(groups.items(), replies):
        group_outcomes, group_ranks, clicks, texts, clicks_applied, long_term = reply
        for (index, _), outcome, rank in zip(members, group_outcomes, group_ranks):
            outcomes[index] = outcome.decode()
            ranks[index] = int(rank)
        if clicks or texts:
            # Later groups of the same user ran later in the pipeline: their history is newer.
            latest[user_id] = AppliedUser(user_id, _parse(StoredClick, clicks), _parse(StoredText, texts),
                                          int(clicks_applied), long_term)
    return ApplyResult(outcomes, ranks, list(latest.values()))


def _parse(kind, flat: list[bytes]) -> tuple:
    return tuple(kind.parse(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3))
