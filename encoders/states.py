"""Encoding users' windows for the worker, reusing what the previous refresh computed.

A refresh needs, per user, the encoder's hidden state at the last event (the
current interest) and the decay-weighted mean of its hidden states over the
window (the long-term interest).  Encoding a 200-event window costs about
3 ms of one CPU core; a user who sends one more event changes one position.
So each user's *window state* is kept in memory: the attention keys and
values of every window position (`SequenceEncoder.extend` appends to them),
the window's event keys (to check that the stored history still starts the
same way), the last hidden state and the running sums of the long-term mean.
A refresh that only appends events encodes just those; anything else (a cold
or evicted user, an event inserted out of order, another model) encodes the
window from scratch.  Both give the same vectors (tested with ``allclose``).

Which window.  ``window_start`` chooses it from the number of events the
user ever had, so it does not depend on what the cache holds: the window
starts at the last multiple of ``hop`` events that keeps it within
``max_len``.  It then grows by one position per event, and jumps forward by
``hop`` events once it would exceed ``max_len`` (the only time a cached user
is encoded from scratch), so it always holds between ``max_len - hop + 1``
and ``max_len`` events.  ``hop=1`` is the exact "last max_len events" of
training and `encoders.evaluation`, re-encoding the whole window on every
event once a history is longer than it.

The cache is bounded in bytes (least recently refreshed users go first):
2 layers x keys and values x d=64 floats is 1 KiB per window position, so
a full 200-event window takes 200 KiB.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .features import Batch, SeqArrays, pad_batch
from .nn.model import SequenceEncoder

__all__ = ["Window", "WindowEncoder", "window_start"]

_MAX_EXPONENT = 500.0  # rebase the long-term sums before 2 ** exponent leaves float64


def window_start(total: int, kept: int, max_len: int, hop: int) -> int:
    """Index into the ``kept`` newest events (of ``total`` ever) at which the encoder's window starts.

    When older events were dropped, the oldest kept one only gives its
    successor's time gap (its own predecessor is gone), so no window starts
    there: the window is the same whatever was cached.

    >>> [window_start(n, n, max_len=10, hop=5) for n in (3, 10, 11, 15, 16)]
    [0, 0, 5, 5, 10]
    >>> window_start(300, 250, max_len=200, hop=1)   # the exact "last max_len events": the 100th of 300 ever
    50
    >>> window_start(300, 200, max_len=200, hop=1)   # 199: the first kept event has lost its gap
    1
    """
    first_kept = total - kept  # absolute index of the oldest kept event
    start = max(0, -(-(total - max_len) // hop) * hop)  # ceil to a multiple of hop
    return max(start, first_kept + (1 if first_kept > 0 else 0)) - first_kept


@dataclass(frozen=True)
class Window:
    """One sequence to encode: the user's events and where the window starts in them.

    ``seq`` holds every kept event (gaps computed on all of them, so the
    window's first event still knows its predecessor); ``ts`` their times;
    ``keys`` a unique identity per event and ``cache_key`` the user's, which
    let a cached window be extended (None: encode from scratch, cache nothing).
    """

    seq: SeqArrays
    ts: np.ndarray
    start: int
    cache_key: object = None
    keys: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.seq) - self.start


class _State:
    """What a user's window left behind: keys/values per position, last hidden state, long-term sums.

    ``kv`` is [n_layers, 2, H, capacity, d/H]: the first ``n`` positions hold
    the window, the rest is room to grow.
    """

    __slots__ = ("keys", "kv", "n", "last", "long_sum", "long_norm", "ref_ts", "counted")

    def __init__(self, keys: np.ndarray, kv: torch.Tensor, last: np.ndarray, ts: np.ndarray,
                 hidden: np.ndarray, half_life_ms: float) -> None:
        self.keys, self.kv, self.n, self.last = keys, kv, len(keys), last
        self.ref_ts = int(ts[0])
        w = _weights(ts, self.ref_ts, half_life_ms)
        self.long_sum, self.long_norm = w @ hidden.astype(np.float64), float(w.sum())
        self.counted = 0  # bytes the cache has counted for this state

    @property
    def nbytes(self) -> int:
        return self.kv.element_size() * self.kv.nelement() + self.keys.nbytes

    def append(self, keys: np.ndarray, kv: torch.Tensor, hidden: np.ndarray, ts: np.ndarray,
               half_life_ms: float, max_len: int) -> None:
        k = len(keys)
        if self.n + k > self.kv.shape[-2]:  # grow the buffer by doubling, never past the window's bound
            grown = self.kv.new_empty((*self.kv.shape[:-2], _capacity(self.n + k, max_len), self.kv.shape[-1]))
            grown[..., : self.n, :] = self.kv[..., : self.n, :]
            self.kv = grown
        self.kv[..., self.n: self.n + k, :] = kv
        self.keys = np.concatenate([self.keys, keys])
        self.n += k
        self.last = hidden[-1]
        if half_life_ms > 0 and (ts.max() - self.ref_ts) / half_life_ms > _MAX_EXPONENT:
            shift = np.exp2(-(ts.max() - self.ref_ts) / half_life_ms)
            self.long_sum, self.long_norm, self.ref_ts = self.long_sum * shift, self.long_norm * shift, int(ts.max())
        w = _weights(ts, self.ref_ts, half_life_ms)
        self.long_sum = self.long_sum + w @ hidden.astype(np.float64)
        self.long_norm += float(w.sum())

    @property
    def long_term(self) -> np.ndarray:
        return (self.long_sum / self.long_norm).astype(np.float32)


def _capacity(n: int, max_len: int) -> int:
    """Positions to allocate for a window of n: room to grow without a copy at every event."""
    return min(max_len, max(2 * n, n + 8))


def _weights(ts: np.ndarray, ref_ts: int, half_life_ms: float) -> np.ndarray:
    """``2 ** ((ts - ref) / half_life)``: normalised over a window these are `interests.decay_weights`."""
    if half_life_ms <= 0:
        return np.ones(len(ts), dtype=np.float64)
    return np.exp2((np.asarray(ts, dtype=np.float64) - ref_ts) / half_life_ms)


class WindowEncoder:
    """Last hidden state and long-term mean of many windows, cached windows extended (see the module doc).

    >>> enc = WindowEncoder(model, buckets=(16, 64, 200), half_life_ms=30 * 86_400_000)  # doctest: +SKIP
    >>> last, long_term = enc.encode([Window(seq, ts, start=0, cache_key="u1", keys=ids)])  # doctest: +SKIP
    """

    def __init__(self, model: SequenceEncoder, *, buckets: Sequence[int], half_life_ms: float,
                 cache_bytes: int = 0) -> None:
        self.model = model
        self.buckets = tuple(buckets)
        self.half_life_ms = half_life_ms
        self.cache_bytes = cache_bytes
        self.device = next(model.parameters()).device
        self._cache: OrderedDict[object, _State] = OrderedDict()
        self._workspace: torch.Tensor | None = None  # reused by `_past`
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self.stats = {"reused": 0, "extended": 0, "encoded": 0, "evicted": 0}  # windows, since start

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    def encode(self, windows: Sequence[Window]) -> tuple[np.ndarray, np.ndarray]:
        """[B, d] hidden state at each window's last event and [B, d] long-term mean (zeros for empty ones)."""
        d = self.model.config.d_model
        last = np.zeros((len(windows), d), dtype=np.float32)
        long_term = np.zeros((len(windows), d), dtype=np.float32)
        extend, scratch = [], []
        with self._lock:
            for row, window in enumerate(windows):
                if not len(window):
                    continue
                state = self._usable(window)
                if state is None:
                    scratch.append(row)
                elif state.n == len(window):  # nothing new in this window (a text-only refresh)
                    last[row], long_term[row] = state.last, state.long_term
                    self.stats["reused"] += 1
                else:
                    extend.append((row, state))
            with torch.inference_mode():
                if extend:
                    self._extend(windows, extend, last, long_term)
                if scratch:
                    self._encode_scratch(windows, scratch, last, long_term)
        return last, long_term

    def _usable(self, window: Window) -> _State | None:
        """The cached state of this window, if the window only appended events to it."""
        if window.cache_key is None or window.keys is None:
            return None
        state = self._cache.get(window.cache_key)
        if state is None:
            return None
        keys = window.keys[window.start:]
        if state.n > len(keys) or not np.array_equal(state.keys, keys[: state.n]):
            self._drop(window.cache_key)  # the window moved, an event was inserted, or another model wrote it
            return None
        self._cache.move_to_end(window.cache_key)
        return state

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def _context(self, batch: Batch) -> torch.Tensor | None:
        return None if batch.context is None else self._to_device(batch.context)

    def _extend(self, windows: Sequence[Window], jobs: list[tuple[int, _State]], last: np.ndarray,
                long_term: np.ndarray) -> None:
        new = [windows[row].seq.window(windows[row].start + state.n, None) for row, state in jobs]
        k = max(len(s) for s in new)
        batch = pad_batch(new, k)
        past = self._past(jobs)
        lengths = torch.as_tensor([state.n for _, state in jobs])
        hidden, kv = self.model.extend(*(self._to_device(a) for a in (batch.items, batch.actions, batch.gaps)),
                                       past, lengths, self._context(batch))
        hidden = hidden.float().cpu().numpy()
        for i, ((row, state), seq) in enumerate(zip(jobs, new)):
            window, m = windows[row], len(seq)
            at = window.start + state.n
            state.append(window.keys[at: at + m], kv[:, :, i, :, :m], hidden[i, :m], window.ts[at: at + m],
                         self.half_life_ms, self.model.config.max_len)
            self._account(window.cache_key, state)
            last[row], long_term[row] = state.last, state.long_term
        self.stats["extended"] += len(jobs)

    def _past(self, jobs: list[tuple[int, _State]]) -> torch.Tensor:
        """The cached keys/values of the jobs' windows, [n_layers, 2, B, H, P, d/H], in a reused buffer.

        One copy per user into memory allocated once: a fresh tensor per batch
        of 256 full windows (51 MB) cost more in page faults than in copying.
        """
        kv0 = jobs[0][1].kv
        b, p = len(jobs), max(state.n for _, state in jobs)
        shape = (*kv0.shape[:2], b, kv0.shape[2], p, kv0.shape[-1])
        have = self._workspace
        if have is None or have.dtype != kv0.dtype or have.shape[2] < b or have.shape[4] < p:
            size = (*shape[:2], max(b, have.shape[2] if have is not None else 0), shape[3],
                    max(p, have.shape[4] if have is not None else 0), shape[5])
            self._workspace = have = kv0.new_zeros(size)
        past = have[:, :, :b, :, :p]
        for i, (_, state) in enumerate(jobs):
            past[:, :, i, :, : state.n] = state.kv[..., : state.n, :]
        return past

    def _encode_scratch(self, windows: Sequence[Window], rows: list[int], last: np.ndarray,
                        long_term: np.ndarray) -> None:
        groups: dict[int, list[int]] = {}
        for row in rows:
            length = len(windows[row])
            groups.setdefault(next((b for b in self.buckets if b >= length), length), []).append(row)
        for length, members in sorted(groups.items()):
            seqs = [windows[r].seq.window(windows[r].start, None) for r in members]
            batch = pad_batch(seqs, length)
            hidden, kv = self.model.encode_cached(*(self._to_device(a) for a in
                                                    (batch.items, batch.actions, batch.gaps)), self._context(batch))
            hidden = hidden.float().cpu().numpy()
            for i, row in enumerate(members):
                window, m = windows[row], len(seqs[i])
                ts = window.ts[window.start:]
                if window.cache_key is None or window.keys is None or self.cache_bytes <= 0:
                    w = _weights(ts, int(ts[0]), self.half_life_ms)
                    last[row] = hidden[i, m - 1]
                    long_term[row] = (w @ hidden[i, :m].astype(np.float64) / w.sum()).astype(np.float32)
                    continue
                window_kv = kv.new_empty((*kv.shape[:2], kv.shape[3], _capacity(m, self.model.config.max_len),
                                          kv.shape[-1]))
                window_kv[..., :m, :] = kv[:, :, i, :, :m]
                state = _State(window.keys[window.start:], window_kv, hidden[i, m - 1], ts, hidden[i, :m],
                               self.half_life_ms)
                last[row], long_term[row] = state.last, state.long_term
                self._drop(window.cache_key)
                self._cache[window.cache_key] = state
                self._account(window.cache_key, state)
        self.stats["encoded"] += len(rows)

    def _account(self, key: object, state: _State) -> None:
        """Count a cached state's new size, then evict the least recently refreshed beyond the budget."""
        if self._cache.get(key) is not state:
            return  # evicted meanwhile: extended for this refresh, no longer kept
        self._cached_bytes += state.nbytes - state.counted
        state.counted = state.nbytes
        while self._cached_bytes > self.cache_bytes and self._cache:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= evicted.counted
            self.stats["evicted"] += 1

    def _drop(self, key: object) -> None:
        state = self._cache.pop(key, None)
        if state is not None:
            self._cached_bytes -= state.counted

    def clear(self) -> None:
        """Forget every cached window (e.g. the users of partitions this worker no longer owns)."""
        with self._lock:
            self._cache.clear()
            self._cached_bytes = 0
