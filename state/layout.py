"""The packed per-user layout in Redis (layout 3), shared by the Lua scripts and the worker.

Every user value is one binary string whose first byte is the layout version,
so a value is never misread: the scripts and the decoders here refuse any
other version (see `state.store.Store.check_layout` for whole databases).
Layout 2 differs only in its click records, which lack the context word: its
values are read as clicks without context, and the next apply rewrites a
user's clicks as layout 3 (`READABLE`), so an upgrade keeps every history.

Identifiers are kept as hashes (`id_hash`, BLAKE2b): an item as 64 bits, an
event id as 48 bits (for duplicates: the chance that a new event's id
collides with one of the 200 kept is 7e-13), a session id as 24 bits (only
compared with its neighbour's). The worker maps item hashes to model rows with
one sorted array (`HashIndex`), so no per-event Python is needed to read a
history back.

``<p>:{u:<id>}:clicks`` (string): byte 0 the layout, then one 32-byte record
per click, oldest first::

    offset  size  field
    0       8     item     u64  id_hash(item_id)
    8       6     ts       i48  event time, ms since the epoch
    14      6     event    u48  id_hash(event_id) & (2**48 - 1)
    20      3     session  u24  id_hash(session_id) & (2**24 - 1); 0 when none
    23      1     action   u8   action code (the worker stores encoders.vocab.action_index)
    24      8     context  u64  the click's context, packed by the worker (encoders.features.context_word; 0: none)

``<p>:{u:<id>}:texts`` (string): the running mean of every text embedding the
user sent (the text interest is the mean of all texts, as in training), not
the texts::

    0   1        layout
    1   2        dim of the mean (0 when texts were stored without embeddings)
    3   4        count: texts applied
    7   4        folded: embeddings folded into the mean
    11  6        newest text time, ms
    17  1        ring: how many event hashes follow the mean
    18  2*dim    mean, int16 = round(value * 32767) (embeddings are unit vectors)
    ..  6*ring   the last --max-texts text event hashes, oldest first (duplicates)

``<p>:{u:<id>}:profile`` (string): what the last refresh wrote::

    0   1        layout
    1   2        d: width of the interest vectors
    3   1        k: recommended items
    4   20       user version at which each of INTERESTS last changed, u32 each
    24  12*d     current, long_term, session vectors, float32
    ..  8*k      id_hash of each recommended item, best first (online HR/NDCG)
    ..  rest     JSON: items with scores, categories, next_action, drift, model
                 version, last event time, texts, updated_at
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import orjson

__all__ = ["LAYOUT", "READABLE", "CLICK_BYTES", "INTEREST_NAMES", "ClickHistory", "TextState", "StoredProfile",
           "HashIndex", "id_hash", "event_hash", "session_hash", "pack_click", "decode_clicks", "pack_embedding",
           "decode_texts", "pack_profile", "decode_profile", "EMPTY_CLICKS"]

LAYOUT = 3
READABLE = (2, 3)  # layouts read; values are written as LAYOUT
CLICK_BYTES = 32
_CLICK_BYTES_BY_LAYOUT = {2: 24, 3: 32}
TEXT_SCALE = 32767.0
INTEREST_NAMES = ("current", "long_term", "session", "categories", "text")  # order of the version slots
_CLICK = struct.Struct("<QIHIHHBBQ")  # item, ts low/high, event low/high, session low/high, action, context
_TEXT_HEADER = struct.Struct("<BHIIIHB")  # layout, dim, count, folded, ts low/high, ring
_PROFILE_HEADER = struct.Struct("<BHB5I")  # layout, d, k, five interest versions
_MASK48 = (1 << 48) - 1
_MASK24 = (1 << 24) - 1


def id_hash(text: str) -> int:
    """64-bit hash of an identifier, the same in every process and release.

    >>> id_hash("item-7") == id_hash("item-7") != id_hash("item-8")
    True
    """
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def event_hash(event_id: str) -> int:
    return id_hash(event_id) & _MASK48


def session_hash(session_id: str | None) -> int:
    """24 bits of a session id; 0 stands for "no session id", so a real one never hashes to it."""
    if not session_id:
        return 0
    return (id_hash(session_id) & _MASK24) or 1


def pack_click(item: int, ts: int, event: int, session: int, action: int, context: int = 0) -> bytes:
    """One 32-byte click record (see the module docstring)."""
    return _CLICK.pack(item, ts & 0xFFFFFFFF, ts >> 32, event & 0xFFFFFFFF, event >> 32,
                       session & 0xFFFF, session >> 16, action, context)


@dataclass(frozen=True)
class ClickHistory:
    """A user's stored clicks as arrays, oldest first."""

    items: np.ndarray  # uint64 item hashes
    ts: np.ndarray  # int64 ms
    events: np.ndarray  # uint64 event hashes (48 bits)
    sessions: np.ndarray  # uint32 session hashes (24 bits, 0: none)
    actions: np.ndarray  # uint8 action codes
    context: np.ndarray  # uint64 context words (0: none)

    def __len__(self) -> int:
        return len(self.ts)

    def tail(self, start: int) -> "ClickHistory":
        return ClickHistory(self.items[start:], self.ts[start:], self.events[start:], self.sessions[start:],
                            self.actions[start:], self.context[start:])


