"""The read API: a user's latest recommendations and interests as JSON, on the worker's HTTP port
(or in a process of its own: ``interest-updater read-api``).

``GET /v1/users/{user_id}`` answers what the last refresh of that user wrote
to Redis (`state.reader.Reader`), so a service that does not consume Kafka
need not know the key layout. Field names are those of the recommendation
event (`streams.events.RecommendationEvent`) where the two overlap; the shape
is ``streams/schemas/user.schema.json``. Vectors are large (three times the
model width) and most pages need only the items: they come with
``?vectors=true`` only.

Answers: 200 with the user; 400 for an id that event validation would refuse
or a bad query; 401 when ``--api-token`` is set and the request does not
carry it as ``Authorization: Bearer TOKEN``; 404 for a user never refreshed
or another path; 503 when Redis cannot be reached; 500 for anything else.
Errors are ``{"error": "..."}``.

Two ways to serve it, one set of answers: on the worker's port the API is
called (``api(path, authorization)``) from the HTTP server's threads, never on
the worker's event loop, and reads through a synchronous `Reader` shared by
those threads; ``interest-updater read-api`` awaits ``api.answer(...)`` on an
event loop of its own (`streams.read_server`) through an `AsyncReader`.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram
from redis.exceptions import RedisClusterException, RedisError

from state.errors import LayoutMismatch
from state.keys import KeySpace
from state.layout import INTEREST_NAMES
from state.reader import AsyncReader, Reader, UserProfile
from streams.events import ID_PATTERN
from streams.refresh import VECTOR_DECIMALS

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = ["ReadApi", "Reply", "user_answer", "USERS_PATH"]

log = logging.getLogger("interest_updater.read_api")

USERS_PATH = "/v1/users/"
_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_BOOLEANS = {"true": True, "false": False}
_READ_ERRORS = (RedisError, RedisClusterException, LayoutMismatch)


class Reply(NamedTuple):
    """What the HTTP server sends: a status, a JSON body and any extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class _Query(NamedTuple):
    """A request that passed every check: whose profile to read, and whether with vectors."""

    user_id: str
    vectors: bool


def _error(status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, orjson.dumps({"error": reason}), headers)


def _read_failed(exc: Exception) -> Reply:
    if isinstance(exc, LayoutMismatch):
        return _error(500, str(exc))
    return _error(503, f"Redis cannot be read now ({type(exc).__name__}); try again")


