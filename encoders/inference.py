"""The worker's inference path: users' events in, interest vectors and top-K out.

It runs the trained `SequenceEncoder`'s weights (and, when the checkpoint
has them, the text fusion and the item categories saved beside it; see
`encoders.interests` for what each interest means).  Windows are encoded by
`encoders.states.WindowEncoder`: grouped by a small set of padded lengths
(16, 32, 64, 128, max_len), one forward pass per group, and, for the worker,
extended from the state cached at the user's previous refresh when only new
events were appended.  Because the model pads on the right under causal
attention, a user's vector does not depend on the group it lands in (see
`encoders.nn.model`).

Two entry points give every interest and the ranked items per user: 

- `recommend` takes ``(item_id, action, ts)`` tuples (`UserEvents`) and
  encodes each user's last ``max_len`` events from scratch, exactly as
  training and `encoders.evaluation` read them;
- `recommend_histories` takes the worker's stored histories as arrays
  (`History`), reuses cached windows, and places each window by
  `encoders.states.window_start` with ``window_hop`` (exact when 1).

Both are `interests` then `rank`, one scoring rule: the worker
(`streams.refresh`) and the offline blend benchmark (`bench/interest_blend.py`)
call them, and `encoders.evaluation` ranks with the same `encoders.ranking`
functions, so what is measured offline is what is served.

Calls may come from an executor thread while the event loop goes on; a lock
serialises them, so one `InterestEncoder` can be shared by any threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_categories, load_checkpoint, load_fusion
from .features import SeqArrays, from_arrays
from .interests import (DAY_MS, BlendWeights, CategoryIndex, History, Interests, Recommendation, UserEvents,
                        behaviour_events)
from .nn.model import SequenceEncoder
from .ranking import item_scores, mask_scores, top_items
from .states import Window, WindowEncoder, window_start
from .vocab import ACTIONS, FIRST_ITEM, UNKNOWN, ItemVocab, action_index

__all__ = ["LENGTH_BUCKETS", "Encoded", "InterestEncoder", "keep_freed_memory"]

LENGTH_BUCKETS = (16, 32, 64, 128)
DEFAULT_HALF_LIFE_MS = 30 * DAY_MS
_SEARCH = action_index("search")  # the action of a text-only user's stand-in event


def keep_freed_memory() -> None:
    """Let memory freed by one batch's tensors stay in the process for the next, not go back to the kernel.

    glibc maps every large allocation on its own and unmaps it when freed, so
    each micro-batch's tensors (tens of MB) were page-faulted in afresh, which
    cost more than some of the arithmetic on them (bench/refresh_bench.py, a
    200-event window from scratch for 256 users, medians of 3 runs: 937 ms
    without, 695 ms with). The process keeps its peak memory instead. A no-op
    where the C library is not glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)
    libc.mallopt(m_top_pad, 64 << 20)


@dataclass(frozen=True)
class Encoded:
    """What one forward pass gives per user (rows align with the input sequences)."""

    current: np.ndarray  # [B, d] hidden state at the last event
    long_term: np.ndarray  # [B, d] time-decayed mean of the hidden states
    next_action: np.ndarray | None  # [B, len(action_classes)] probabilities, None without a head