def _widen(columns: np.ndarray, width: int) -> np.ndarray:
    """Little-endian byte columns [n, w] -> unsigned ints of ``width`` bytes."""
    out = np.zeros((len(columns), width), dtype=np.uint8)
    out[:, : columns.shape[1]] = columns
    return out.view(f"<u{width}").ravel()


def decode_clicks(blob: bytes | None) -> ClickHistory:
    """The records of a ``clicks`` value (``None`` or empty: no clicks); ValueError for another layout."""
    if not blob:
        raw = np.zeros((0, CLICK_BYTES), dtype=np.uint8)
    else:
        _check_layout(blob, "clicks")
        size = _CLICK_BYTES_BY_LAYOUT[blob[0]]
        if (len(blob) - 1) % size:
            raise ValueError(f"clicks value of {len(blob)} bytes is not a whole number of records")
        raw = np.frombuffer(blob, dtype=np.uint8, offset=1).reshape(-1, size)
    no_context = raw.shape[1] < CLICK_BYTES  # a layout 2 value
    context = np.zeros(len(raw), np.uint64) if no_context else raw[:, 24:32].copy().view("<u8").ravel()
    return ClickHistory(items=raw[:, 0:8].copy().view("<u8").ravel(),
                        ts=_widen(raw[:, 8:14], 8).view(np.int64),
                        events=_widen(raw[:, 14:20], 8),
                        sessions=_widen(raw[:, 20:23], 4),
                        actions=raw[:, 23].copy(),
                        context=context)


EMPTY_CLICKS = decode_clicks(None)


@dataclass(frozen=True)
class TextState:
    """A user's text interest as stored: the mean embedding of the ``folded`` of ``count`` texts that had one."""

    count: int
    newest_ts: int
    mean: np.ndarray | None  # float32 [dim], None when no embedding was ever folded in
    folded: int = 0
    ids_kept: int = 0  # text event ids kept for duplicates (the last --max-texts)


def pack_embedding(vector: np.ndarray) -> bytes:
    """A unit embedding as the int16 the texts value keeps (step 3e-5)."""
    return np.round(np.clip(np.asarray(vector, np.float32), -1.0, 1.0) * TEXT_SCALE).astype("<i2").tobytes()


def decode_texts(blob: bytes | None) -> TextState | None:
    if not blob:
        return None
    _check_layout(blob, "texts")
    _, dim, count, folded, ts_low, ts_high, ring = _TEXT_HEADER.unpack_from(blob)
    mean = None
    if dim and folded:
        start = _TEXT_HEADER.size
        mean = np.frombuffer(blob, dtype="<i2", count=dim, offset=start).astype(np.float32) / TEXT_SCALE
    return TextState(count, ts_low | ts_high << 32, mean, folded, ring)