class ReadApi:
    """Answers ``GET /v1/users/{user_id}`` from the request path and its Authorization header.

    With a `Reader`, call it (``api(path, authorization)``); with an
    `AsyncReader`, await ``api.answer(path, authorization)``.
    """

    def __init__(self, reader: Reader | AsyncReader, registry: CollectorRegistry, token: str | None = None) -> None:
        self.reader = reader
        self._token = token.encode() if token else None
        self.requests = Counter("iu_api_requests", "Read API requests, by HTTP status.", ["status"],
                                registry=registry)
        self.seconds = Histogram("iu_api_seconds", "Time to answer one read API request, Redis read included.",
                                 buckets=_SECONDS_BUCKETS, registry=registry)

    @classmethod
    def from_settings(cls, settings: "Settings", registry: CollectorRegistry, *, asynchronous: bool = False
                      ) -> "ReadApi":
        """The API on the settings' Redis; ``asynchronous`` for `answer` on an event loop."""
        reader_class = AsyncReader if asynchronous else Reader
        reader = reader_class.from_url(settings.redis_url, cluster=settings.redis_cluster,
                                       keys=KeySpace(settings.key_prefix))
        return cls(reader, registry, token=settings.api_token)

    def __call__(self, path: str, authorization: str | None) -> Reply:
        started = time.perf_counter()
        try:
            query = self._query(path, authorization)
            reply = query if isinstance(query, Reply) else self._found(query, self._read_now(query.user_id))
        except Exception:  # noqa: BLE001  (a server thread must answer, and the failure be counted)
            reply = self._failed(path)
        return self._counted(reply, started)

    async def answer(self, path: str, authorization: str | None) -> Reply:
        """`__call__` on an event loop, reading through an `AsyncReader`."""
        started = time.perf_counter()
        try:
            query = self._query(path, authorization)
            reply = query if isinstance(query, Reply) else self._found(query, await self._read_later(query.user_id))
        except Exception:  # noqa: BLE001  (the server must answer, and the failure be counted)
            reply = self._failed(path)
        return self._counted(reply, started)

    def _read_now(self, user_id: str) -> UserProfile | Exception | None:
        try:
            return self.reader.profile(user_id)
        except _READ_ERRORS as exc:
            return exc

    async def _read_later(self, user_id: str) -> UserProfile | Exception | None:
        try:
            return await self.reader.profile(user_id)
        except _READ_ERRORS as exc:
            return exc

    def _counted(self, reply: Reply, started: float) -> Reply:
        self.requests.labels(str(reply.status)).inc()
        self.seconds.observe(time.perf_counter() - started)
        return reply

    @staticmethod
    def _failed(path: str) -> Reply:
        log.exception("read API: %s failed", path[:200])
        return _error(500, "internal error (logged by the read API)")

    def _query(self, path: str, authorization: str | None) -> _Query | Reply:
        """The user to read, or the error reply for a request that cannot be answered."""
        refused = self._refusal(authorization)  # before anything else: strangers learn nothing, not even 404s
        if refused:
            return refused
        url = urlsplit(path)
        if not url.path.startswith(USERS_PATH):
            return _error(404, f"no endpoint {url.path[:100]!r}: the read API is GET {USERS_PATH}USER_ID")
        user_id = unquote(url.path[len(USERS_PATH):])  # an id may hold '/', sent as is or as %2F
        if not ID_PATTERN.fullmatch(user_id):
            return _error(400, f"user id must be 1-128 of [A-Za-z0-9_.:@+=/-] (as in events), got {user_id[:40]!r}")
        vectors = _BOOLEANS.get(parse_qs(url.query).get("vectors", ["false"])[-1])
        if vectors is None:
            return _error(400, "vectors must be true or false")
        return _Query(user_id, vectors)

    def _refusal(self, authorization: str | None) -> Reply | None:
        if self._token is None:
            return None
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _error(401, "this API needs Authorization: Bearer TOKEN (the worker's --api-token)",
                          (("WWW-Authenticate", 'Bearer realm="interest-updater"'),))
        # compare_digest: the time taken does not tell how much of a guess was right.
        if not hmac.compare_digest(given.strip().encode(), self._token):
            return _error(401, "wrong bearer token",
                          (("WWW-Authenticate", 'Bearer realm="interest-updater", error="invalid_token"'),))
        return None

    @staticmethod
    def _found(query: _Query, stored: UserProfile | Exception | None) -> Reply:
        if isinstance(stored, Exception):
            return _read_failed(stored)
        if stored is None:
            return _error(404, f"no recommendations for user {query.user_id!r}: the worker has not refreshed this "
                               "user (no event applied yet, or they are under another --key-prefix)")
        return Reply(200, orjson.dumps(user_answer(stored, vectors=query.vectors)))


def user_answer(user: UserProfile, *, vectors: bool = False) -> dict[str, Any]:
    """The JSON answer for a stored profile (``streams/schemas/user.schema.json``)."""
    profile, body = user.profile, user.profile.body
    interests: dict[str, dict[str, Any]] = {name: {"version": profile.versions.get(name)} for name in INTEREST_NAMES}
    interests["long_term"]["drift"] = body["drift"]
    interests["categories"]["top"] = body["categories"]
    interests["text"]["texts"] = body["texts"]
    if vectors:
        for name, vector in profile.vectors.items():
            # Rounded as the recommendation event rounds them, so both carry the same numbers.
            interests[name]["vector"] = np.round(vector.astype(np.float64), VECTOR_DECIMALS).tolist()
    return {
        "user_id": user.user_id,
        "version": user.version,
        "items": [{"item_id": item, "score": score} for item, score in body["items"]],
        # The write script gives each interest a refresh changed that refresh's version.
        "interests": [name for name in INTEREST_NAMES if profile.versions.get(name) == user.version],
        "interest_profile": interests,
        "next_action": body["next_action"],
        "drift": body["drift"],
        "model_version": body["model_version"],
        "last_event_ts": body["last_event_ts"],
        "updated_at": body["updated_at"],
    }
