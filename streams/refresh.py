"""Turning changed histories into interest vectors and recommendations.

Runs in the worker's executor thread: everything here is synchronous and
batched, one encoder forward pass for all users of a micro-batch.

Interests refreshed per user (all float32, in the item-embedding space except
``text``):
- ``sequence``: the causal encoder's last hidden state over the whole bounded
  history. Recommendations are scored with it.
- ``session``: the same encoder over the current session only (sessions are cut
  by inactivity or a new ``session_id``); equal to ``sequence`` when the user has
  one session.
- ``text``: the mean all-MiniLM-L6-v2 embedding of the user's recent texts
  (384-d, not yet fused into scoring).
A user with texts but no clicks is encoded from a single unknown-item "search"
step: the model's prior for a user it knows nothing about.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import orjson

from state import AppliedUser, Profile
from state.sessions import current_session

__all__ = ["Refresher", "Refreshed"]

UNKNOWN_ITEM = "\x00unknown"


@dataclass(frozen=True, slots=True)
class Refreshed:
    profile: Profile
    items: tuple[tuple[str, float], ...]
    interests: tuple[str, ...]
    clicks_applied: int


class Refresher:
    """Batched encoder calls for one micro-batch; see the module docstring."""

    def __init__(self, encoder, text_encoder=None, *, top_k: int = 10, exclude_seen: bool = True,
                 session_gap_ms: int = 1_800_000, metrics=None) -> None:
        self.encoder = encoder
        self.text_encoder = text_encoder
        self.top_k = top_k
        self.exclude_seen = exclude_seen
        self.session_gap_ms = session_gap_ms
        self.metrics = metrics

    def embed_texts(self, texts: Sequence[str]) -> list[bytes]:
        """float16 bytes of each text's embedding; empty bytes when no text encoder is loaded."""
        if not texts:
            return []
        if self.text_encoder is None:
            return [b""] * len(texts)
        with self._timed("text", len(texts)):
            vectors = self.text_encoder.embed(list(texts))
        return [row.astype(np.float16).tobytes() for row in vectors]

    def refresh(self, users: Sequence[AppliedUser], changed_texts: set[str]) -> list[Refreshed]:
        """Encode every user's history and session in one forward pass and score the catalogue."""
        if not users:
            return []
        histories = [self._sequence(user.clicks, user) for user in users]
        sessions = [self._sequence(current_session(user.clicks, self.session_gap_ms), user) for user in users]
        with self._timed("sequence", 2 * len(users)):
            vectors = self.encoder.encode(histories + sessions)
            long_vectors, session_vectors = vectors[: len(users)], vectors[len(users):]
            exclude = [{c.item_id for c in user.clicks} for user in users] if self.exclude_seen else None
            ranked = self.encoder.top_k(long_vectors, self.top_k, exclude)
        return [self._result(user, long_vectors[i], session_vectors[i], ranked[i], user.user_id in changed_texts)
                for i, user in enumerate(users)]

    def _sequence(self, clicks, user: AppliedUser) -> list[tuple[str, str, int]]:
        if clicks:
            return [(c.item_id, c.action, c.ts) for c in clicks]
        return [(UNKNOWN_ITEM, "search", user.texts[-1].ts if user.texts else 0)]

    def _result(self, user: AppliedUser, long_vector, session_vector, items, texts_changed: bool) -> Refreshed:
        vectors = {"sequence": long_vector.astype(np.float32).tobytes(),
                   "session": session_vector.astype(np.float32).tobytes()}
        interests = ["sequence", "session"] if user.clicks else []
        text_vector = _mean_text(user)
        if text_vector is not None:
            vectors["text"] = text_vector.tobytes()
            if texts_changed:
                interests.append("text")
        last_ts = max([c.ts for c in user.clicks[-1:]] + [t.ts for t in user.texts[-1:]])
        items = tuple((item, float(score)) for item, score in items)
        profile = Profile(user.user_id, vectors, orjson.dumps([[i, s] for i, s in items]),
                          tuple(item for item, _ in items), self.encoder.model_version, last_ts)
        return Refreshed(profile, items, tuple(interests), user.clicks_applied)

    def _timed(self, encoder: str, size: int):
        return _Timer(self.metrics, encoder, size)


def _mean_text(user: AppliedUser) -> np.ndarray | None:
    rows = [np.frombuffer(t.embedding, dtype=np.float16) for t in user.texts if t.embedding]
    if not rows:
        return None
    mean = np.mean(np.stack(rows).astype(np.float32), axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-6)


class _Timer:
    def __init__(self, metrics, encoder: str, size: int) -> None:
        self.metrics, self.encoder, self.size = metrics, encoder, size

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc_info) -> None:
        if self.metrics is not None:
            self.metrics.encoder_seconds.labels(self.encoder).observe(time.perf_counter() - self.start)
            self.metrics.encoder_batch_size.labels(self.encoder).observe(self.size)
