"""Multi-granularity interests and how recommendations blend them.

Every interest vector lives in the item-embedding space (a dot product with
an item's embedding is that item's score), so a weighted sum of vectors
scores the catalogue in one matrix product:

- ``current``: the encoder's hidden state at the user's last event, fused
  with the text interest by the learned gate (`encoders.nn.fusion`): what the
  user is after next;
- ``long_term``: the mean of the hidden states at every event of the bounded
  history, each weighted by ``0.5 ** (age / half_life)`` with age measured
  from the newest event: what the user likes over months;
- ``session``: the encoder over the current session alone;
- ``categories``: the same time-decayed weights spread over the items'
  categories (an item with k categories gives 1/k to each), a distribution.
  It enters the score as the log *lift* of an item's categories for this user
  over the catalogue's own category mix, so items without categories, and
  users whose mix matches the catalogue's, are not moved.

``score(item) = (w_c current + w_l long_term + w_s session) . e_item
+ w_cat * log((share_user(item) + eps) / (share_catalogue(item) + eps))``.

`InterestEncoder.recommend` (`encoders.inference`) applies this rule; the
records it takes and gives (`UserEvents`, `Interests`, `Recommendation`) live
here, torch-free, so that the worker's runtime modules can name them without
loading torch.  The worker (`streams.refresh`) and the offline benchmarks call
`recommend`; `encoders.evaluation` ranks with the same `encoders.ranking`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .vocab import UNKNOWN_ITEM

__all__ = [
    "DAY_MS",
    "INTERESTS",
    "BlendWeights",
    "CategoryIndex",
    "Click",
    "History",
    "Interests",
    "Recommendation",
    "TextRow",
    "UserEvents",
    "behaviour_events",
    "category_distribution",
    "decay_weights",
    "drift",
]

DAY_MS = 86_400_000
INTERESTS = ("current", "long_term", "session", "categories", "text")
_EPS = 1e-3  # smooths the category lift; shares are fractions in [0, 1]

Click = tuple[str, str, int]  # (item_id, action, ts_ms), as the worker and `from_tuples` read events
TextRow = tuple[np.ndarray, int]  # (384-d text embedding, ts_ms)


@dataclass(frozen=True)
class BlendWeights:
    """How much each interest counts when items are scored.

    >>> BlendWeights.parse("current=1,long_term=0.3").long_term
    0.3
    """

    current: float = 1.0
    long_term: float = 0.0
    session: float = 0.0
    categories: float = 0.0

    @classmethod
    def parse(cls, text: str) -> BlendWeights:
        """``name=weight`` pairs separated by commas; names not given keep their default."""
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, weight = part.partition("=")
            if not sep or name.strip() not in cls.__dataclass_fields__:
                raise ValueError(f"blend weight {part!r}: expected name=number with name one of "
                                 f"{', '.join(cls.__dataclass_fields__)}")
            try:
                values[name.strip()] = float(weight)
            except ValueError:
                raise ValueError(f"blend weight {part!r}: {weight!r} is not a number") from None
        return cls(**values)

    def __str__(self) -> str:
        return ",".join(f"{k}={getattr(self, k):g}" for k in self.__dataclass_fields__)

    def query(self, current: np.ndarray, long_term: np.ndarray, session: np.ndarray) -> np.ndarray:
        """The one vector per user whose dot product with the item table blends the three."""
        return self.current * current + self.long_term * long_term + self.session * session


@dataclass(frozen=True)
class UserEvents:
    """One user's input to `InterestEncoder.recommend`, each part oldest first.

    ``session`` is the tail of ``clicks`` that forms the current session: the
    caller cuts it (the worker by inactivity gap and ``session_id``, see
    `state.sessions`), as this package knows nothing of how sessions are kept.
    ``texts`` are the user's text embeddings with their times.
    """

    clicks: Sequence[Click]
    session: Sequence[Click] = ()
    texts: Sequence[TextRow] = ()


@dataclass(frozen=True)
class History:
    """One user's input to `InterestEncoder.recommend_histories`: the worker's stored history as arrays.

    Each array is oldest first.  ``keys`` identify events (the worker: hashes
    of their ids) and ``user_id`` the user, so the encoder can extend the
    window it cached at the user's last refresh (`encoders.states`);
    ``total`` counts every click the user ever had, which places the window.
    ``text`` is the mean MiniLM embedding of the user's texts (None without
    any) and ``text_ts`` the newest text's time.  ``context`` holds each
    event's context word, which a model trained with context reads.
    """

    user_id: str
    items: np.ndarray  # int64 vocabulary rows (`encoders.vocab.UNKNOWN` for items the model lacks)
    actions: np.ndarray  # int64 indices into `encoders.vocab.ACTIONS`
    ts: np.ndarray  # int64 ms
    keys: np.ndarray  # uint64, unique per event
    total: int
    session_start: int = 0  # index of the current session's first event
    context: np.ndarray | None = None  # uint64 context words (`encoders.features.context_word`; None: none kept)
    text: np.ndarray | None = None
    text_ts: int = 0


@dataclass(frozen=True)
class Interests:
    """A batch's interests, rows aligned with the users given to `InterestEncoder.interests`."""

    current: np.ndarray  # [B, d] behaviour at the last event, fused with the text interest
    long_term: np.ndarray  # [B, d] time-decayed mean of the hidden states
    session: np.ndarray  # [B, d] the encoder over the current session alone
    categories: list[dict[str, float]]  # time-decayed category shares ({} without categories)
    next_action: np.ndarray | None  # [B, len(action_classes)] probabilities, None without a head
    seen: list[np.ndarray]  # vocabulary rows of the items each user clicked: what ``exclude_seen`` leaves out
    category_shares: np.ndarray | None = None  # [B, n_categories], the ``categories`` dicts as one matrix

    def __len__(self) -> int:
        return len(self.current)


