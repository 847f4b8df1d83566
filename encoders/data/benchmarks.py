"""The files public recommendation benchmarks ship, read as they come.

``movielens-dat``   MovieLens 1M/10M ``ratings.dat``: ``user::item::rating::ts``
                    (seconds), with ``movies.dat`` (``id::title::genres``,
                    Latin-1) beside it for titles and genres.
``movielens-100k``  MovieLens 100k ``u.data``: ``user item rating ts``,
                    tab-separated, no header, with ``u.item`` (``id|title|...``
                    and 19 genre flags named by ``u.genre``, Latin-1).
``recbole``         RecBole atomic files: ``<name>.inter`` (a typed header such
                    as ``user_id:token``; read by `encoders.data.formats`) and
                    the optional ``<name>.item`` catalogue read here (a title
                    field, and ``genre``/``categories`` token sequences).
``amazon``          Amazon review dumps (read by `encoders.data.formats`) and
                    the optional ``meta_<name>.jsonl[.gz]`` (or ``.json``)
                    beside them, read here: each product's title and the last
                    (finest) of its categories.
``yelp``            Yelp's reviews (read by `encoders.data.formats`) and
                    ``yelp_academic_dataset_business.json`` beside them, read
                    here: each business's name and categories.

Ratings become actions as for every MovieLens source (`rating_action`).
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from .builtin import rating_action
from .records import Catalogue, Event

__all__ = ["RECBOLE_TYPES", "catalogue_beside", "is_recbole_header", "json_objects", "movielens_100k",
           "movielens_dat", "strip_recbole_type"]

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def _latin1_lines(path: Path):
    """MovieLens ships its titles in Latin-1; ratings are ASCII either way."""
    with path.open("r", encoding="latin-1", newline="") as fh:
        for line_no, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield line_no, line


def _seconds(value: str, path: Path, line_no: int) -> int:
    try:
        return int(float(value) * 1000)
    except ValueError:
        raise DataFormatError(path, f"timestamp {value[:40]!r} is not a number of seconds", line_no) from None


def _rating(value: str, path: Path, line_no: int) -> str:
    try:
        return rating_action(float(value))
    except ValueError:
        raise DataFormatError(path, f"rating {value[:40]!r} is not a number", line_no) from None


def _ratings(path: Path, separator: str | None, expected: str) -> list[Event]:
    events: list[Event] = []
    for line_no, line in _latin1_lines(path):
        parts = line.split(separator)
        if len(parts) != 4:
            raise DataFormatError(path, f"expected {expected}, got {line[:80]!r}", line_no)
        user, item, rating, ts = parts
        events.append(Event(user.strip(), item.strip(), _seconds(ts, path, line_no), _rating(rating, path, line_no)))
    return events


# ------------------------------------------------------------ MovieLens .dat
def catalogue_beside(path: Path, fmt: str) -> Catalogue:
    """The item file a benchmark ships beside its events file, read for ``fmt``; empty when absent."""
    if fmt == "movielens-dat":
        return _movies_dat(path.with_name("movies.dat"))
    if fmt == "movielens-100k":
        return _u_item(path.with_name("u.item"), _u_genres(path.with_name("u.genre")))
    if fmt == "recbole":
        return _recbole_items(path.with_suffix(".item"))
    if fmt == "amazon":
        return _amazon_meta(path)
    if fmt == "yelp":
        return _yelp_businesses(path.with_name("yelp_academic_dataset_business.json"))
    return Catalogue({}, {})


def _amazon_meta(reviews: Path) -> Catalogue:
    """Titles and finest categories from the ``meta_`` file beside Amazon reviews (2014, 2018 or 2023 keys)."""
    stem = reviews.name.removesuffix(".gz").removesuffix(".jsonl").removesuffix(".json")
    names = [f"meta_{stem}{ext}" for ext in (".jsonl.gz", ".jsonl", ".json.gz", ".json")]
    meta = next((reviews.with_name(n) for n in names if reviews.with_name(n).is_file()), None)
    titles: dict[str, str] = {}
    categories: dict[str, tuple[str, ...]] = {}
    if meta is None:
        return Catalogue(titles, categories)
    for line_no, product in json_objects(meta):
        try:
            item = str(product.get("parent_asin") or product["asin"])
        except KeyError:
            raise DataFormatError(meta, "expected a JSON object with parent_asin (2023) or asin", line_no) from None
        if isinstance(product.get("title"), str) and product["title"].strip():
            titles[item] = product["title"].strip()
        path = product.get("categories") or product.get("category") or []  # 2023, else 2014/2018
        finest = path[-1] if isinstance(path, list) and path else product.get("main_category")
        if isinstance(finest, str) and finest.strip():
            categories[item] = (finest.strip(),)
    return Catalogue(titles, categories)


def _yelp_businesses(path: Path) -> Catalogue:
    """Names and categories (``"Pizza, Italian"``) of Yelp's businesses; empty when the file is absent."""
    titles: dict[str, str] = {}
    categories: dict[str, tuple[str, ...]] = {}
    if not path.is_file():
        return Catalogue(titles, categories)
    for line_no, business in json_objects(path):
        item = business.get("business_id")
        if not isinstance(item, str) or not item:
            raise DataFormatError(path, "expected a JSON object with business_id", line_no)
        if isinstance(business.get("name"), str) and business["name"].strip():
            titles[item] = business["name"].strip()
        if isinstance(business.get("categories"), str):
            categories[item] = tuple(c.strip() for c in business["categories"].split(",") if c.strip())
    return Catalogue(titles, categories)


