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

The handler runs in the HTTP server's threads, never on the worker's event
loop: it reads through a synchronous client shared by those threads.
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
from state.reader import Reader, UserProfile
from streams.events import ID_PATTERN
from streams.refresh import VECTOR_DECIMALS

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = ["ReadApi", "Reply", "user_answer", "USERS_PATH"]

log = logging.getLogger("interest_updater.read_api")

USERS_PATH = "/v1/users/"
_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_BOOLEANS = {"true": True, "false": False}


class Reply(NamedTuple):
    """What `serve_http` sends: a status, a JSON body and any extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _error(status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, orjson.dumps({"error": reason}), headers)


class ReadApi:
    """Answers ``GET /v1/users/{user_id}``; call it with the request path and its Authorization header."""

    def __init__(self, reader: Reader, registry: CollectorRegistry, token: str | None = None) -> None:
        self.reader = reader
        self._token = token.encode() if token else None
        self.requests = Counter("iu_api_requests", "Read API requests, by HTTP status.", ["status"],
                                registry=registry)
        self.seconds = Histogram("iu_api_seconds", "Time to answer one read API request, Redis read included.",
                                 buckets=_SECONDS_BUCKETS, registry=registry)

    @classmethod
    def from_settings(cls, settings: "Settings", registry: CollectorRegistry) -> "ReadApi":
        reader = Reader.from_url(settings.redis_url, cluster=settings.redis_cluster,
                                 keys=KeySpace(settings.key_prefix))
        return cls(reader, registry, token=settings.api_token)

    def __call__(self, path: str, authorization: str | None) -> Reply:
        started = time.perf_counter()
        try:
            reply = self._answer(path, authorization)
        except Exception:  # noqa: BLE001  (a server thread must answer, and the failure be counted)
            log.exception("read API: %s failed", path[:200])
            reply = _error(500, "internal error (logged by the worker)")
        self.requests.labels(str(reply.status)).inc()
        self.seconds.observe(time.perf_counter() - started)
        return reply

    def _answer(self, path: str, authorization: str | None) -> Reply:
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
        return self._user(user_id, vectors)

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

    def _user(self, user_id: str, vectors: bool) -> Reply:
        try:
            stored = self.reader.profile(user_id)
        except (RedisError, RedisClusterException) as exc:
            return _error(503, f"Redis cannot be read now ({type(exc).__name__}); try again")
        except LayoutMismatch as exc:
            return _error(500, str(exc))
        if stored is None:
            return _error(404, f"no recommendations for user {user_id!r}: the worker has not refreshed this "
                               "user (no event applied yet, or they are under another --key-prefix)")
        return Reply(200, orjson.dumps(user_answer(stored, vectors=vectors)))


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