@dataclass(frozen=True)
class Recommendation:
    """One user's interests and ranked items (see `encoders.interests` for each interest)."""

    current: np.ndarray  # [d]
    long_term: np.ndarray  # [d]
    session: np.ndarray  # [d]
    categories: dict[str, float]
    next_action: dict[str, float] | None  # action -> probability, None without a head
    items: list[tuple[str, float]]  # (item_id, score), best first
    rows: list[int] = field(default_factory=list)  # the items' vocabulary rows


def behaviour_events(clicks: Sequence[Click], texts: Sequence[TextRow] = ()) -> list[Click]:
    """The events the sequence encoder reads for a user: the clicks, or a stand-in when there are none.

    A user with texts but no clicks still gets behaviour vectors: those of
    one "search" on `UNKNOWN_ITEM`, the model's prior for a new user who
    searched.  They are the long-term and session interests, and the current
    one where the checkpoint has no text fusion (with one, current is the
    text interest alone).  The stand-in's time (the last text's) enters
    nothing, as a lone event has no gap and the full decay weight.

    >>> behaviour_events([], [(None, 1_700_000_000_000)])
    [('\\x00unknown', 'search', 1700000000000)]
    """
    if clicks:
        return list(clicks)
    return [(UNKNOWN_ITEM, "search", texts[-1][1] if texts else 0)]


def decay_weights(ts: np.ndarray, half_life_ms: float) -> np.ndarray:
    """``0.5 ** ((newest - ts) / half_life)`` per event; all ones when half_life <= 0."""
    ts = np.asarray(ts, dtype=np.float64)
    if len(ts) == 0 or half_life_ms <= 0:
        return np.ones(len(ts), dtype=np.float64)
    return np.exp2(-(ts.max() - ts) / half_life_ms)


def category_distribution(items: Sequence[str], ts: Sequence[int], categories: Mapping[str, Sequence[str]],
                          half_life_ms: float) -> dict[str, float]:
    """Time-decayed share of each category in a history, largest first ({} when none is known).

    >>> category_distribution(["a", "b"], [0, 0], {"a": ["x"], "b": ["x", "y"]}, 0)
    {'x': 0.75, 'y': 0.25}
    """
    mass: dict[str, float] = {}
    for item, weight in zip(items, decay_weights(np.asarray(ts), half_life_ms)):
        cats = categories.get(item, ())
        for cat in cats:
            mass[cat] = mass.get(cat, 0.0) + float(weight) / len(cats)
    total = sum(mass.values())
    return {c: m / total for c, m in sorted(mass.items(), key=lambda kv: (-kv[1], kv[0]))} if total else {}


def drift(previous: np.ndarray | None, current: np.ndarray) -> float | None:
    """Cosine distance (0 same direction .. 2 opposite) between two interests; None without a previous one."""
    if previous is None or previous.shape != current.shape:
        return None
    norms = float(np.linalg.norm(previous) * np.linalg.norm(current))
    if norms == 0.0:
        return None
    return float(1.0 - np.dot(previous, current) / norms)