@dataclass(frozen=True)
class StoredProfile:
    """A ``profile`` value, decoded."""

    versions: dict[str, int]  # interest -> user version at which it last changed (absent: never)
    vectors: dict[str, np.ndarray]  # current, long_term, session (float32 [d])
    rec_items: tuple[int, ...]  # id_hash of each recommended item
    body: dict[str, Any]  # items, categories, next_action, drift, model_version, last_event_ts, ...


VECTOR_NAMES = ("current", "long_term", "session")


def pack_profile(vectors: dict[str, np.ndarray], rec_items: Sequence[int], body: dict[str, Any]) -> bytes:
    """A profile value with its version slots zeroed: the write script fills them in atomically."""
    d = len(vectors["current"])
    stacked = np.stack([np.asarray(vectors[name], dtype="<f4") for name in VECTOR_NAMES])
    return (_PROFILE_HEADER.pack(LAYOUT, d, len(rec_items), 0, 0, 0, 0, 0) + stacked.tobytes()
            + np.asarray(rec_items, dtype="<u8").tobytes() + orjson.dumps(body))


def decode_profile(blob: bytes | None) -> StoredProfile | None:
    if not blob:
        return None
    _check_layout(blob, "profile")
    _, d, k, *versions = _PROFILE_HEADER.unpack_from(blob)
    start = _PROFILE_HEADER.size
    stacked = np.frombuffer(blob, dtype="<f4", count=3 * d, offset=start).reshape(3, d)
    items_at = start + 12 * d
    rec_items = tuple(int(h) for h in np.frombuffer(blob, dtype="<u8", count=k, offset=items_at))
    body = orjson.loads(blob[items_at + 8 * k:])
    return StoredProfile({name: v for name, v in zip(INTEREST_NAMES, versions) if v},
                         {name: stacked[i].copy() for i, name in enumerate(VECTOR_NAMES)}, rec_items, body)


def long_term_of(blob: bytes | None) -> np.ndarray | None:
    """The stored long-term vector alone (what drift is measured from), without parsing the JSON."""
    if not blob or blob[0] not in READABLE:
        return None
    d = _PROFILE_HEADER.unpack_from(blob)[1]
    return np.frombuffer(blob, dtype="<f4", count=d, offset=_PROFILE_HEADER.size + 4 * d).copy()


def _check_layout(blob: bytes, what: str) -> None:
    if blob[0] not in READABLE:
        raise ValueError(f"{what} value has layout {blob[0]}, this release reads layouts "
                         f"{' and '.join(map(str, READABLE))}")


class HashIndex:
    """Rows of a list of ids looked up by their `id_hash`, a whole array at a time.

    >>> index = HashIndex(["a", "b", "c"])
    >>> index.rows(np.array([id_hash("c"), id_hash("zz"), id_hash("a")], dtype=np.uint64), missing=-1).tolist()
    [2, -1, 0]
    """

    def __init__(self, ids: Sequence[str]) -> None:
        hashes = np.fromiter((id_hash(i) for i in ids), dtype=np.uint64, count=len(ids))
        self._order = np.argsort(hashes, kind="stable")
        self._sorted = hashes[self._order]
        self.hashes = hashes  # by row
        if len(self._sorted) > 1 and (np.diff(self._sorted) == 0).any():
            raise ValueError("two ids share a 64-bit hash")  # about 1e-8 for a million ids

    def rows(self, hashes: np.ndarray, missing: int) -> np.ndarray:
        """Row of each hash (int64), ``missing`` where no id has it."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        if not len(self._sorted):
            return np.full(len(hashes), missing, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, hashes), len(self._sorted) - 1)
        found = self._sorted[at] == hashes
        return np.where(found, self._order[at], missing).astype(np.int64)