class InterestEncoder:
    """Encode users' recent events into interest vectors and score the catalogue.

    >>> enc = InterestEncoder.from_checkpoint("/tmp/ckpt-ml1m")  # doctest: +SKIP
    >>> vecs = enc.encode([[("1", "click", 1_700_000_000_000), ("48", "buy", 1_700_000_060_000)]])  # doctest: +SKIP
    >>> enc.top_k(vecs, 10, exclude=[{"1", "48"}])  # doctest: +SKIP
    [[('2', 7.1), ...]]
    """

    def __init__(self, model: SequenceEncoder, vocab: ItemVocab, model_version: str = "", *,
                 fusion=None, categories: dict[str, tuple[str, ...]] | None = None,
                 action_classes: Sequence[str] = (), half_life_ms: float = DEFAULT_HALF_LIFE_MS,
                 window_hop: int = 1, cache_bytes: int = 0, ann_above: int = 0, ann_candidates: int = 200,
                 ann_probe: int = 128, index_kind: str = "ivf", index_cache: str | Path | None = None) -> None:
        if len(vocab) != model.config.n_items:
            raise ValueError(f"vocab has {len(vocab)} entries but model.config.n_items={model.config.n_items}")
        if not 1 <= window_hop <= model.config.max_len:
            raise ValueError(f"window_hop={window_hop} must be in 1..max_len ({model.config.max_len})")
        self.model = model.eval()
        self.vocab = vocab
        self.model_version = model_version
        self.fusion = fusion.eval() if fusion is not None else None
        self.categories = CategoryIndex(vocab.item_ids, categories or {})
        self.half_life_ms = half_life_ms
        self.window_hop = window_hop
        has_head = getattr(model, "has_action_head", False)
        self.action_classes = tuple(action_classes) if has_head else ()
        self._action_rows = [ACTIONS.index(a) for a in self.action_classes]
        self.dim = model.config.d_model
        self.max_len = model.config.max_len
        self.device = next(model.parameters()).device
        self.buckets = tuple(b for b in LENGTH_BUCKETS if b < self.max_len) + (self.max_len,)
        self.windows = WindowEncoder(model, buckets=self.buckets, half_life_ms=half_life_ms, cache_bytes=cache_bytes)
        self._model_table = model.item_table().detach().float()
        self._model_mix = torch.as_tensor(self.categories.item_mix, dtype=torch.long, device=self.device)
        self._table, self._item_mix = self._model_table, self._model_mix  # with the new items' rows (`set_new_items`)
        self._lock = threading.Lock()
        # Items the model never learned, scored from their text: rows len(vocab), len(vocab) + 1, ...
        self.new_items: tuple[str, ...] = ()
        self._new_rows: dict[str, int] = {}
        self.items_version = 0  # rises with each `set_new_items`: the rows of the table changed
        self._unavailable: frozenset[str] = frozenset()
        self._blocked: torch.Tensor | None = None  # [n_rows] bool: items never to recommend (`set_unavailable`)
        self._blocked_rows = np.empty(0, dtype=np.int64)
        self.ann_candidates = ann_candidates
        self.index = None  # above ann_above items: an index proposes candidates (`encoders.retrieval`)
        if 0 < ann_above < len(vocab) - FIRST_ITEM:
            from .retrieval import CandidateIndex

            self.index = CandidateIndex(self._table.cpu().numpy(), self.categories.shares if self.categories else None,
                                        FIRST_ITEM, probe=ann_probe, kind=index_kind, cache_dir=index_cache,
                                        version=model_version)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", half_life_ms: float = DEFAULT_HALF_LIFE_MS,
                        window_hop: int = 1, cache_bytes: int = 0, **scoring) -> InterestEncoder:
        """Load a checkpoint directory (see `encoders.checkpoint`) with its fusion and categories.

        ``scoring``: ``ann_above``, ``ann_candidates``, ``ann_probe``, ``index_kind`` and ``index_cache``
        (see `encoders.retrieval`).
        """
        model, vocab, meta = load_checkpoint(path, device)
        fusion = load_fusion(path, device=next(model.parameters()).device)
        return cls(model, vocab, meta.model_version, fusion=fusion, categories=load_categories(path),
                   action_classes=meta.extra.get("action_classes", ()), half_life_ms=half_life_ms,
                   window_hop=min(window_hop, model.config.max_len), cache_bytes=cache_bytes, **scoring)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        # bf16 on the GPU only: on CPU it is slower and changes results.
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    # ------------------------------------------------------------ encoding
    def _encode_windows(self, windows: Sequence[Window]) -> Encoded:
        with self._lock, self._autocast():
            last, long_term = self.windows.encode(windows)
            actions = None
            if self.action_classes:
                with torch.inference_mode():
                    logits = self.model.next_action_logits(self._to_device(last))[:, self._action_rows]
                    actions = torch.softmax(logits.float(), -1).cpu().numpy()
                    actions[[not len(w) for w in windows]] = 0.0
        return Encoded(last, long_term, actions)

    def _exact_window(self, events: Sequence[tuple[str, str, int]]) -> Window:
        """The last ``max_len`` of ``(item_id, action, ts)`` events, encoded from scratch."""
        seq = self._arrays(events)
        ts = np.asarray([e[2] for e in events], dtype=np.int64)
        return Window(seq, ts, max(0, len(seq) - self.max_len))

    def _arrays(self, events: Sequence[tuple[str, str, int]]) -> SeqArrays:
        return from_arrays(np.fromiter((self.vocab.index(e[0]) for e in events), np.int64, len(events)),
                           np.fromiter((action_index(e[1]) for e in events), np.int64, len(events)),
                           np.fromiter((e[2] for e in events), np.int64, len(events)))

    def encode_interests(self, sequences: Sequence[Sequence[tuple[str, str, int]]]) -> Encoded:
        """Current and long-term interests (and next-action probabilities) of users' events.

        Each sequence is ``(item_id, action, ts_ms)`` tuples, oldest first; only
        the last ``max_len`` events are used; unknown items map to the
        unknown-item embedding.  A user with no events gets zero vectors and
        no action probabilities (zeros).
        """
        return self._encode_windows([self._exact_window(seq) for seq in sequences])

    def encode(self, sequences: Sequence[Sequence[tuple[str, str, int]]]) -> np.ndarray:
        """Current interest vectors, float32 [B, dim] (see `encode_interests`)."""
        return self.encode_interests(sequences).current

    # ------------------------------------------------------------ text
    def fuse_text(self, behaviour: np.ndarray, texts: Sequence[Sequence[tuple[np.ndarray, int]]],
                  has_behaviour: np.ndarray) -> np.ndarray:
        """``behaviour`` [B, d] fused with each user's text interest by the checkpoint's gate.

        ``texts[i]`` holds user i's ``(384-d MiniLM embedding, ts_ms)`` pairs,
        oldest first. Without a fusion in the checkpoint, or without texts,
        behaviour is returned unchanged.
        """
        if self.fusion is None or not any(texts):
            return behaviour
        with self._lock:
            text = [self.fusion.text_interest([e for e, _ in rows], [t for _, t in rows]) if rows else None
                    for rows in texts]
        return self._fuse(behaviour, text, has_behaviour)

    def text_interest_of_means(self, means: Sequence[np.ndarray | None]) -> list[np.ndarray | None]:
        """Text interests of users given their mean text embedding (the worker keeps that mean).

        The same as `TextFusion.text_interest` of the texts themselves when the
        projection is linear and unweighted (the default); for a fusion with a
        hidden layer or recency weights it is the projection of the mean.
        """
        if self.fusion is None or all(m is None for m in means):
            return [None] * len(means)
        rows = [i for i, m in enumerate(means) if m is not None]
        with self._lock, torch.inference_mode():
            stacked = torch.as_tensor(np.stack([means[i] for i in rows]).astype(np.float32), device=self.device)
            projected = self.fusion.project(stacked).float().cpu().numpy()
        out: list[np.ndarray | None] = [None] * len(means)
        for i, row in enumerate(rows):
            out[row] = projected[i]
        return out

    def _fuse(self, behaviour: np.ndarray, text: Sequence[np.ndarray | None], has_behaviour: np.ndarray) -> np.ndarray:
        if self.fusion is None or all(t is None for t in text):
            return behaviour
        stacked = np.zeros_like(behaviour)
        has_text = np.array([t is not None for t in text])
        for row, vector in enumerate(text):
            if vector is not None:
                stacked[row] = vector
        with self._lock:
            return self.fusion.fuse_numpy(behaviour, stacked, has_behaviour, has_text).astype(np.float32)

    # ------------------------------------------------------------ scoring
    def top_k(
        self, vectors: np.ndarray, k: int, exclude: Sequence[set[str]] | None = None,
        bias: np.ndarray | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Best ``k`` ``(item_id, score)`` per vector by dot product with the item table.

        ``exclude[i]`` holds item ids never to return for row i (e.g. what the
        user already bought); padding and unknown rows are never returned, so
        a row may hold fewer than ``k`` items when exclusions leave too few.
        ``bias`` [B, n_items], when given, is added to the scores (the
        category term of `encoders.interests`).
        """
        rows = None if exclude is None else [[r for r in map(self.row, items) if r is not None]
                                             for items in exclude]
        bias_t = None if bias is None else self._to_device(np.ascontiguousarray(bias, dtype=np.float32))
        return [[(self.item_id(r), v) for r, v in best] for best in self._top_rows(vectors, k, rows, bias_t)]

    # ------------------------------------------------------------ the live catalogue
    @property
    def n_rows(self) -> int:
        """Rows of the scoring table: the model's vocabulary (padding and unknown included), then new items."""
        return len(self.vocab) + len(self.new_items)

    def item_id(self, row: int) -> str:
        return self.vocab.item_id(row) if row < len(self.vocab) else self.new_items[row - len(self.vocab)]

    def row(self, item_id: str) -> int | None:
        """The item's row in the scoring table, None when it has none."""
        return self.vocab.index(item_id) if item_id in self.vocab else self._new_rows.get(item_id)

    def item_ids(self) -> list[str]:
        """The ids of rows `FIRST_ITEM` onwards, in row order."""
        return [*self.vocab.item_ids, *self.new_items]

    def set_unavailable(self, item_ids: Iterable[str]) -> int:
        """Items never to recommend from now on, replacing the last set (the live catalogue's unavailable ones).

        Ids without a row are ignored.  Returns how many rows are blocked.
        Thread-safe against scoring.
        """
        with self._lock:
            self._unavailable = frozenset(item_ids)
            return self._block()

    def _block(self) -> int:
        rows = np.array(sorted(r for r in map(self.row, self._unavailable) if r is not None), dtype=np.int64)
        if self.index is not None:
            self.index.exclude(rows[rows < len(self.vocab)])  # new items are not in the index
        blocked = torch.zeros(self.n_rows, dtype=torch.bool, device=self.device)
        blocked[torch.from_numpy(rows).to(self.device)] = True
        self._blocked, self._blocked_rows = (blocked if len(rows) else None), rows
        return len(rows)

    def text_item_vectors(self, embeddings: np.ndarray) -> np.ndarray:
        """Item vectors [N, d] for items the model never saw, from their MiniLM embeddings [N, 384].

        The checkpoint's text projection, trained to map an item's "title |
        categories" string to its embedding (`encoders.training.fusion`),
        gives the vector (`bench/cold_start.py` measures it).
        """
        if self.fusion is None:
            raise ValueError("this checkpoint has no text projection (trained without --text-fusion)")
        with self._lock, torch.inference_mode():
            found = self.fusion.project(self._to_device(np.ascontiguousarray(embeddings, dtype=np.float32)))
            return found.float().cpu().numpy()

    def set_new_items(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Score these items, unknown to the model, with ``vectors`` [N, d]; replaces the last set.

        They get rows after the vocabulary's: recommended like any item (the
        category lift treats them as uncategorised), left out of the history
        a user clicked them in, but read by the model as its unknown item.
        """
        item_ids = [i for i in item_ids if i not in self.vocab]
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(item_ids), self.dim)
        with self._lock:
            self.new_items = tuple(item_ids)
            self._new_rows = {item: len(self.vocab) + j for j, item in enumerate(item_ids)}
            extra = self._to_device(np.ascontiguousarray(vectors)).to(self._model_table.dtype)
            self._table = torch.cat([self._model_table, extra]) if len(item_ids) else self._model_table
            uncategorised = self._model_mix[:1].expand(len(item_ids))  # row 0 (padding) has no category
            self._item_mix = torch.cat([self._model_mix, uncategorised]) if len(item_ids) else self._model_mix
            self.items_version += 1
            self._block()

    def _model_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows as the model reads them: a new item is its unknown item."""
        return np.where(rows < len(self.vocab), rows, UNKNOWN) if self.new_items else rows

    def _top_rows(self, vectors: np.ndarray, k: int, exclude: Sequence | None,
                  bias=None) -> list[list[tuple[int, float]]]:
        """``bias``: a [B, n_items] tensor, or a callable adding the category term to the scores in place."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must be [B, {self.dim}], got shape {vectors.shape}")
        if exclude is not None and len(exclude) != len(vectors):
            raise ValueError(f"exclude has {len(exclude)} sets for {len(vectors)} vectors")
        k = min(k, self.n_rows - FIRST_ITEM)
        if k <= 0 or len(vectors) == 0:
            return [[] for _ in range(len(vectors))]
        with self._lock, torch.inference_mode():
            scores = item_scores(self._to_device(np.ascontiguousarray(vectors)), self._table,
                                 bias if isinstance(bias, torch.Tensor) else None)
            if callable(bias):
                bias(scores)
            mask_scores(scores, exclude)
            if self._blocked is not None:
                scores.masked_fill_(self._blocked, float("-inf"))
            return top_items(scores, k)

    # ------------------------------------------------------------ the scoring rule
    def interests(self, users: Sequence[UserEvents]) -> Interests:
        """Every interest of each user, in one forward pass for the whole batch (see `recommend`).

        Histories and sessions are encoded together, each from scratch over its
        last ``max_len`` events; a user without clicks is encoded by
        `behaviour_events` and counts as having no behaviour for the text fusion.
        """
        n = len(users)
        encoded = self._encode_windows([self._exact_window(behaviour_events(u.clicks, u.texts)) for u in users] +
                                       [self._exact_window(behaviour_events(u.session, u.texts)) for u in users])
        has_clicks = np.array([bool(u.clicks) for u in users])
        current = self.fuse_text(encoded.current[:n], [u.texts for u in users], has_clicks)
        rows = [self._arrays(u.clicks).items for u in users]
        shares = self.categories.shares_of([(r, np.asarray([c[2] for c in u.clicks], np.int64))
                                            for r, u in zip(rows, users)], self.half_life_ms)
        return Interests(current, encoded.long_term[:n], encoded.current[n:],
                         [self.categories.as_dict(row) for row in shares],
                         None if encoded.next_action is None else encoded.next_action[:n], rows, shares)

    def interests_of_histories(self, histories: Sequence[History]) -> Interests:
        """Every interest of each user from the worker's stored histories, reusing cached windows.

        Each user's window is placed by `encoders.states.window_start` (with
        ``window_hop``) and extended from the user's cached state when only
        events were appended; the session is the history from
        ``session_start`` on.  Equal to `interests` when ``window_hop`` is 1.
        """
        n = len(histories)
        windows, sessions, same = [], [], []
        for h in histories:
            if len(h.items):
                items = self._model_rows(h.items)
                words = h.context if self.model.config.context else None  # a model without context ignores it
                seq = from_arrays(items, h.actions, h.ts, words)
                start = window_start(h.total, len(seq), self.max_len, self.window_hop)
                windows.append(Window(seq, h.ts, start, h.user_id, h.keys))
                # A session that holds every kept event is the same sequence, so the same window: encode it
                # once (this also covers a session that began before the oldest kept event).
                same.append(h.session_start == 0)
                if not same[-1]:
                    s = h.session_start
                    sseq = from_arrays(items[s:], h.actions[s:], h.ts[s:], None if words is None else words[s:])
                    sstart = window_start(len(sseq), len(sseq), self.max_len, self.window_hop)
                    sessions.append(Window(sseq, h.ts[s:], sstart, ("session", h.user_id), h.keys[s:]))
            else:  # a text-only user: the model's prior after one search
                stand_in = from_arrays(np.array([UNKNOWN]), np.array([_SEARCH]), np.array([h.text_ts]))
                windows.append(Window(stand_in, np.array([h.text_ts]), 0))
                same.append(True)
        encoded = self._encode_windows(windows + sessions)
        session = encoded.current[:n].copy()
        session[~np.asarray(same, dtype=bool)] = encoded.current[n:]
        has_clicks = np.array([len(h.items) > 0 for h in histories])
        current = self._fuse(encoded.current[:n], self.text_interest_of_means([h.text for h in histories]),
                             has_clicks)
        shares = self.categories.shares_of([(self._model_rows(h.items), h.ts) for h in histories], self.half_life_ms)
        return Interests(current, encoded.long_term[:n], session, [self.categories.as_dict(row) for row in shares],
                         None if encoded.next_action is None else encoded.next_action[:n],
                         [h.items for h in histories], shares)

    def rank(self, interests: Interests, weights: BlendWeights = BlendWeights(), *, k: int = 10,
             exclude_seen: bool = True) -> list[list[tuple[str, float]]]:
        """The best ``k`` ``(item_id, score)`` per user: the blend of `encoders.interests`, then top-K.

        The query is ``weights.query(current, long_term, session)``; the
        category lift is added when ``weights.categories`` is non-zero and the
        checkpoint has categories; with ``exclude_seen`` the user's clicked
        items never rank.  Scoring again with other weights costs no forward
        pass (`bench/interest_blend.py` searches weights this way).
        """
        return [[(self.item_id(r), v) for r, v in best]
                for best in self._rank_rows(interests, weights, k, exclude_seen)]

    def _rank_rows(self, interests: Interests, weights: BlendWeights, k: int,
                   exclude_seen: bool) -> list[list[tuple[int, float]]]:
        query = weights.query(interests.current, interests.long_term, interests.session)
        exclude = interests.seen if exclude_seen else None
        add_lift = user_mix = None
        if weights.categories and self.categories:
            shares = interests.category_shares
            user_mix = (self.categories.mix_of(interests.categories) if shares is None else shares).astype(np.float32)
        if self.index is not None:
            return self._top_candidates(query, k, exclude, user_mix, weights.categories)
        if user_mix is not None:
            mix_lift = self._to_device(self.categories.mix_lift(user_mix))

            def add_lift(scores: torch.Tensor) -> None:  # per distinct mix, spread to the items in place
                scores.add_(mix_lift.index_select(1, self._item_mix), alpha=weights.categories)

        return self._top_rows(query, k, exclude, add_lift)

    def _top_candidates(self, query: np.ndarray, k: int, exclude: Sequence | None, user_mix: np.ndarray | None,
                        weight: float) -> list[list[tuple[int, float]]]:
        """The rule of `_top_rows` on the index's candidates only (see `encoders.retrieval`)."""
        query = np.asarray(query, dtype=np.float32)
        most_seen = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        # Blocked items are out of an IVF index; an HNSW index still proposes them, so fetch as many more.
        masked = 0 if self.index.can_exclude else len(self._blocked_rows)
        fetch = min(self.ann_candidates + most_seen + masked, len(self.vocab) - FIRST_ITEM)
        terms = None if user_mix is None else weight * self.categories.category_lift(user_mix)
        with self._lock:
            found = self.index.candidates(query, terms, fetch)
            # New items are not in the index (they are few): every one is a candidate.
            new_rows = np.arange(len(self.vocab), self.n_rows)
            found = np.hstack([found, np.broadcast_to(new_rows, (len(found), len(new_rows)))])
            blocked = self._blocked_rows if masked else self._blocked_rows[self._blocked_rows >= len(self.vocab)]
        invalid = found < 0
        if exclude is not None:
            invalid |= np.stack([np.isin(row, seen) for row, seen in zip(found, exclude)])
        if len(blocked):
            invalid |= np.isin(found, blocked)
        with self._lock, torch.inference_mode():
            rows = torch.from_numpy(np.where(invalid, 0, found)).to(self.device)
            scores = torch.einsum("bkd,bd->bk", self._table[rows], self._to_device(query))
            if user_mix is not None:
                mix_lift = self._to_device(self.categories.mix_lift(user_mix))
                scores.add_(mix_lift.gather(1, self._item_mix[rows]), alpha=weight)
            scores.masked_fill_(self._to_device(invalid), float("-inf"))
            values, at = scores.topk(min(k, found.shape[1]), dim=1)
            picked = rows.gather(1, at)
        return [[(int(r), float(v)) for r, v in zip(row_r, row_v) if v != float("-inf")]
                for row_r, row_v in zip(picked.cpu().tolist(), values.cpu().tolist())]

    def recommend(self, users: Sequence[UserEvents], weights: BlendWeights = BlendWeights(), *, k: int = 10,
                  exclude_seen: bool = True) -> list[Recommendation]:
        """Interests and the top ``k`` items of each user: the scoring rule, on event tuples.

        ``users[i]`` holds user i's clicks (``(item_id, action, ts_ms)``), the
        current session's clicks (cut by the caller) and texts
        (``(embedding, ts_ms)``), each oldest first.  ``weights`` blend the
        interests (`BlendWeights`; the default, ``current=1``, is behaviour
        only, what `encoders.evaluation` measures); ``exclude_seen`` leaves
        the user's clicked items out of their list.  Equal to `interests`
        followed by `rank`.

        >>> enc = InterestEncoder.from_checkpoint("/tmp/ckpt-ml1m")  # doctest: +SKIP
        >>> clicks = [("1", "click", 1_700_000_000_000), ("48", "buy", 1_700_000_060_000)]
        >>> blend = BlendWeights(long_term=0.25)
        >>> [rec] = enc.recommend([UserEvents(clicks, session=clicks)], blend, k=5)  # doctest: +SKIP
        >>> rec.items, rec.categories  # doctest: +SKIP
        ([('2', 7.1), ...], {'Drama': 0.5, ...})
        """
        return self._recommendations(self.interests(users), weights, k, exclude_seen)

    def recommend_histories(self, histories: Sequence[History], weights: BlendWeights = BlendWeights(), *,
                            k: int = 10, exclude_seen: bool = True) -> list[Recommendation]:
        """`recommend` on the worker's stored histories: `interests_of_histories`, then `rank`."""
        return self._recommendations(self.interests_of_histories(histories), weights, k, exclude_seen)

    def _recommendations(self, found: Interests, weights: BlendWeights, k: int,
                         exclude_seen: bool) -> list[Recommendation]:
        ranked = self._rank_rows(found, weights, k, exclude_seen)
        actions = found.next_action
        return [
            Recommendation(found.current[i], found.long_term[i], found.session[i], found.categories[i],
                           None if actions is None else
                           {name: float(p) for name, p in zip(self.action_classes, actions[i])},
                           [(self.item_id(r), v) for r, v in ranked[i]], [r for r, _ in ranked[i]])
            for i in range(len(found))
        ]
