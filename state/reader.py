"""Reads of a user's last written profile, for the read API (`streams.read_api`).

`Reader` is synchronous, for code off the worker's event loop: the worker's
HTTP server threads cannot await `Store`. It holds one redis-py client, whose
connection pool makes it safe to share between threads. `AsyncReader` is the
same read on redis.asyncio, for ``interest-updater read-api``'s event loop
(`streams.read_server`). Both decode with the `state.layout` functions the
worker writes with.

The profile and the version counter live in two keys (``profile``, ``meta``)
that the write script updates together. Two plain GETs could fall on either
side of a refresh and pair a list with the next version; one read-only script
reads both at once (both keys share the user's hash tag, so this also works on
Redis Cluster).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from state.errors import LayoutMismatch
from state.keys import KeySpace
from state.layout import READABLE, StoredProfile, decode_profile

__all__ = ["Reader", "AsyncReader", "UserProfile"]

# KEYS: profile, meta. A missing key reads as nil (Lua false), which keeps its place in the reply.
READ_PROFILE = r"""
return {redis.call('GET', KEYS[1]), redis.call('HGET', KEYS[2], 'version')}
"""
_CLIENT_OPTIONS = dict(socket_timeout=5, socket_connect_timeout=5)


@dataclass(frozen=True, slots=True)
class UserProfile:
    """A user's profile as the last refresh wrote it, with the user version that refresh got."""

    user_id: str
    version: int
    profile: StoredProfile


class Reader:
    """Read-only access to users' profiles through a synchronous client (thread-safe)."""

    def __init__(self, client: redis.Redis | RedisCluster, keys: KeySpace = KeySpace()) -> None:
        self.client = client
        self.keys = keys
        self._read = client.register_script(READ_PROFILE)  # EVALSHA, loaded again if Redis lost it

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, keys: KeySpace = KeySpace()) -> "Reader":
        """A reader on ``url``; ``cluster`` for Redis Cluster (any node's URL)."""
        client_class = RedisCluster if cluster else redis.Redis
        return cls(client_class.from_url(url, **_CLIENT_OPTIONS), keys)

    def profile(self, user_id: str) -> UserProfile | None:
        """The user's last written profile and version; None before their first refresh.

        `InvalidUserId` for an id that cannot be a key; `LayoutMismatch` for a
        profile another release wrote.
        """
        keys = self.keys.user(user_id)
        return _user_profile(user_id, *self._read(keys=[keys.profile, keys.meta]))

    def close(self) -> None:
        self.client.close()


class AsyncReader:
    """`Reader`'s read on redis.asyncio: for a server on an event loop (one task per request)."""

    def __init__(self, client: redis.asyncio.Redis | AsyncRedisCluster, keys: KeySpace = KeySpace()) -> None:
        self.client = client
        self.keys = keys
        self._read = client.register_script(READ_PROFILE)

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, keys: KeySpace = KeySpace()) -> "AsyncReader":
        """A reader on ``url``; ``cluster`` for Redis Cluster (any node's URL)."""
        client_class = AsyncRedisCluster if cluster else redis.asyncio.Redis
        return cls(client_class.from_url(url, **_CLIENT_OPTIONS), keys)

    async def profile(self, user_id: str) -> UserProfile | None:
        """As `Reader.profile`."""
        keys = self.keys.user(user_id)
        return _user_profile(user_id, *await self._read(keys=[keys.profile, keys.meta]))

    async def close(self) -> None:
        await self.client.aclose()


def _user_profile(user_id: str, blob: bytes | None, version: bytes | None) -> UserProfile | None:
    if not blob or version is None:
        return None  # never refreshed (or its meta was evicted: no version to give)
    if blob[0] not in READABLE:
        raise LayoutMismatch(f"the profile value of user {user_id!r}", str(blob[0]))
    return UserProfile(user_id, int(version), decode_profile(blob))
