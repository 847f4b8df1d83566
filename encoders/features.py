"""Turn events into the integer arrays the sequence encoder eats.

Training, evaluation and the worker's inference path all go through these
functions, so an event means the same thing offline and online.  Gaps are
computed on the sequence as given, *before* truncation to ``max_len``, so the
first kept event still knows how long ago its predecessor was.  No torch here:
this is plain numpy bookkeeping.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .vocab import ItemVocab, action_index

if TYPE_CHECKING:  # a type only: the worker's imports never reach the data package
    from .data.records import Event

__all__ = ["CONTEXT_FEATURES", "CONTEXT_SIZES", "CONTEXT_SWITCHES", "Batch", "SeqArrays", "cell_of", "context_columns", "context_word",
           "columns_of_words", "from_arrays", "from_events", "from_tuples", "haversine_km", "item_places", "pad_batch",
           "named_context_features", "split_input"]

NO_PREVIOUS = -1  # gap value of a user's first known event

# Context features of an event, one int64 column each; 0 is "unknown" in every one.
CONTEXT_FEATURES = ("hour_of_week", "device", "region", "cell", "distance")
CONTEXT_SIZES = {
    "hour_of_week": 1 + 168,  # local time (UTC + tz_offset_min), Monday 00:00-00:59 is 1
    "device": 64,  # hashed labels: a few dozen device kinds, collisions harmless
    "region": 256,
    "cell": 4096,  # hashed 0.01-degree grid cells (about 1 km)
    "distance": 1 + 16,  # log2-bucketed km from the previous event's place
}
CONTEXT_SWITCHES = ("auto", "on", "off")  # the other values of a "context features" option: all or none


def named_context_features(option: str) -> tuple[str, ...] | None:
    """The features a "context features" option names, comma-separated, in CONTEXT_FEATURES' order.

    None where it is one of CONTEXT_SWITCHES or names something else.

    >>> named_context_features("cell, hour_of_week"), named_context_features("on"), named_context_features("hour")
    (('hour_of_week', 'cell'), None, None)
    """
    names = {name.strip() for name in option.split(",")}
    if option in CONTEXT_SWITCHES or not names <= set(CONTEXT_FEATURES):
        return None
    return tuple(name for name in CONTEXT_FEATURES if name in names)


CELL_DEGREES = 0.01
_EARTH_KM = 6371.0

# A click's context packed into one 64-bit word: what the worker stores with each click (`state.layout` keeps
# it as an opaque u64), and what training reads too (`context_columns` goes through it), so a feature means the
# same offline and online.  0 is "no context".  Little-endian bit fields:
#   0-7    local hour of the week (0 unknown, 1-168)
#   8-13   device bucket (0 unknown, 1-63)
#   14-21  region bucket (0 unknown, 1-255)
#   22-41  latitude code: 0 no place, else 1 + floor((lat + 90) * 5000)   (0.0002 degree steps, ~22 m)
#   42-63  longitude code: floor((lon + 180) * 10000)                      (0.0001 degree steps)
# Cells and distances are computed from the codes, so a cell's edges (multiples of 0.01 degree) fall on code
# boundaries and both paths agree on every cell.
_LAT_STEPS, _LON_STEPS = 5000, 10000  # codes per degree
_LAT_PER_CELL, _LON_PER_CELL = round(CELL_DEGREES * _LAT_STEPS), round(CELL_DEGREES * _LON_STEPS)
_FIELDS = {"hour_of_week": (0, 8), "device": (8, 6), "region": (14, 8), "lat": (22, 20), "lon": (42, 22)}


@dataclass(frozen=True)
class SeqArrays:
    """One user's events as int64 arrays (item index, action index, gap in ms).

    ``context`` [n, len(CONTEXT_FEATURES)] holds the events' context features
    (`context_columns`), or is None where the events have none.
    """

    items: np.ndarray
    actions: np.ndarray
    gaps: np.ndarray
    context: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.items)

    def window(self, start: int | None, stop: int | None) -> SeqArrays:
        """Slice every array alike (gaps and distances stay those of the full sequence)."""
        context = None if self.context is None else self.context[start:stop]
        return SeqArrays(self.items[start:stop], self.actions[start:stop], self.gaps[start:stop], context)


@dataclass(frozen=True)
class Batch:
    """Right-padded [B, L] arrays plus the true lengths [B]."""

    items: np.ndarray
    actions: np.ndarray
    gaps: np.ndarray
    lengths: np.ndarray
    context: np.ndarray | None = None  # [B, L, len(CONTEXT_FEATURES)] when any sequence has context


def _gaps(ts: np.ndarray) -> np.ndarray:
    gaps = np.empty_like(ts)
    if len(ts):
        gaps[0] = NO_PREVIOUS
        # Out-of-order events (negative gaps) count as simultaneous.
        gaps[1:] = np.maximum(np.diff(ts), 0)
    return gaps


def _arrays(items: list[int], actions: list[int], ts: list[int]) -> SeqArrays:
    ts_arr = np.asarray(ts, dtype=np.int64)
    return SeqArrays(np.asarray(items, dtype=np.int64), np.asarray(actions, dtype=np.int64), _gaps(ts_arr))


def from_arrays(items: np.ndarray, actions: np.ndarray, ts: np.ndarray, context: np.ndarray | None = None) -> SeqArrays:
    """Arrays of item rows, action indices, times (ms) and context words, oldest first (the worker's stored history).

    ``context`` holds the events' context words (`context_word`; None: the
    caller wants no context features).
    """
    return SeqArrays(np.asarray(items, dtype=np.int64), np.asarray(actions, dtype=np.int64),
                     _gaps(np.asarray(ts, dtype=np.int64)), None if context is None else columns_of_words(context))


def from_events(events: Sequence[Event], vocab: ItemVocab) -> SeqArrays:
    """Arrays of a chronological list of click events (with their context features when any has a context)."""
    items = [vocab.index(e.item_id) for e in events]
    seq = _arrays(items, [action_index(e.action) for e in events], [e.ts for e in events])
    if not any(e.context is not None for e in events):
        return seq
    return SeqArrays(seq.items, seq.actions, seq.gaps, context_columns([e.ts for e in events],
                                                                        [e.context for e in events]))


def _label_bucket(label: str | None, size: int) -> int:
    # crc32: stable across processes and releases (Python's hash() is salted per process).
    return 0 if label is None else 1 + zlib.crc32(label.encode()) % (size - 1)


def _place_codes(lat: float | None, lon: float | None) -> tuple[int, int]:
    """The latitude and longitude codes of a place (see the word's layout above); (0, 0) without one."""
    if lat is None or lon is None:
        return 0, 0
    lat_code = 1 + min(180 * _LAT_STEPS - 1, max(0, math.floor((lat + 90.0) * _LAT_STEPS)))
    return lat_code, min(360 * _LON_STEPS - 1, max(0, math.floor((lon + 180.0) * _LON_STEPS)))


def _cells_of_codes(lat_code: np.ndarray, lon_code: np.ndarray) -> np.ndarray:
    """Hashed grid cells of coded places (0 where lat_code is 0), vectorised."""
    lat_cell = (lat_code.astype(np.int64) - 1) // _LAT_PER_CELL
    lon_cell = lon_code.astype(np.int64) // _LON_PER_CELL
    # A multiplicative hash of the cell's two indices: numpy, not a crc of a string per event (the worker
    # computes the cells of whole histories on every refresh).  Collisions between far cells are harmless.
    mixed = (lat_cell * 0x9E3779B1 + lon_cell * 0x85EBCA77) % (2**31 - 1)
    return np.where(lat_code > 0, 1 + mixed % (CONTEXT_SIZES["cell"] - 1), 0)


def cell_of(lat: float | None, lon: float | None) -> int:
    """The hashed CELL_DEGREES grid cell of a place; 0 when it has no coordinates."""
    lat_code, lon_code = _place_codes(lat, lon)
    return int(_cells_of_codes(np.array([lat_code]), np.array([lon_code]))[0])


def haversine_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distances in km between places in degrees (arrays broadcast; NaN where one is unknown)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    return 2 * _EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def item_places(events: Sequence[Event], vocab: ItemVocab) -> np.ndarray:
    """[n_items, 2] latitude and longitude of each item's place: its first click with coordinates (NaN: none)."""
    places = np.full((len(vocab), 2), np.nan)
    for event in events:
        ctx = event.context
        if ctx is not None and ctx.lat is not None:
            row = vocab.index(event.item_id)
            if np.isnan(places[row, 0]):
                places[row] = ctx.lat, ctx.lon
    return places


class _HasContext(Protocol):
    """A context as the data loaders (`encoders.data.records.EventContext`) and the worker (`streams.events.Context`)
    give it."""

    device: str | None
    region: str | None
    lat: float | None
    lon: float | None
    tz_offset_min: int | None


def context_word(ts: int, ctx: _HasContext | None) -> int:
    """One event's context as its 64-bit word (see the layout above); 0 for no context."""
    if ctx is None:
        return 0
    hour = 0
    if ctx.tz_offset_min is not None:
        local_hour = (int(ts) // 1000 + ctx.tz_offset_min * 60) // 3600
        hour = 1 + (local_hour + 72) % 168  # the epoch was a Thursday: +72 h puts Monday first
    lat_code, lon_code = _place_codes(ctx.lat, ctx.lon)
    values = {"hour_of_week": hour, "device": _label_bucket(ctx.device, CONTEXT_SIZES["device"]),
              "region": _label_bucket(ctx.region, CONTEXT_SIZES["region"]), "lat": lat_code, "lon": lon_code}
    return sum(values[name] << shift for name, (shift, _) in _FIELDS.items())


def _field(words: np.ndarray, name: str) -> np.ndarray:
    shift, bits = _FIELDS[name]
    return ((words >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)


def columns_of_words(words: np.ndarray) -> np.ndarray:
    """[n, len(CONTEXT_FEATURES)] int64 context features of a chronological sequence of context words.

    The distance needs this event's place and the previous event's (0 for
    the first, and where either has none).  Vectorised: the worker calls
    this on whole stored histories.
    """
    words = np.asarray(words, dtype=np.uint64)
    out = np.zeros((len(words), len(CONTEXT_FEATURES)), dtype=np.int64)
    for column, name in enumerate(("hour_of_week", "device", "region")):
        out[:, column] = _field(words, name)
    lat_code, lon_code = _field(words, "lat"), _field(words, "lon")
    out[:, 3] = _cells_of_codes(lat_code, lon_code)
    has_place = lat_code > 0
    lat = np.where(has_place, (lat_code - 0.5) / _LAT_STEPS - 90.0, np.nan)  # the centre of the code's step
    lon = np.where(has_place, (lon_code + 0.5) / _LON_STEPS - 180.0, np.nan)
    km = haversine_km(lat[:-1], lon[:-1], lat[1:], lon[1:])
    known = ~np.isnan(km)
    # In 100 m steps, doubling: 1 + floor(log2(1 + 10 km)), at most 16.
    out[1:, 4][known] = 1 + np.minimum(15, np.floor(np.log2(1.0 + 10.0 * km[known]))).astype(np.int64)
    return out


def context_columns(ts: Sequence[int], contexts: Sequence[_HasContext | None]) -> np.ndarray:
    """[n, len(CONTEXT_FEATURES)] int64 context features of a chronological sequence; 0 where unknown.

    Through the same words the worker stores (`context_word`), so training
    sees exactly what the worker will.
    """
    words = np.fromiter((context_word(t, c) for t, c in zip(ts, contexts)), dtype=np.uint64, count=len(ts))
    return columns_of_words(words)


def from_tuples(events: Sequence[tuple[str, str, int]], vocab: ItemVocab) -> SeqArrays:
    """Arrays of ``(item_id, action, ts_ms)`` tuples, oldest first (the worker's format)."""
    items = [vocab.index(e[0]) for e in events]
    return _arrays(items, [action_index(e[1]) for e in events], [e[2] for e in events])


def pad_batch(seqs: Sequence[SeqArrays], length: int) -> Batch:
    """Right-pad (sequence at 0..n-1, zeros after) to ``length``; each seq must fit."""
    n = len(seqs)
    items = np.zeros((n, length), dtype=np.int64)
    actions = np.zeros((n, length), dtype=np.int64)
    gaps = np.zeros((n, length), dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    has_context = any(seq.context is not None for seq in seqs)
    context = np.zeros((n, length, len(CONTEXT_FEATURES)), dtype=np.int64) if has_context else None
    for row, seq in enumerate(seqs):
        m = len(seq)
        items[row, :m], actions[row, :m], gaps[row, :m] = seq.items, seq.actions, seq.gaps
        if context is not None and seq.context is not None:
            context[row, :m] = seq.context
        lengths[row] = m
    return Batch(items, actions, gaps, lengths, context)


def split_input(seq: SeqArrays, split: str) -> tuple[SeqArrays, int] | None:
    """Leave-one-out split: the model input and the target item index.

    "test": all but the last event -> last item; "valid": all but the last
    two -> second-to-last item; "train": returns the training part with
    target -1.  Users with fewer than 3 events are training-only (None for
    "valid"/"test").
    """
    n = len(seq)
    if split == "train":
        return (seq.window(None, -2) if n >= 3 else seq), -1
    if n < 3:
        return None
    if split == "test":
        return seq.window(None, -1), int(seq.items[-1])
    if split == "valid":
        return seq.window(None, -2), int(seq.items[-2])
    raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
