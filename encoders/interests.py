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
    any) and ``text_ts`` the newest text's time.
    """

    user_id: str
    items: np.ndarray  # int64 vocabulary rows (`encoders.vocab.UNKNOWN` for items the model lacks)
    actions: np.ndarray  # int64 indices into `encoders.vocab.ACTIONS`
    ts: np.ndarray  # int64 ms
    keys: np.ndarray  # uint64, unique per event
    total: int
    session_start: int = 0  # index of the current session's first event
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
        # Items share few distinct category mixes (ML-1M: 301 for 3,706 items): the lift is computed
        # per mix and then spread to the items, not per item.
        self._mixes, self._item_mix = np.unique(self.shares, axis=0, return_inverse=True)
        self._item_mix = self._item_mix.reshape(-1)
        self._mix_baseline = self._mixes @ self.catalogue_mix
        self._mix_known = self._mixes.sum(1) > 0

    def __bool__(self) -> bool:
        return bool(self.names)

    def distribution(self, rows: np.ndarray, ts: np.ndarray, half_life_ms: float) -> dict[str, float]:
        """`category_distribution` of a history given as vocabulary rows, largest share first."""
        if not self.names or not len(rows):
            return {}
        mass = decay_weights(ts, half_life_ms) @ self.shares[np.asarray(rows)].astype(np.float64)
        total = float(mass.sum())
        if not total:
            return {}
        order = sorted(np.flatnonzero(mass).tolist(), key=lambda j: (-mass[j], self.names[j]))
        return {self.names[j]: float(mass[j] / total) for j in order}

    def lift(self, distributions: Sequence[Mapping[str, float]]) -> np.ndarray:
        """[B, n_items] log lift of each item's categories for each user (0 where unknown)."""
        user_mix = np.zeros((len(distributions), len(self.names)), dtype=np.float32)
        for row, dist in enumerate(distributions):
            for cat, share in dist.items():
                if cat in self._column:
                    user_mix[row, self._column[cat]] = share
        lift = np.log((user_mix @ self._mixes.T + _EPS) / (self._mix_baseline[None, :] + _EPS)).astype(np.float32)
        lift[:, ~self._mix_known] = 0.0
        lift[np.asarray([not d for d in distributions], dtype=bool)] = 0.0
        return lift[:, self._item_mix]
