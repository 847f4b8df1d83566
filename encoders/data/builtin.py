"""The built-in datasets: ML-1M (SASRec's preprocessing), MovieLens latest-small, a synthetic stream.

Every source is turned into the records of `encoders.data.records`.  This
module imports neither torch nor numpy, so the CLI can load datasets cheaply.
"""

from __future__ import annotations

import csv
import gzip
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import DataFormatError
from .records import Catalogue, Dataset, Event

__all__ = ["load_ml1m", "load_movielens_small", "rating_action", "synthetic", "SYNTHETIC_START_MS"]

# 2026-01-01T00:00:00Z, the synthetic stream's first day.
SYNTHETIC_START_MS = 1_767_225_600_000

_CATEGORY_NAMES = (
    "jazz", "rock", "pop", "classical", "hiphop", "country", "blues", "metal",
    "folk", "reggae", "soul", "punk", "techno", "opera", "indie", "ambient",
)


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    return path


# ---------------------------------------------------------------- ML-1M
def load_ml1m(folder: str | Path) -> Dataset:
    """Load the SASRec-preprocessed MovieLens-1M folder.

    ``sequences.txt.gz`` has one ``user item`` line per action, chronological
    per user, but no timestamps: ``ts`` is the per-user order index * 1000,
    so every gap is one "second" and the time embedding carries no signal.

    >>> ds = load_ml1m("../shared/data/ml-1m")  # doctest: +SKIP
    >>> len(ds.clicks)  # doctest: +SKIP
    999611
    """
    folder = Path(folder)
    path = _require(folder / "sequences.txt.gz")
    clicks: list[Event] = []
    counters: dict[str, int] = defaultdict(int)
    with _open_text(path) as fh:
        for line_no, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataFormatError(path, f"expected 'user item', got {line.strip()!r}", line_no)
            user, item = parts
            clicks.append(Event(user, item, counters[user] * 1000))
            counters[user] += 1
    return Dataset(folder.name, clicks, [], _ml1m_catalogue(folder / "items.tsv"))


def _ml1m_catalogue(path: Path) -> Catalogue:
    titles: dict[str, str] = {}
    categories: dict[str, tuple[str, ...]] = {}
    if not path.is_file():  # the catalogue is optional for training
        return Catalogue(titles, categories)
    with _open_text(path) as fh:
        next(fh, None)  # header
        for line_no, line in enumerate(fh, 2):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 4:
                raise DataFormatError(path, f"expected 4 tab-separated fields, got {line.strip()!r}", line_no)
            item, _movie, title, genres = parts
            titles[item] = title
            categories[item] = tuple(g for g in genres.split("|") if g)
    return Catalogue(titles, categories)


# ------------------------------------------------------ MovieLens latest-small
def rating_action(rating: float) -> str:
    """Action of a rating: >= 4 "buy", >= 3 "click", else "view"."""
    # A rating is all we know of intent: treat high ratings as the strongest action.
    if rating >= 4.0:
        return "buy"
    if rating >= 3.0:
        return "click"
    return "view"


def _csv_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DataFormatError(path, f"missing columns {missing}, header is {reader.fieldnames}", 1)
        for row in reader:
            yield reader.line_num, row


def _ratings(path: Path) -> list[Event]:
    events: list[Event] = []
    for line_no, row in _csv_rows(path, ("userId", "movieId", "rating", "timestamp")):
        try:
            rating, seconds = float(row["rating"]), int(row["timestamp"])
        except ValueError:
            bad = f"{row['rating']!r}/{row['timestamp']!r}"
            raise DataFormatError(path, f"bad rating/timestamp {bad}", line_no) from None
        events.append(Event(row["userId"], row["movieId"], seconds * 1000, rating_action(rating)))
    return events


def _tags(path: Path) -> list[Event]:
    events: list[Event] = []
    if not path.is_file():  # tags are optional
        return events
    for line_no, row in _csv_rows(path, ("userId", "movieId", "tag", "timestamp")):
        try:
            ts = int(row["timestamp"]) * 1000
        except ValueError:
            raise DataFormatError(path, f"bad timestamp {row['timestamp']!r}", line_no) from None
        events.append(Event(row["userId"], row["movieId"], ts, "comment", row["tag"], "comment"))
    return events


def _movies(path: Path) -> Catalogue:
    titles: dict[str, str] = {}
    categories: dict[str, tuple[str, ...]] = {}
    if not path.is_file():
        return Catalogue(titles, categories)
    for _line_no, row in _csv_rows(path, ("movieId", "title", "genres")):
        titles[row["movieId"]] = row["title"]
        # MovieLens spells "no genre" as a pseudo-genre; keep it out of the categories.
        categories[row["movieId"]] = tuple(
            g for g in row["genres"].split("|") if g and g != "(no genres listed)"
        )
    return Catalogue(titles, categories)


