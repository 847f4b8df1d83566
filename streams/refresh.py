"""Turning changed histories into interests and recommendations.

Runs in the worker's executor thread: everything here is synchronous and
batched, one encoder call for all users of a micro-batch.  The stored
histories arrive as arrays (`state.layout.ClickHistory`): items are mapped to
the model's rows through one sorted hash table (`state.layout.HashIndex`,
built once per model), sessions are cut with numpy, and the encoder extends
each user's cached window with the new events (`encoders.states`).

Interests refreshed per user (see `encoders.interests` for the definitions):
- ``current``: the encoder's state at the last event, fused by the learned gate
  with the text interest when the checkpoint has a text fusion;
- ``long_term``: time-decayed mean of the encoder's states over the window;
- ``session``: the encoder over the current session only (sessions are cut by
  inactivity or a new ``session_id``);
- ``categories``: time-decayed distribution over the catalogue's categories;
- ``text``: the mean all-MiniLM-L6-v2 embedding of all the user's texts, kept
  by Redis (its projection feeds ``current``).
Recommendations score the catalogue with the blend of `BlendWeights`. A user
with texts but no clicks gets the projected text interest as ``current`` (or,
with a checkpoint that has no fusion, the model's prior for a new user). The
scoring rule itself (the blend, the category lift, the exclusions, and a
text-only user's stand-in event) is `InterestEncoder.recommend_histories`';
this module keeps the Redis side: it turns stored arrays into the encoder's
input, and each user's result into the profile written and the summary
published.  ``drift`` is the cosine distance between the new and the
previous long-term interest, when clicks changed it (None otherwise); the
next-action probabilities come from the encoder's action head.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

# The records only (encoders.interests is torch-free); the encoder itself is handed in.
from encoders.interests import BlendWeights, History, Recommendation, drift
from encoders.vocab import FIRST_ITEM, UNKNOWN, item_text
from state import AppliedUser, Profile
from state.layout import HashIndex, pack_embedding
from state.sessions import session_starts_of

__all__ = ["Refresher", "Refreshed"]

TOP_CATEGORIES = 5  # shares carried in events and profiles; the rest is in the long tail
VECTOR_DECIMALS = 5


@dataclass(frozen=True, slots=True)
class Refreshed:
    profile: Profile
    items: tuple[tuple[str, float], ...]
    interests: tuple[str, ...]  # the interests this refresh changed
    clicks_applied: int
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)  # per interest, for the event
    next_action: dict[str, float] | None = None
    drift: float | None = None
    last_event_ts: int = 0


class Refresher:
    """Batched encoder calls for one micro-batch; see the module docstring."""

    def __init__(self, encoder, text_encoder=None, *, top_k: int = 10, exclude_seen: bool = True,
                 session_gap_ms: int = 1_800_000, weights: BlendWeights = BlendWeights(), metrics=None,
                 catalogue=None) -> None:
        self.encoder = encoder
        self.text_encoder = text_encoder
        self.top_k = top_k
        self.exclude_seen = exclude_seen
        self.session_gap_ms = session_gap_ms
        self.weights = weights
        self.metrics = metrics
        self.catalogue = catalogue  # the live catalogue (`streams.catalogue.Catalogue`): unavailable items
        self._masked: tuple[object, int] | None = None  # (encoder, catalogue version) last applied to scores
        self._synced: tuple[object, int] | None = None  # (encoder, catalogue changes) of the last new items set
        # (encoder, {(new item, its text): vector}) of the new items last given to that encoder.
        self._new_items: tuple[object, dict[tuple[str, str], np.ndarray]] | None = None
        self._index: tuple[object, int, HashIndex] | None = None  # (encoder, its items version, items by hash)
        # Long-term interests of the previous refresh: with overlapped batches, batch N+1 was applied before
        # batch N's profiles were written, so Redis gave its users' long-term interest from before batch N.
        self._last_long_term: dict[str, np.ndarray] = {}

    def embed_texts(self, texts: Sequence[str]) -> list[bytes]:
        """Each text's embedding as Redis keeps it (int16); empty bytes when no text encoder is loaded."""
        if not texts:
            return []
        if self.text_encoder is None:
            return [b""] * len(texts)
        stats = getattr(self.text_encoder, "stats", None)
        before = dict(stats) if stats else {}
        with self._timed("text", len(texts)):
            vectors = self.text_encoder.embed(list(texts))
        if stats and self.metrics is not None:
            for outcome, count in stats.items():
                if count > before.get(outcome, 0):
                    self.metrics.text_cache.labels(outcome).inc(count - before.get(outcome, 0))
        return [pack_embedding(row) for row in vectors]

    def items_index(self, encoder) -> HashIndex:
        """The encoder's items (its vocabulary, then new items) looked up by hash, built when they change."""
        if self._index is None or self._index[:2] != (encoder, encoder.items_version):
            self._index = (encoder, encoder.items_version, HashIndex(encoder.item_ids()))
        return self._index[2]

    def refresh(self, users: Sequence[AppliedUser], changed_clicks: set[str],
                changed_texts: set[str]) -> list[Refreshed]:
        """Encode every user's window and session in one call and score the catalogue."""
        if not users:
            return []
        encoder = self.encoder  # one read: a checkpoint swap cannot split a batch
        self._apply_catalogue(encoder)
        index = self.items_index(encoder)
        histories = self._histories(users, index)
        with self._timed("sequence", len(users)):
            recs = encoder.recommend_histories(histories, self.weights, k=self.top_k,
                                               exclude_seen=self.exclude_seen)
        # Rounded once for the whole batch: [users, 3 interests, d].
        rounded = np.round(np.stack([np.stack([r.current, r.long_term, r.session]) for r in recs])
                           .astype(np.float64), VECTOR_DECIMALS).tolist()
        results = [self._result(user, rec, history, index, encoder.model_version, vectors,
                                _changed(user, changed_clicks, changed_texts, bool(rec.categories)),
                                self._last_long_term.get(user.user_id, user.long_term))
                   for user, rec, history, vectors in zip(users, recs, histories, rounded)]
        self._last_long_term = {user.user_id: rec.long_term for user, rec in zip(users, recs)}
        return results

    def _apply_catalogue(self, encoder) -> None:
        """Bring ``encoder``'s scores up to the live catalogue when it (or the model) changed.

        New items (available, unknown to the model, with a title or
        categories) are scored from their text; unavailable items are blocked.
        """
        catalogue = self.catalogue
        if catalogue is None:
            return
        if self._synced != (encoder, catalogue.changes):
            self._set_new_items(encoder, catalogue)
            self._synced = (encoder, catalogue.changes)
        if self._masked != (encoder, catalogue.version):
            encoder.set_unavailable(catalogue.unavailable)
            self._masked = (encoder, catalogue.version)

    def _set_new_items(self, encoder, catalogue) -> None:
        """Give the catalogue's new items vectors from their text (each embedded once per model)."""
        new = {item_id: item_text(item.title, item.categories) for item_id, item in catalogue.items.items()
               if item.available and item_id not in encoder.vocab and (item.title or item.categories)}
        scored = self.text_encoder is not None and encoder.fusion is not None
        known = self._new_items[1] if self._new_items and self._new_items[0] is encoder else {}
        wanted = set(new.items())
        if scored and wanted != known.keys():  # a model just swapped in has no new items yet: known is empty
            missing = sorted(wanted - known.keys())
            if missing:
                with self._timed("text", len(missing)):
                    vectors = encoder.text_item_vectors(self.text_encoder.embed([text for _, text in missing]))
                known = {**known, **dict(zip(missing, vectors))}
            ids = sorted(new)
            encoder.set_new_items(ids, np.stack([known[(i, new[i])] for i in ids]) if ids else
                                  np.empty((0, encoder.dim), np.float32))
            self._new_items = (encoder, {(i, new[i]): known[(i, new[i])] for i in ids})
        if self.metrics is not None:
            announced_unknown = sum(item.available and i not in encoder.vocab for i, item in catalogue.items.items())
            from_text = len(new) if scored else 0
            self.metrics.catalogue_items.labels("from_text").set(from_text)
            self.metrics.catalogue_items.labels("unscored").set(announced_unknown - from_text)

    def _histories(self, users: Sequence[AppliedUser], index: HashIndex) -> list[History]:
        """Every user's stored clicks as the encoder's input: one lookup and one session cut for the batch."""
        clicks = [user.clicks for user in users]
        ends = np.cumsum([len(c) for c in clicks])[:-1]
        rows = np.split(index.rows(np.concatenate([c.items for c in clicks]), missing=UNKNOWN - FIRST_ITEM)
                        + FIRST_ITEM, ends)
        starts = session_starts_of(clicks, self.session_gap_ms)
        return [History(user.user_id, rows[i], c.actions.astype(np.int64), c.ts, c.events,
                        total=max(user.clicks_applied, len(c)), session_start=starts[i], context=c.context,
                        text=None if user.texts is None else user.texts.mean,
                        text_ts=0 if user.texts is None else user.texts.newest_ts)
                for i, (user, c) in enumerate(zip(users, clicks))]

    @staticmethod
    def _result(user: AppliedUser, rec: Recommendation, history: History, index: HashIndex, model_version: str,
                vectors: list[list[float]], changed: tuple[str, ...], previous: np.ndarray | None) -> Refreshed:
        """One user's profile (to write) and event summary (to publish) from their recommendation."""
        shift = drift(_previous(previous, rec.long_term), rec.long_term) if "long_term" in changed else None
        next_action = (None if rec.next_action is None else
                       {name: round(p, 4) for name, p in rec.next_action.items()})
        top = [[c, round(p, 4)] for c, p in list(rec.categories.items())[:TOP_CATEGORIES]]
        last_ts = max(int(history.ts[-1]) if len(history.ts) else 0, history.text_ts)
        texts = 0 if user.texts is None else user.texts.count
        session_events = len(history.ts) - history.session_start
        items = tuple((item, float(score)) for item, score in rec.items)
        body = {"items": [[i, round(s, 6)] for i, s in items], "categories": top, "next_action": next_action,
                "drift": None if shift is None else round(shift, 6), "model_version": model_version,
                "last_event_ts": last_ts, "texts": texts, "updated_at": int(time.time() * 1000)}
        profile = Profile(user.user_id, {"current": rec.current, "long_term": rec.long_term, "session": rec.session},
                          tuple(int(h) for h in index.hashes[np.asarray(rec.rows, dtype=np.int64) - FIRST_ITEM]),
                          body, changed=changed)
        current, long_term, session = vectors
        summary = {
            "current": {"vector": current},
            "long_term": {"vector": long_term, "drift": shift},
            "session": {"vector": session, "events": session_events,
                        "started_at": int(history.ts[history.session_start]) if session_events else None},
            "categories": {"top": top},
            "text": {"texts": texts},
        }
        return Refreshed(profile, items, changed, user.clicks_applied, summary, next_action, shift, last_ts)

    def _timed(self, encoder: str, size: int):
        return _Timer(self.metrics, encoder, size)


def _changed(user: AppliedUser, clicks: set[str], texts: set[str], has_categories: bool) -> tuple[str, ...]:
    names: list[str] = []
    if user.user_id in clicks:
        names += ["current", "long_term", "session"] + (["categories"] if has_categories else [])
    if user.user_id in texts:
        names += ([] if "current" in names else ["current"]) + ["text"]
    return tuple(names)


def _previous(stored: np.ndarray | None, like: np.ndarray) -> np.ndarray | None:
    if stored is None or stored.shape != like.shape:
        return None  # none yet, or written by a model of another width
    return stored


class _Timer:
    def __init__(self, metrics, encoder: str, size: int) -> None:
        self.metrics, self.encoder, self.size = metrics, encoder, size

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc_info) -> None:
        if self.metrics is not None:
            self.metrics.encoder_seconds.labels(self.encoder).observe(time.perf_counter() - self.start)
            self.metrics.encoder_batch_size.labels(self.encoder).observe(self.size)
