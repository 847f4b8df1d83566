"""Every Redis key this service uses, built by one class.

All of a user's keys share the hash tag ``{u:<user_id>}`` so that they live on
one Redis Cluster slot and one Lua script can update them atomically. User ids
are validated before they get here (no braces, spaces or control characters),
so an id can never end the hash tag early or reach another user's keys; this
class refuses such an id too, for callers that use the store directly. Ids
reach Lua scripts only as KEYS and ARGV, never as code.

Per user (the packed values are described in `state.layout`):
- ``<p>:{u:<id>}:clicks``      string: the bounded click history, 32 bytes a click
- ``<p>:{u:<id>}:texts``       string: the running mean of text embeddings, recent text ids
- ``<p>:{u:<id>}:meta``        hash: per-partition fences, applied counters, version
- ``<p>:{u:<id>}:profile``     string: interest vectors and their versions, the latest
                               recommendations (item hashes for the apply script, JSON)
Per topic:
- ``<p>:offsets:<topic>``      hash, partition -> last applied offset (resume point)
- ``<p>:pending:<topic>:<n>``  hash, user -> offset of the batch that marked the user,
                               set before their events are applied and cleared once
                               their recommendations are published
Per database:
- ``<p>:layout``               the layout version of everything under the prefix (2)
- ``<p>:{catalogue}:items``    hash, item id -> its newest upsert (`state.store.ItemState`)
- ``<p>:{catalogue}:changes``  stream of applied upserts, oldest first (trimmed to about
                               100,000): workers follow it to keep their copy current
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from state.errors import InvalidUserId

__all__ = ["KeySpace", "UserKeys"]


@dataclass(frozen=True, slots=True)
class UserKeys:
    clicks: str
    texts: str
    meta: str
    profile: str

    def script_keys(self) -> list[str]:
        """The keys in the order the apply script expects them."""
        return [self.clicks, self.texts, self.meta, self.profile]


# A brace would end or open a hash tag; whitespace and control characters have no place in a key.
_UNSAFE_IN_KEY = re.compile(r"[{}\s\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class KeySpace:
    prefix: str = "iu"

    def user(self, user_id: str) -> UserKeys:
        """The keys of one user; `InvalidUserId` for an id that could break out of its hash tag."""
        if not user_id or _UNSAFE_IN_KEY.search(user_id):
            raise InvalidUserId(user_id)
        base = f"{self.prefix}:{{u:{user_id}}}"
        return UserKeys(clicks=f"{base}:clicks", texts=f"{base}:texts", meta=f"{base}:meta",
                        profile=f"{base}:profile")

    def layout(self) -> str:
        """The layout version of every key under this prefix (`state.layout.LAYOUT`)."""
        return f"{self.prefix}:layout"

    def catalogue(self) -> tuple[str, str]:
        """The live catalogue's hash and change stream (one Cluster slot: one script updates both)."""
        base = f"{self.prefix}:{{catalogue}}"
        return f"{base}:items", f"{base}:changes"

    def offsets(self, topic: str) -> str:
        return f"{self.prefix}:offsets:{topic}"

    def pending(self, topic: str, partition: int) -> str:
        """Hash of the users of one partition whose latest events may not have been published yet."""
        return f"{self.prefix}:pending:{topic}:{partition}"

    @staticmethod
    def fence_field(topic: str, partition: int) -> str:
        """Field of a user's meta hash holding the last applied offset of that partition."""
        return f"fence:{topic}:{partition}"