def load_movielens_small(folder: str | Path) -> Dataset:
    """Load MovieLens latest-small: ratings as clicks, tags as comment texts.

    The action comes from the rating (>= 4 "buy", >= 3 "click", else "view");
    timestamps are converted from seconds to milliseconds.
    """
    folder = Path(folder)
    ratings = folder / "ratings.csv.gz"
    if not ratings.is_file():
        ratings = _require(folder / "ratings.csv")
    return Dataset(folder.name, _ratings(ratings), _tags(folder / "tags.csv"), _movies(folder / "movies.csv"))


# ---------------------------------------------------------------- synthetic
@dataclass(frozen=True)
class _World:
    categories: tuple[str, ...]
    items_by_category: tuple[tuple[str, ...], ...]
    weights_by_category: tuple[tuple[float, ...], ...]


def _world(n_items: int, n_categories: int, rng: random.Random) -> tuple[_World, Catalogue]:
    names = tuple(
        _CATEGORY_NAMES[c] if c < len(_CATEGORY_NAMES) else f"genre{c}" for c in range(n_categories)
    )
    members: list[list[str]] = [[] for _ in names]
    titles: dict[str, str] = {}
    categories: dict[str, tuple[str, ...]] = {}
    for i in range(n_items):
        cat = i % n_categories
        item = f"i{i}"
        members[cat].append(item)
        titles[item] = f"{names[cat]} #{len(members[cat])}"
        categories[item] = (names[cat],)
    # Zipf-like popularity inside each category, shuffled so that ids carry no rank.
    weights = []
    for items in members:
        w = [1.0 / (r + 1) ** 0.8 for r in range(len(items))]
        rng.shuffle(w)
        weights.append(tuple(w))
    world = _World(names, tuple(tuple(m) for m in members), tuple(weights))
    return world, Catalogue(titles, categories)


_ACTIONS = ("view", "click", "cart", "buy")
_ACTION_P = (0.55, 0.30, 0.10, 0.05)
_QUERIES = ("looking for {}", "best {} albums", "new {} releases", "{} recommendations")


def _user_events(
    user: str, world: _World, n_events: int, rng: random.Random, searches: bool
) -> tuple[list[Event], list[Event]]:
    n_cat = len(world.categories)
    favourites = rng.sample(range(n_cat), k=min(n_cat, rng.choice((1, 2))))
    drift_at = int(n_events * rng.uniform(0.4, 0.8))
    ts = SYNTHETIC_START_MS + rng.randrange(7 * 24 * 3600) * 1000
    clicks: list[Event] = []
    texts: list[Event] = []
    while len(clicks) < n_events:
        if len(clicks) >= drift_at and n_cat > len(favourites):
            # Interest drift: the first favourite is replaced by a new category.
            favourites[0] = rng.choice([c for c in range(n_cat) if c not in favourites])
            drift_at = n_events + 1
        # A session stays in one category, which is what the sequence model can learn.
        cat = rng.choice(favourites) if rng.random() < 0.85 else rng.randrange(n_cat)
        if searches and rng.random() < 0.3:
            query = rng.choice(_QUERIES).format(world.categories[cat])
            texts.append(Event(user, "", ts, "search", query, "search"))
            ts += rng.randint(2, 20) * 1000
        for _ in range(min(rng.randint(2, 8), n_events - len(clicks))):
            item = rng.choices(world.items_by_category[cat], world.weights_by_category[cat])[0]
            clicks.append(Event(user, item, ts, rng.choices(_ACTIONS, _ACTION_P)[0]))
            ts += rng.randint(5, 120) * 1000
        ts += rng.randint(1 * 3600, 48 * 3600) * 1000  # gap between sessions
    return clicks, texts


def synthetic(
    n_users: int = 300,
    n_items: int = 400,
    n_categories: int = 8,
    events_per_user: tuple[int, int] = (20, 60),
    seed: int = 0,
) -> Dataset:
    """A seeded synthetic click/search stream with drifting interests.

    Items belong to named categories ("rock #17"); each user likes 1-2
    categories, one of which drifts to another partway through; sessions of
    2-8 events stay in one category and are separated by hours; about 30% of
    users type searches naming the session's category.

    >>> ds = synthetic(n_users=10, seed=1)
    >>> sorted({e.kind for e in ds.texts}) in ([], ["search"])
    True
    """
    rng = random.Random(seed)
    world, catalogue = _world(n_items, n_categories, rng)
    clicks: list[Event] = []
    texts: list[Event] = []
    for u in range(n_users):
        n_events = rng.randint(*events_per_user)
        c, t = _user_events(f"u{u}", world, n_events, rng, searches=rng.random() < 0.3)
        clicks.extend(c)
        texts.extend(t)
    return Dataset("synthetic", clicks, texts, catalogue)
