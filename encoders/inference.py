"""The worker's inference path: event tuples in, interest vectors and top-K out.

It runs the very `SequenceEncoder` used in training (and, when the checkpoint
has them, the text fusion and the item categories saved beside it; see
`encoders.interests` for what each interest means).  A micro-batch's users
are truncated to their last ``max_len`` events and grouped by a small set of
padded lengths (16, 32, 64, 128, max_len): one forward pass per group, so
the number of distinct tensor shapes stays small (good for kernel caches and
the GPU allocator) while short sequences are not padded to 200.  Because the
model pads on the right under causal attention, a user's vector does not
depend on the group it lands in (see `encoders.nn.model`).

`InterestEncoder.recommend` is the scoring rule in one place: per user, the
click history, the current session and the texts in; every interest and the
ranked items out (`interests` then `rank`).  The worker (`streams.refresh`)
and the offline blend benchmark (`bench/interest_blend.py`) both call it, and
`encoders.evaluation` ranks with the same `encoders.ranking` functions, so
what is measured offline is what is served.

Calls may come from an executor thread while the event loop goes on; a lock
serialises them, so one `InterestEncoder` can be shared by any threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_categories, load_checkpoint, load_fusion
from .features import SeqArrays, from_tuples, pad_batch
from .interests import (DAY_MS, BlendWeights, CategoryIndex, Click, Interests, Recommendation, UserEvents,
                        behaviour_events, category_distribution, decay_weights)
from .nn.model import SequenceEncoder
from .ranking import item_scores, mask_scores, top_items
from .vocab import ACTIONS, FIRST_ITEM, ItemVocab

__all__ = ["LENGTH_BUCKETS", "Encoded", "InterestEncoder"]

LENGTH_BUCKETS = (16, 32, 64, 128)
DEFAULT_HALF_LIFE_MS = 30 * DAY_MS


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
                 action_classes: Sequence[str] = (), half_life_ms: float = DEFAULT_HALF_LIFE_MS) -> None:
        if len(vocab) != model.config.n_items:
            raise ValueError(f"vocab has {len(vocab)} entries but model.config.n_items={model.config.n_items}")
        self.model = model.eval()
        self.vocab = vocab
        self.model_version = model_version
        self.fusion = fusion.eval() if fusion is not None else None
        self.categories = CategoryIndex(vocab.item_ids, categories or {})
        self.half_life_ms = half_life_ms
        has_head = getattr(model, "has_action_head", False)
        self.action_classes = tuple(action_classes) if has_head else ()
        self._action_rows = [ACTIONS.index(a) for a in self.action_classes]
        self.dim = model.config.d_model
        self.max_len = model.config.max_len
        self.device = next(model.parameters()).device
        self.buckets = tuple(b for b in LENGTH_BUCKETS if b < self.max_len) + (self.max_len,)
        self._table = model.item_table().detach().float()
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto",
                        half_life_ms: float = DEFAULT_HALF_LIFE_MS) -> InterestEncoder:
        """Load a checkpoint directory (see `encoders.checkpoint`) with its fusion and categories."""
        model, vocab, meta = load_checkpoint(path, device)
        fusion = load_fusion(path, device=next(model.parameters()).device)
        return cls(model, vocab, meta.model_version, fusion=fusion, categories=load_categories(path),
                   action_classes=meta.extra.get("action_classes", ()), half_life_ms=half_life_ms)

    def _bucket(self, length: int) -> int:
        return next(b for b in self.buckets if b >= length)

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

    def _decay(self, stamps: list[np.ndarray], length: int) -> np.ndarray:
        """[B, length] long-term weights, zero on padding, each row summing to 1."""
        weights = np.zeros((len(stamps), length), dtype=np.float32)
        for row, ts in enumerate(stamps):
            w = decay_weights(ts, self.half_life_ms)
            weights[row, : len(w)] = w / w.sum()
        return weights

    def _forward(self, seqs: list[SeqArrays], stamps: list[np.ndarray], length: int) -> tuple[np.ndarray, ...]:
        batch = pad_batch(seqs, length)
        items, actions, gaps = (self._to_device(a) for a in (batch.items, batch.actions, batch.gaps))
        with self._autocast():
            hidden = self.model(items, actions, gaps).float()
        last = hidden[torch.arange(len(seqs), device=hidden.device), self._to_device(batch.lengths - 1)]
        long_term = (self._to_device(self._decay(stamps, length))[:, :, None] * hidden).sum(1)
        out = [last.cpu().numpy(), long_term.cpu().numpy()]
        if self.action_classes:
            logits = self.model.next_action_logits(last)[:, self._action_rows]
            out.append(torch.softmax(logits, -1).cpu().numpy())
        return tuple(out)

    def encode_interests(self, sequences: Sequence[Sequence[tuple[str, str, int]]]) -> Encoded:
        """Current and long-term interests (and next-action probabilities) of users' events.

        Each sequence is ``(item_id, action, ts_ms)`` tuples, oldest first; only
        the last ``max_len`` events are used; unknown items map to the
        unknown-item embedding.  A user with no events gets zero vectors and
        no action probabilities (zeros).
        """
        n = len(sequences)
        current = np.zeros((n, self.dim), dtype=np.float32)
        long_term = np.zeros((n, self.dim), dtype=np.float32)
        actions = np.zeros((n, len(self.action_classes)), dtype=np.float32)
        # Gaps come from the full sequence: the first kept event still knows its predecessor.
        arrays = [from_tuples(seq, self.vocab).window(-self.max_len, None) for seq in sequences]
        stamps = [np.asarray([e[2] for e in seq[-self.max_len:]], dtype=np.int64) for seq in sequences]
        groups: dict[int, list[int]] = {}
        for row, seq in enumerate(arrays):
            if len(seq):
                groups.setdefault(self._bucket(len(seq)), []).append(row)
        with self._lock, torch.inference_mode():
            for length, rows in sorted(groups.items()):
                outputs = self._forward([arrays[r] for r in rows], [stamps[r] for r in rows], length)
                current[rows], long_term[rows] = outputs[0], outputs[1]
                if self.action_classes:
                    actions[rows] = outputs[2]
        return Encoded(current, long_term, actions if self.action_classes else None)

    def encode(self, sequences: Sequence[Sequence[tuple[str, str, int]]]) -> np.ndarray:
        """Current interest vectors, float32 [B, dim] (see `encode_interests`)."""
        return self.encode_interests(sequences).current

    def fuse_text(self, behaviour: np.ndarray, texts: Sequence[Sequence[tuple[np.ndarray, int]]],
                  has_behaviour: np.ndarray) -> np.ndarray:
        """``behaviour`` [B, d] fused with each user's text interest by the checkpoint's gate.

        ``texts[i]`` holds user i's ``(384-d MiniLM embedding, ts_ms)`` pairs,
        oldest first. Without a fusion in the checkpoint, or without texts,
        behaviour is returned unchanged.
        """
        if self.fusion is None or not any(texts):
            return behaviour
        text = np.zeros_like(behaviour)
        has_text = np.array([bool(rows) for rows in texts])
        with self._lock, torch.inference_mode():
            for row, rows in enumerate(texts):
                if rows:
                    text[row] = self.fusion.text_interest([e for e, _ in rows], [t for _, t in rows])
            fused = self.fusion.fuse_numpy(behaviour, text, has_behaviour, has_text)
        return fused.astype(np.float32)

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
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must be [B, {self.dim}], got shape {vectors.shape}")
        if exclude is not None and len(exclude) != len(vectors):
            raise ValueError(f"exclude has {len(exclude)} sets for {len(vectors)} vectors")
        k = min(k, len(self.vocab) - FIRST_ITEM)
        if k <= 0 or len(vectors) == 0:
            return [[] for _ in range(len(vectors))]
        with self._lock, torch.inference_mode():
            scores = item_scores(self._to_device(np.ascontiguousarray(vectors)), self._table,
                                 None if bias is None else
                                 self._to_device(np.ascontiguousarray(bias, dtype=np.float32)))
            mask_scores(scores, None if exclude is None else
                        [[self.vocab.index(i) for i in items if i in self.vocab] for items in exclude])
            best = top_items(scores, k)
        return [[(self.vocab.item_id(i), v) for i, v in row] for row in best]

    def interests(self, users: Sequence[UserEvents]) -> Interests:
        """Every interest of each user, in one forward pass for the whole batch (see `recommend`).

        Histories and sessions are encoded together; a user without clicks is
        encoded by `behaviour_events` and counts as having no behaviour for
        the text fusion.
        """
        n = len(users)
        encoded = self.encode_interests([behaviour_events(u.clicks, u.texts) for u in users] +
                                        [behaviour_events(u.session, u.texts) for u in users])
        has_clicks = np.array([bool(u.clicks) for u in users])
        current = self.fuse_text(encoded.current[:n], [u.texts for u in users], has_clicks)
        categories = [self._category_shares(u.clicks) for u in users]
        return Interests(current, encoded.long_term[:n], encoded.current[n:], categories,
                         None if encoded.next_action is None else encoded.next_action[:n],
                         [{c[0] for c in u.clicks} for u in users])

    def _category_shares(self, clicks: Sequence[Click]) -> dict[str, float]:
        if not self.categories:
            return {}
        return category_distribution([c[0] for c in clicks], [c[2] for c in clicks],
                                     self.categories.categories, self.half_life_ms)

    def rank(self, interests: Interests, weights: BlendWeights = BlendWeights(), *, k: int = 10,
             exclude_seen: bool = True) -> list[list[tuple[str, float]]]:
        """The best ``k`` ``(item_id, score)`` per user: the blend of `encoders.interests`, then `top_k`.

        The query is ``weights.query(current, long_term, session)``; the
        category lift is added when ``weights.categories`` is non-zero and the
        checkpoint has categories; with ``exclude_seen`` the user's clicked
        items never rank.  Scoring again with other weights costs no forward
        pass (`bench/interest_blend.py` searches weights this way).
        """
        query = weights.query(interests.current, interests.long_term, interests.session)
        bias = (weights.categories * self.categories.lift(interests.categories)
                if weights.categories and self.categories else None)
        return self.top_k(query, k, interests.seen if exclude_seen else None, bias)

    def recommend(self, users: Sequence[UserEvents], weights: BlendWeights = BlendWeights(), *, k: int = 10,
                  exclude_seen: bool = True) -> list[Recommendation]:
        """Interests and the top ``k`` items of each user: the worker's whole scoring rule.

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
        found = self.interests(users)
        ranked = self.rank(found, weights, k=k, exclude_seen=exclude_seen)
        actions = found.next_action
        return [
            Recommendation(found.current[i], found.long_term[i], found.session[i], found.categories[i],
                           None if actions is None else
                           {name: float(p) for name, p in zip(self.action_classes, actions[i])},
                           ranked[i])
            for i in range(len(users))
        ]