def json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSON-lines file, gzipped or not; anything else is refused."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise DataFormatError(path, f"invalid JSON ({exc.args[0][:60]})", line_no) from None
            if not isinstance(obj, dict):
                raise DataFormatError(path, f"expected a JSON object, got {type(obj).__name__}", line_no)
            yield line_no, obj


def movielens_dat(path: Path) -> list[Event]:
    """``ratings.dat``: ``user::item::rating::timestamp`` lines."""
    return _ratings(path, "::", "'user::item::rating::timestamp'")


def _movies_dat(path: Path) -> Catalogue:
    titles: dict[str, str] = {}
    categories: dict[str, tuple[str, ...]] = {}
    if not path.is_file():
        return Catalogue(titles, categories)
    for line_no, line in _latin1_lines(path):
        parts = line.split("::")
        if len(parts) != 3:
            raise DataFormatError(path, f"expected 'item::title::genre|genre', got {line[:80]!r}", line_no)
        item, title, genres = parts
        titles[item] = title
        categories[item] = tuple(g for g in genres.split("|") if g and g != "(no genres listed)")
    return Catalogue(titles, categories)


# ------------------------------------------------------------ MovieLens 100k
def movielens_100k(path: Path) -> list[Event]:
    """``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp`` lines."""
    return _ratings(path, "\t", "'user<TAB>item<TAB>rating<TAB>timestamp'")


def _u_genres(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line.split("|")[0] for _no, line in _latin1_lines(path)]


def _u_item(path: Path, genres: list[str]) -> Catalogue:
    titles: dict[str, str] = {}
    categories: dict[str, tuple[str, ...]] = {}
    if not path.is_file():
        return Catalogue(titles, categories)
    for line_no, line in _latin1_lines(path):
        parts = line.split("|")
        if len(parts) < 2:
            raise DataFormatError(path, f"expected 'item|title|...|genre flags', got {line[:80]!r}", line_no)
        titles[parts[0]] = parts[1]
        flags = parts[-len(genres):] if genres and len(parts) >= 2 + len(genres) else []
        categories[parts[0]] = tuple(g for g, flag in zip(genres, flags) if flag == "1" and g != "unknown")
    return Catalogue(titles, categories)


# ------------------------------------------------------------ RecBole
def strip_recbole_type(name: str) -> str:
    """``user_id:token`` -> ``user_id``; other names are returned unchanged."""
    base, _, kind = name.rpartition(":")
    return base if base and kind in RECBOLE_TYPES else name


def is_recbole_header(fields: list[str]) -> bool:
    return any(strip_recbole_type(f) != f for f in fields)


def _recbole_items(path: Path) -> Catalogue:
    """A RecBole ``.item`` file: titles and categories, where it has them."""
    titles: dict[str, str] = {}
    categories: dict[str, tuple[str, ...]] = {}
    if not path.is_file():
        return Catalogue(titles, categories)
    with path.open("r", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [strip_recbole_type(h) for h in next(reader, [])]
        item = _first(header, ("item_id", "itemid", "item"))
        if item is None:
            raise DataFormatError(path, f"no item_id field in the header {header}", 1)
        title = _first(header, ("title", "movie_title", "name", "item_name"))
        category = _first(header, ("categories", "genre", "genres", "category", "class"))
        for row in reader:
            if len(row) <= item:
                continue
            if title is not None and len(row) > title and row[title]:
                titles[row[item]] = row[title]
            if category is not None and len(row) > category:
                categories[row[item]] = tuple(row[category].split())
    return Catalogue(titles, categories)


def _first(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.lower() for h in header]
    return next((lowered.index(n) for n in names if n in lowered), None)