class CategoryIndex:
    """Item -> category shares over a vocabulary, for the ``categories`` term of the score.

    Row i of ``shares`` spreads item i's weight 1 evenly over its categories
    (all zeros for padding, unknown and uncategorised items).
    """

    def __init__(self, item_ids: Sequence[str], categories: Mapping[str, Sequence[str]], offset: int = 2) -> None:
        self.names = sorted({c for item in item_ids for c in categories.get(item, ())})
        self._column = column = {name: j for j, name in enumerate(self.names)}
        self.shares = np.zeros((len(item_ids) + offset, len(self.names)), dtype=np.float32)
        for row, item in enumerate(item_ids, offset):
            cats = categories.get(item, ())
            for cat in cats:
                self.shares[row, column[cat]] += 1.0 / len(cats)
        mix = self.shares.sum(0)
        self.catalogue_mix = mix / max(float(mix.sum()), 1e-12)
        self.categories = {item: tuple(categories[item]) for item in item_ids if categories.get(item)}
        # Items share few distinct category mixes (ML-1M: 300 for 3,416 items): the lift is computed
        # per mix and then spread to the items, not per item.
        self._mixes, item_mix = np.unique(self.shares, axis=0, return_inverse=True)
        self.item_mix = item_mix.reshape(-1)  # row -> index of its mix
        self._mix_baseline = self._mixes @ self.catalogue_mix
        self._mix_known = self._mixes.sum(1) > 0

    def __bool__(self) -> bool:
        return bool(self.names)

    def shares_of(self, histories: Sequence[tuple[np.ndarray, np.ndarray]], half_life_ms: float) -> np.ndarray:
        """[B, n_categories] `category_distribution` of many histories of (vocabulary rows, times) at once.

        A row sums to 1, or is all zeros when none of the user's items has a category.
        """
        out = np.zeros((len(histories), len(self.names)), dtype=np.float64)
        lengths = np.fromiter((len(rows) for rows, _ in histories), dtype=np.int64, count=len(histories))
        if not self.names or not lengths.sum():
            return out
        rows = np.concatenate([np.asarray(r, dtype=np.int64) for r, _ in histories])
        ts = np.concatenate([np.asarray(t, dtype=np.float64) for _, t in histories])
        present = lengths > 0
        starts = (np.cumsum(lengths) - lengths)[present]  # each user's events are one segment
        newest = np.repeat(np.maximum.reduceat(ts, starts), lengths[present])
        weights = np.exp2(-(newest - ts) / half_life_ms) if half_life_ms > 0 else np.ones(len(ts))
        out[present] = np.add.reduceat(weights[:, None] * self.shares[rows], starts, axis=0)
        total = out.sum(1, keepdims=True)
        return np.divide(out, total, out=np.zeros_like(out), where=total > 0)

    def as_dict(self, shares: np.ndarray) -> dict[str, float]:
        """One row of `shares_of` as {category: share}, largest first (ties by name), zeros left out."""
        order = np.argsort(-shares, kind="stable")  # names are sorted: ties keep name order
        return {self.names[j]: float(shares[j]) for j in order if shares[j] > 0}

    def distribution(self, rows: np.ndarray, ts: np.ndarray, half_life_ms: float) -> dict[str, float]:
        """`category_distribution` of a history given as vocabulary rows, largest share first."""
        return self.as_dict(self.shares_of([(rows, ts)], half_life_ms)[0]) if self.names else {}

    def mix_of(self, distributions: Sequence[Mapping[str, float]]) -> np.ndarray:
        """[B, n_categories] shares of category dicts (categories the catalogue lacks left out)."""
        user_mix = np.zeros((len(distributions), len(self.names)), dtype=np.float32)
        for row, dist in enumerate(distributions):
            for cat, share in dist.items():
                if cat in self._column:
                    user_mix[row, self._column[cat]] = share
        return user_mix

    def mix_lift(self, user_mix: np.ndarray) -> np.ndarray:
        """[B, n_mixes] log lift of each distinct category mix for each user; ``[:, item_mix]`` gives items."""
        lift = np.log((user_mix @ self._mixes.T + _EPS) / (self._mix_baseline[None, :] + _EPS)).astype(np.float32)
        lift[:, ~self._mix_known] = 0.0
        lift[user_mix.sum(1) <= 0] = 0.0
        return lift

    def category_lift(self, user_mix: np.ndarray) -> np.ndarray:
        """[B, n_categories] log lift of each single category: an item of category c gets column c."""
        lift = np.log((user_mix + _EPS) / (self.catalogue_mix[None, :] + _EPS)).astype(np.float32)
        lift[user_mix.sum(1) <= 0] = 0.0
        return lift

    def lift(self, distributions: Sequence[Mapping[str, float]]) -> np.ndarray:
        """[B, n_items] log lift of each item's categories for each user (0 where unknown)."""
        return self.mix_lift(self.mix_of(distributions))[:, self.item_mix]
