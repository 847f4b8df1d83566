"""The Redis store: one pipeline to apply a micro-batch, one to write results, one to clear marks.

Scripts are called by their SHA1 (EVALSHA), loaded once per store: redis-py's
own script objects ask ``SCRIPT EXISTS`` before every pipeline that uses them,
an extra round trip each. When Redis has lost them (a restart, ``SCRIPT
FLUSH``), every EVALSHA of the pipeline fails with NOSCRIPT and none of the
scripts runs; they are loaded again and the same pipeline is sent once more
(its other commands, pending marks, are idempotent). On Redis Cluster, where redis-py refuses
EVALSHA in a pipeline, the scripts go by body (EVAL).

``apply`` sends, in one pipeline, the pending marks of the batch's users, one
APPLY_EVENTS call per user and then one ADVANCE_OFFSET per source partition.
The pending marks come first: a worker that dies after applying events but
before publishing their recommendations leaves the users marked, and whoever
owns the partition next refreshes them (``pending_users``). A mark holds the
offset of the batch that set it and is cleared only while it still does
(CLEAR_PENDING), so a batch that publishes late never unmarks a user whom a
later batch marked again. Redis runs a pipeline in order, so a partition's
resume offset is written only after the events it covers; if the connection
drops midway the resume offset lags, and the per-user fences make the replay
harmless. On Redis Cluster the same calls go through a cluster pipeline: every
script touches the keys of one user, hence one slot. (A cluster pipeline is
one round trip per node, sent concurrently.)

The values are packed (`state.layout`), and the whole database carries its
layout version (``<prefix>:layout``): `check_layout` refuses a database
written by another release instead of misreading it.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from state.errors import LayoutMismatch
from state.keys import KeySpace
from state.layout import (EMPTY_CLICKS, INTEREST_NAMES, LAYOUT, READABLE, ClickHistory, StoredProfile, TextState,
                          decode_clicks, decode_profile, decode_texts, event_hash, id_hash, long_term_of,
                          pack_click, pack_profile, session_hash)
from state.scripts import ADVANCE_OFFSET, APPLY_EVENTS, APPLY_ITEMS, CLEAR_PENDING, OUTCOMES, WRITE_PROFILE

_SCRIPTS = (APPLY_EVENTS, ADVANCE_OFFSET, WRITE_PROFILE, CLEAR_PENDING, APPLY_ITEMS)
_ITEM_OUTCOMES = {"a": "applied", "s": "stale"}
CHANGES_KEPT = 100_000  # the catalogue's change stream, approximately (a worker further behind reloads it whole)
_READABLE_MARKERS = {str(layout).encode() for layout in READABLE}  # the prefix's layout marker, as Redis returns it
_LAYOUT_ERROR = re.compile(r"LAYOUT (\w+) value of (\S+) has layout (\d+)")  # the apply script's refusal

__all__ = ["Store", "Entry", "StoredClick", "StoredText", "AppliedUser", "Profile", "ApplyResult", "Written",
           "ItemState", "CatalogueChanges", "pending_marks", "partition_ends"]


@dataclass(frozen=True, slots=True)
class StoredClick:
    """A click to apply. ``action`` is a small code chosen by the caller (the worker: the model's)."""

    event_id: str
    item_id: str
    action: int
    ts: int
    session_id: str | None = None
    context: int = 0  # the click's context word (the worker: encoders.features.context_word); 0 for none

    def pack(self) -> bytes:
        return pack_click(id_hash(self.item_id), self.ts, event_hash(self.event_id), session_hash(self.session_id),
                          self.action, self.context)


@dataclass(frozen=True, slots=True)
class StoredText:
    """A text to apply: its embedding (`state.layout.pack_embedding`, b"" for none), not its text."""

    event_id: str
    ts: int
    embedding: bytes = b""


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
    clicks: ClickHistory
    texts: TextState | None = None
    clicks_applied: int = 0  # ever, unlike ``clicks``, which is bounded
    long_term: np.ndarray | None = None  # the stored long-term vector before this change: drift is measured from it


@dataclass(frozen=True, slots=True)
class ApplyResult:
    outcomes: list[str]  # aligned with the entries given to apply()
    ranks: list[int]  # per entry: rank of an applied click in the user's last published list, 0 absent, -1 n/a
    users: list[AppliedUser]


@dataclass(frozen=True, slots=True)
class Profile:
    """What a refresh writes for one user (see `state.layout`, profile value).

    ``vectors`` holds the current, long_term and session vectors; ``rec_items``
    the recommended items' id hashes, best first; ``body`` the JSON part;
    ``changed`` names the interests this refresh changed: each gets the new
    user version as its version.
    """

    user_id: str
    vectors: dict[str, np.ndarray]
    rec_items: tuple[int, ...]
    body: dict[str, Any] = field(default_factory=dict)
    changed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Written:
    """A profile's new user version and the version at which each interest last changed."""

    version: int
    interest_versions: dict[str, int]


@dataclass(frozen=True, slots=True)
class ItemState:
    """An item of the live catalogue as its newest upsert left it."""

    item_id: str
    available: bool
    ts: int
    title: str | None = None
    categories: tuple[str, ...] | None = None

    def pack(self) -> bytes:
        """The stored value: the ts first (the apply script compares it), then the rest as JSON."""
        body = {"available": self.available, "title": self.title,
                "categories": None if self.categories is None else list(self.categories)}
        return b"%d " % self.ts + orjson.dumps(body)

    @classmethod
    def unpack(cls, item_id: str, value: bytes) -> "ItemState":
        ts, body = value.split(b" ", 1)
        found = orjson.loads(body)
        categories = found.get("categories")
        return cls(item_id, bool(found["available"]), int(ts), found.get("title"),
                   None if categories is None else tuple(categories))


@dataclass(frozen=True, slots=True)
class CatalogueChanges:
    """What `Store.catalogue_changes` found: the items to set, and the position to ask from next time.

    ``whole`` says ``items`` is the entire catalogue (replace, do not merge).
    """

    items: list[ItemState]
    position: str | None
    whole: bool


Marks = dict[tuple[str, int], dict[str, str]]  # (topic, partition) -> user -> offset of the batch that marked


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
        except ResponseError as exc:
            found = _LAYOUT_ERROR.search(str(exc))
            if found:
                raise LayoutMismatch(f"the {found[1]} value {found[2]}", found[3]) from None
            raise

    async def _load_scripts(self) -> None:
        for text in _SCRIPTS:
            await self.client.script_load(text)
        self._scripts_loaded = True

    async def close(self) -> None:
        await self.client.aclose()

    async def check_layout(self) -> None:
        """Claim the prefix for this layout, or raise `LayoutMismatch` if another release wrote it.

        A prefix without a layout marker is new unless it holds keys only the
        first layout wrote (``:clicks:data``); then it is refused.  A layout 2
        prefix is claimed for layout 3: its values are read as they are and
        upgraded as they are written (`state.layout`), so no history is lost;
        a worker of the previous release refuses the upgraded values.
        """
        marker = await self.client.get(self.keys.layout())
        if marker is None:
            async for _ in self.client.scan_iter(match=f"{self.keys.prefix}:{{u:*}}:clicks:data", count=1000):
                raise LayoutMismatch(f"Redis keys under prefix {self.keys.prefix!r}", "1")
            await self.client.set(self.keys.layout(), LAYOUT, nx=True)
        elif marker in _READABLE_MARKERS:
            if marker != str(LAYOUT).encode():
                await self.client.set(self.keys.layout(), LAYOUT)
        else:
            raise LayoutMismatch(f"Redis keys under prefix {self.keys.prefix!r}", marker.decode(errors="replace"))

    async def apply(self, entries: Sequence[Entry], ends: dict[tuple[str, int], int] | None = None) -> ApplyResult:
        """Apply events atomically per user and advance partition offsets; one round trip.

        ``ends`` is the last offset consumed per (topic, partition), dead letters
        included; it defaults to the entries' own offsets.
        """
        calls = _calls(entries)
        marks = pending_marks(entries)

        def queue(pipe) -> None:
            for (topic, partition), users in marks.items():
                pipe.hset(self.keys.pending(topic, partition), mapping=users)
            for call in calls:
                self._script(pipe, APPLY_EVENTS, self.keys.user(call.user_id).script_keys(), self._args(call))
            for (topic, partition), offset in (ends or partition_ends(entries)).items():
                self._script(pipe, ADVANCE_OFFSET, [self.keys.offsets(topic)], [partition, offset])

        replies = await self._execute(queue)
        return _collect(len(entries), calls, replies[len(marks): len(marks) + len(calls)])

    def _args(self, call: "_Call") -> list:
        clicks, texts = call.clicks, call.texts
        args: list[Any] = [KeySpace.fence_field(*clicks[0][1:3]) if clicks else "",
                           KeySpace.fence_field(*texts[0][1:3]) if texts else "",
                           self.max_clicks, self.max_texts, self.lateness_ms, len(clicks)]
        for _, _, _, entry in clicks:
            args += [entry.offset, entry.record.pack()]
        for _, _, _, entry in texts:
            record = entry.record
            args += [entry.offset, record.ts, event_hash(record.event_id).to_bytes(6, "little"), record.embedding]
        return args

    async def clear_pending(self, marks: Marks) -> None:
        """Unmark users whose recommendations are published, where the mark is still the one given."""
        marks = {key: users for key, users in marks.items() if users}
        if marks:
            await self._execute(lambda pipe: self._queue_clear(pipe, marks))

    def _queue_clear(self, pipe, marks: Marks) -> None:
        for (topic, partition), users in marks.items():
            self._script(pipe, CLEAR_PENDING, [self.keys.pending(topic, partition)],
                         [x for pair in users.items() for x in pair])

    async def pending_users(self, topic: str, partitions: Iterable[int]) -> dict[int, dict[str, str]]:
        """Users left marked on these partitions by a worker that stopped mid-batch, with their marks."""
        pipe = self._pipeline()
        partitions = list(partitions)
        for partition in partitions:
            pipe.hgetall(self.keys.pending(topic, partition))
        replies = await pipe.execute()
        return {p: {u.decode(): o.decode() for u, o in users.items()}
                for p, users in zip(partitions, replies) if users}

    async def histories(self, user_ids: Sequence[str]) -> list[AppliedUser]:
        """Stored clicks and texts of several users, oldest first; one round trip."""
        pipe = self._pipeline()
        for user_id in user_ids:
            keys = self.keys.user(user_id)
            pipe.get(keys.clicks)
            pipe.get(keys.texts)
            pipe.hget(keys.meta, "applied:c")
            pipe.get(keys.profile)
        replies = await pipe.execute()
        return [_applied_user(user_id, *replies[4 * i: 4 * i + 4]) for i, user_id in enumerate(user_ids)]

    async def write_profiles(self, profiles: Sequence[Profile], clear: Marks | None = None) -> list[Written]:
        """Store refreshed profiles, and clear the pending marks ``clear`` (see `clear_pending`); one round trip.

        Returns each user's new version and, per interest, the version at which
        it last changed (absent if never).
        """
        clear = {key: users for key, users in (clear or {}).items() if users}

        def queue(pipe) -> None:
            self._queue_clear(pipe, clear)
            for profile in profiles:
                keys = self.keys.user(profile.user_id)
                mask = sum(1 << INTEREST_NAMES.index(name) for name in set(profile.changed))
                value = pack_profile(profile.vectors, profile.rec_items, profile.body)
                self._script(pipe, WRITE_PROFILE, [keys.meta, keys.profile], [value, mask])

        replies = await self._execute(queue)
        return [Written(int(reply[0]), {name: int(v) for name, v in zip(INTEREST_NAMES, reply[1:]) if int(v)})
                for reply in replies[len(clear):]]

    async def apply_items(self, items: Sequence[ItemState],
                          ends: dict[tuple[str, int], int] | None = None) -> list[str]:
        """Upsert items of the live catalogue (the newest ts wins) and advance ``ends``; one round trip.

        Returns per item "applied", or "stale" when the stored upsert is newer
        or the same (a replay changes nothing, so needs no fence). ``ends``
        are the items topic's last offsets consumed, as for `apply`.
        """
        args: list[Any] = [CHANGES_KEPT]
        for item in items:
            args += [item.item_id, item.pack()]

        def queue(pipe) -> None:
            if items:
                self._script(pipe, APPLY_ITEMS, list(self.keys.catalogue()), args)
            for (topic, partition), offset in (ends or {}).items():
                self._script(pipe, ADVANCE_OFFSET, [self.keys.offsets(topic)], [partition, offset])

        replies = await self._execute(queue)
        return [_ITEM_OUTCOMES[letter] for letter in replies[0].decode()] if items else []

    async def catalogue_changes(self, after: str | None, count: int = 10_000) -> CatalogueChanges:
        """Upserts applied since stream position ``after``, or the whole catalogue.

        The whole catalogue comes back when ``after`` is None (a new reader) or
        when the stream was trimmed past it (a reader further behind than
        `CHANGES_KEPT` upserts). At most ``count`` changes per call: call
        again while ``len(items) == count``.
        """
        items_key, changes_key = self.keys.catalogue()
        if after is not None:
            pipe = self._pipeline()
            pipe.xrange(changes_key, "-", "+", count=1)
            pipe.xrange(changes_key, f"({after}", "+", count=count)
            oldest, newer = await pipe.execute()
            if not oldest or _stream_id(oldest[0][0]) <= _stream_id(after):
                return CatalogueChanges([ItemState.unpack(fields[b"item"].decode(), fields[b"value"])
                                         for _, fields in newer],
                                        newer[-1][0].decode() if newer else after, whole=False)
        # The position first: an upsert between the two reads is in the hash and read again after it.
        pipe = self._pipeline()
        pipe.xrevrange(changes_key, "+", "-", count=1)
        pipe.hgetall(items_key)
        newest, stored = await pipe.execute()
        return CatalogueChanges([ItemState.unpack(item.decode(), value) for item, value in stored.items()],
                                newest[0][0].decode() if newest else "0-0", whole=True)

    async def resume_offsets(self, topic: str) -> dict[int, int]:
        """Last applied offset of each partition of ``topic`` (absent: nothing applied yet)."""
        raw = await self.client.hgetall(self.keys.offsets(topic))
        return {int(partition): int(offset) for partition, offset in raw.items()}

    async def profile(self, user_id: str) -> StoredProfile | None:
        """The user's last written profile (None before the first refresh)."""
        return _decoded(decode_profile, await self.client.get(self.keys.user(user_id).profile), "profile", user_id)

    async def meta(self, user_id: str) -> dict[str, int]:
        """The user's fences, applied counters and version (not the hashes of their late events)."""
        raw = await self.client.hgetall(self.keys.user(user_id).meta)
        return {key.decode(): int(value) for key, value in raw.items() if not key.startswith(b"late:")}

    async def history(self, user_id: str) -> AppliedUser:
        """A user's stored clicks and text state, oldest first."""
        return (await self.histories([user_id]))[0]


def _stream_id(position: bytes | str) -> tuple[int, int]:
    ms, _, seq = (position.decode() if isinstance(position, bytes) else position).partition("-")
    return int(ms), int(seq or 0)


def _decoded(decode, blob, what: str, user_id: str):
    try:
        return decode(blob)
    except ValueError as exc:
        found = re.search(r"has layout (\d+)", str(exc))
        raise LayoutMismatch(f"the {what} value of user {user_id!r}", found[1] if found else "unknown") from None


def _applied_user(user_id: str, clicks, texts, clicks_applied, profile) -> AppliedUser:
    return AppliedUser(user_id, _decoded(decode_clicks, clicks, "clicks", user_id) if clicks else EMPTY_CLICKS,
                       _decoded(decode_texts, texts, "texts", user_id), int(clicks_applied or 0),
                       long_term_of(profile))


def pending_marks(entries: Iterable[Entry]) -> Marks:
    """The users of a batch by the (topic, partition) their events came from, each with the batch's last offset."""
    marks: Marks = defaultdict(dict)
    for entry in entries:
        users = marks[(entry.topic, entry.partition)]
        users[entry.user_id] = str(max(int(users.get(entry.user_id, -1)), entry.offset))
    return marks


def partition_ends(messages: Iterable) -> dict[tuple[str, int], int]:
    """The last offset per (topic, partition) of anything with ``topic``, ``partition``, ``offset``."""
    ends: dict[tuple[str, int], int] = {}
    for message in messages:
        key = (message.topic, message.partition)
        ends[key] = max(ends.get(key, -1), message.offset)
    return ends


Member = tuple[int, str, int, Entry]  # (index in the batch, topic, partition, entry)


@dataclass
class _Call:
    """One APPLY_EVENTS call: a user's clicks from one partition and texts from one partition."""

    user_id: str
    clicks: list[Member]
    texts: list[Member]


def _calls(entries: Sequence[Entry]) -> list[_Call]:
    """One call per user, in order of first appearance (a user whose events came from two partitions
    of one topic, which keys make rare, gets one call per partition)."""
    streams: dict[str, dict[str, dict[tuple[str, int], list[Member]]]] = {}
    for index, entry in enumerate(entries):
        by_stream = streams.setdefault(entry.user_id, {"c": {}, "t": {}})
        by_stream[entry.stream].setdefault((entry.topic, entry.partition), []).append(
            (index, entry.topic, entry.partition, entry))
    return [_Call(user_id, clicks or [], texts or [])
            for user_id, by_stream in streams.items()
            for clicks, texts in zip_longest(by_stream["c"].values(), by_stream["t"].values())]


def _collect(n_entries: int, calls: Sequence[_Call], replies: list) -> ApplyResult:
    outcomes = [""] * n_entries
    ranks = [-1] * n_entries
    latest: dict[str, AppliedUser] = {}
    for call, reply in zip(calls, replies):
        click_outcomes, click_ranks, text_outcomes, clicks, texts, clicks_applied, long_term = reply
        for (index, *_), letter, rank in zip(call.clicks, click_outcomes.decode(), click_ranks):
            outcomes[index], ranks[index] = OUTCOMES[letter], int(rank)
        for (index, *_), letter in zip(call.texts, text_outcomes.decode()):
            outcomes[index] = OUTCOMES[letter]
        if clicks is not None:
            # A later call for the same user ran later in the pipeline: its history is newer.
            latest[call.user_id] = AppliedUser(
                call.user_id, decode_clicks(clicks), decode_texts(texts), int(clicks_applied),
                np.frombuffer(long_term, dtype="<f4").copy() if long_term else None)
    return ApplyResult(outcomes, ranks, list(latest.values()))
