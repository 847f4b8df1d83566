"""Event-log files of common shapes, read into one canonical `Dataset`.

Formats (``--format``, sniffed from the file when "auto"):

``lines``     ``user item [timestamp]`` per line, whitespace-separated, no
              header; without timestamps each user's lines are in order.
``lines-per-user``  ``user item item item ...``: one line per user, items in
              order (the S3Rec / ICLRec / DuoRec family's files).
``csv``       comma- or tab-separated with a header naming user, item and,
              optionally, timestamp, rating and action columns (common names
              are recognised: userId, user_id, movieId, item_id, asin, ...;
              others are named with ``Columns``).
``headerless``  comma-, tab- or space-separated without a header; columns by
              field number, counted from 1 (``Columns(user="1", item="2")``);
              by default user 1, item 2, then timestamp 3 for three fields or
              rating 3 and timestamp 4 for four or more (``u.data``, Amazon's
              ratings-only CSVs).
``recbole``   RecBole ``.inter`` files: tab-separated with a typed header
              (``user_id:token  item_id:token  rating:float  timestamp:float``);
              the ``.item`` file beside it gives titles and categories.
``movielens-dat``, ``movielens-100k``  ``ratings.dat`` (``::``-separated) and
              ``u.data``, with their movie files (see `encoders.data.benchmarks`).
``sessions``  ``SessionId ItemId Time`` (session-rec's layout, tab-separated
              with a header): each session is a sequence; a test file of the
              same layout (``test``, or ``test.tsv[.gz]`` beside ``train``)
              holds the held-out sessions.
``jsonl``     one JSON object a line in the product's own event schema
              (``streams/schemas``): clicks have user_id, item_id, ts (ms) and
              action; lines with ``text`` and ``kind`` are text events.
``otto``      OTTO sessions: ``{"session": N, "events": [{"aid", "ts", "type"}]}``.
``amazon``    Amazon review dumps: reviewerID, asin, unixReviewTime, summary,
              reviewText (2014, 2018) or user_id, parent_asin, timestamp,
              title, text (2023); each review is a "buy" click plus a
              "review" text event; titles and categories from the
              ``meta_<name>.jsonl`` file beside it.
``yelp``      the Yelp Open Dataset's reviews (``yelp_academic_dataset_review.json``:
              user_id, business_id, date, text), read like Amazon's; names and
              categories from ``yelp_academic_dataset_business.json`` beside it.
``checkins``  check-in text files as published, tab-separated without a
              header: SNAP's Gowalla and Brightkite (user, ISO time, latitude,
              longitude, place) and TSMC2014's Foursquare NYC and Tokyo
              (user, venue, category id, category, latitude, longitude,
              time-zone offset, time like ``Tue Apr 03 18:00:09 +0000 2012``);
              the place and offset become the click's context.

Timestamps: numbers below 1e11 are seconds (fractions allowed), larger ones
milliseconds; other strings are read as ISO 8601 or as TSMC2014's (Twitter's)
``Tue Apr 03 18:00:09 +0000 2012``.  Ratings map to actions as
in MovieLens (>= 4 "buy", >= 3 "click", else "view").  A file that does not
fit its format raises `DataFormatError` naming the file, the line and what
was expected.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from ..errors import DataFormatError
from .benchmarks import (
    catalogue_beside,
    is_recbole_header,
    json_objects,
    movielens_100k,
    movielens_dat,
    strip_recbole_type,
)
from .builtin import load_ml1m, load_movielens_small, rating_action, synthetic
from .records import Catalogue, Dataset, Event, EventContext

__all__ = ["FORMATS", "Columns", "load_dataset", "parse_ts", "sniff_format"]

log = logging.getLogger("interest_updater.data")

FORMATS = ("auto", "lines", "lines-per-user", "csv", "headerless", "recbole", "sessions", "jsonl", "otto",
           "amazon", "yelp", "checkins", "movielens-dat", "movielens-100k", "ml-1m", "movielens")
FOLDER_FORMATS = ("ml-1m", "movielens")  # these read a folder, never a file
_SNIFF_LINES = 50

# Column names recognised without flags, compared lower-case with "_", "-" and spaces removed.
_KNOWN_COLUMNS = {
    "user": ("userid", "user", "uid", "reviewerid", "visitorid", "customerid", "sessionid", "session"),
    "item": ("itemid", "item", "movieid", "productid", "parentasin", "asin", "aid", "articleid", "iid", "poiid",
             "stanpoiid", "placeid", "venueid", "locationid", "businessid", "bookid", "trackid", "songid", "animeid",
             "recipeid", "newsid", "videoid", "gameid", "courseid", "artistid"),
    "time": ("timestamp", "time", "ts", "datetime", "date", "eventtime", "unixreviewtime", "utctime", "utctimestamp",
             "checkintime"),
    "rating": ("rating", "overall", "score", "stars"),
    "action": ("action", "event", "eventtype", "type"),
}
# An optional column naming each item's categories ("|" between several), recognised by name only.
_CATEGORY_COLUMNS = ("category", "categories", "categoryname", "genre", "genres", "venuecategory",
                     "venuecategoryname", "maincategory")
# Optional context columns, recognised by name only (the event's `EventContext`).
_CONTEXT_COLUMNS = {
    "lat": ("latitude", "lat"),
    "lon": ("longitude", "lon", "lng"),
    "tz_offset_min": ("timezoneoffset", "tzoffsetmin", "tzoffset", "utcoffset"),
    "device": ("device", "devicetype", "platform"),
    "region": ("region", "country", "city"),
}
SECONDS_BELOW = 1e11  # a timestamp under this is seconds (1e11 s is the year 5138), else ms
_DATE_FORMATS = ("%a %b %d %H:%M:%S %z %Y",)  # besides ISO 8601: TSMC2014's check-in times (Twitter's created_at)
# Check-in files as published (tab-separated, no header): field indexes from 0, by the number of fields.
_CHECKIN_LAYOUTS = {
    5: {"user": 0, "time": 1, "lat": 2, "lon": 3, "item": 4},  # SNAP's Gowalla, Brightkite
    8: {"user": 0, "item": 1, "category": 3, "lat": 4, "lon": 5, "tz_offset_min": 6, "time": 7},  # TSMC2014
}
_CHECKINS_EXPECTED = ("tab-separated 'user, ISO time, latitude, longitude, place' (Gowalla, Brightkite) or 'user, "
                      "venue, category id, category, latitude, longitude, time-zone offset, time' (TSMC2014)")


@dataclass(frozen=True)
class Columns:
    """Column names of a CSV/TSV log, for headers the loader does not recognise."""

    user: str | None = None
    item: str | None = None
    time: str | None = None
    rating: str | None = None
    action: str | None = None


def _open(path: Path, errors: str = "strict") -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors=errors, newline="")
    return path.open("r", encoding="utf-8", errors=errors, newline="")


def _first_lines(path: Path, count: int = 1) -> list[str]:
    """Up to ``count`` non-blank lines from the top of the file, stripped (bytes that are not UTF-8 replaced:
    the shape is what counts here; the format's reader decides what it accepts)."""
    lines: list[str] = []
    try:
        with _open(path, errors="replace") as fh:
            for line in fh:
                if line.strip():
                    lines.append(line.strip())
                    if len(lines) == count:
                        break
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataFormatError(path, f"cannot read as UTF-8 text ({exc})") from None
    return lines


def _first_line(path: Path) -> str:
    lines = _first_lines(path)
    return lines[0] if lines else ""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


def sniff_format(path: str | Path) -> str:
    """The format of a file, guessed from its first non-blank lines."""
    path = Path(path)
    lines = _first_lines(path, _SNIFF_LINES)
    if not lines:
        raise DataFormatError(path, "empty file: expected events")
    line = lines[0]
    if path.name == "u.data":
        return "movielens-100k"  # headerless too, but with u.item and u.genre beside it
    if line.startswith("{"):
        try:
            keys = set(json.loads(line))
        except ValueError:
            raise DataFormatError(path, "first line starts with '{' but is not JSON", 1) from None
        if {"session", "events"} <= keys:
            return "otto"
        if {"reviewerID", "asin"} <= keys or {"user_id", "parent_asin"} <= keys:  # 2014/2018 or 2023 reviews
            return "amazon"
        if {"review_id", "user_id", "business_id"} <= keys:
            return "yelp"
        return "jsonl"
    if "::" in line:
        return "movielens-dat"
    delimited = "\t" in line or "," in line
    fields = re.split(r"[\t,]", line) if delimited else line.split()
    if delimited and is_recbole_header(fields):
        return "recbole"
    if "\t" in line and _checkin_layout(line.split("\t")) is not None:
        return "checkins"
    names = {_norm(f) for f in fields}
    known = {alias for aliases in _KNOWN_COLUMNS.values() for alias in aliases}
    if names & {"sessionid"} and not names & {"userid", "user"}:
        return "sessions"
    if names & known:
        return "csv"
    if delimited:
        # Headers hold names, not numbers: a first line with a number in it is data.
        return "headerless" if any(_is_number(f) for f in fields) else "csv"
    counts = {len(l.split()) for l in lines}
    if max(counts) > 4 or len(counts) > 1 and max(counts) > 3:
        return "lines-per-user"  # lines of different lengths beyond 'user item ts': item lists
    return "headerless" if counts == {4} else "lines"


def parse_ts(value: Any, path: Path, line: int) -> int:
    """Milliseconds since the epoch of a seconds/ms number or an ISO 8601 string."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        text = str(value).strip()
        try:
            number = float(text)
        except ValueError:
            parsed = _parse_date(text)
            if parsed is None:
                raise DataFormatError(path, f"timestamp {text[:40]!r} is neither a number, ISO 8601 nor like "
                                            "'Tue Apr 03 18:00:09 +0000 2012'", line) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return int(parsed.timestamp() * 1000)
    return int(round(number * 1000)) if abs(number) < SECONDS_BELOW else int(number)


def _parse_date(text: str) -> datetime | None:
    """An ISO 8601 or `_DATE_FORMATS` date, or None."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            pass
    return None


def _is_date(text: str) -> bool:
    return not _is_number(text) and _parse_date(text.strip()) is not None


# ------------------------------------------------------------------ lines
def _split_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of each non-blank line."""
    with _open(path) as fh:
        for line_no, line in enumerate(fh, 1):
            parts = line.split()
            if parts:
                yield line_no, parts


def _lines(path: Path) -> list[Event]:
    events: list[Event] = []
    order: dict[str, int] = defaultdict(int)
    for line_no, parts in _split_lines(path):
        if len(parts) not in (2, 3):
            hint = " (one line per user with all its items: --format lines-per-user)" if len(parts) > 3 else ""
            raise DataFormatError(path, f"expected 'user item [timestamp]', got {' '.join(parts)[:80]!r}{hint}",
                                  line_no)
        user, item = parts[0], parts[1]
        # No timestamp: the per-user order index, one "second" apart (as for ML-1M).
        ts = parse_ts(parts[2], path, line_no) if len(parts) == 3 else order[user] * 1000
        order[user] += 1
        events.append(Event(user, item, ts))
    return events


def _lines_per_user(path: Path) -> list[Event]:
    events: list[Event] = []
    order: dict[str, int] = defaultdict(int)
    for line_no, parts in _split_lines(path):
        if len(parts) < 2:
            raise DataFormatError(path, f"expected 'user item item ...', got {' '.join(parts)[:80]!r}", line_no)
        user = parts[0]
        for item in parts[1:]:
            events.append(Event(user, item, order[user] * 1000))  # order index: no timestamps
            order[user] += 1
    return events


# ------------------------------------------------------------------ CSV / TSV
def _resolve_columns(path: Path, header: list[str], given: Columns) -> dict[str, str | None]:
    by_norm = {_norm(h): h for h in header}
    chosen: dict[str, str | None] = {}
    for role, aliases in _KNOWN_COLUMNS.items():
        name = getattr(given, role)
        if name is not None:
            if name not in header:
                raise DataFormatError(path, f"--{role}-col {name!r} is not in the header {header}", 1)
            chosen[role] = name
        else:
            chosen[role] = next((by_norm[a] for a in aliases if a in by_norm), None)
    for role in ("user", "item"):
        if chosen[role] is None:
            raise DataFormatError(path, f"no {role} column in header {header}; name it with --{role}-col "
                                        "(or --format headerless if the first line is data)", 1)
    for role, aliases in _CONTEXT_COLUMNS.items():
        chosen[role] = next((by_norm[a] for a in aliases if a in by_norm), None)
    if (chosen["lat"] is None) != (chosen["lon"] is None):
        chosen["lat"] = chosen["lon"] = None  # a place needs both
    return chosen


def _rows(path: Path) -> Iterator[tuple[int, list[str], list[str]]]:
    """(line number, header, row) of a comma- or tab-separated file with a header."""
    delimiter = "\t" if "\t" in _first_line(path) else ","
    with _open(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = [strip_recbole_type(h) for h in next(reader, None) or []]
        for row in reader:
            if row:
                yield reader.line_num, header, row


def _headerless_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    first = _first_line(path)
    delimiter = "\t" if "\t" in first else "," if "," in first else None
    if delimiter is None:
        yield from _split_lines(path)
        return
    with _open(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        for row in reader:
            if row:
                yield reader.line_num, row


def _positions(path: Path, width: int, given: Columns) -> dict[str, int | None]:
    """Column indexes of a headerless file: the field numbers given (from 1), or the defaults."""
    default = {"user": 1, "item": 2, "time": 3 if width == 3 else 4 if width >= 4 else None,
               "rating": 3 if width >= 4 else None, "action": None}
    chosen: dict[str, int | None] = {}
    for role, number in default.items():
        name = getattr(given, role)
        if name is not None:
            if not name.isdigit() or not 1 <= int(name) <= width:
                raise DataFormatError(path, f"--{role}-col {name!r}: a file without a header needs a field "
                                            f"number from 1 to {width}", 1)
            number = int(name)
        chosen[role] = None if number is None else number - 1
    if chosen["user"] == chosen["item"]:
        raise DataFormatError(path, f"user and item are both field {chosen['user'] + 1}", 1)
    return chosen


def _headerless(path: Path, given: Columns) -> list[Event]:
    events: list[Event] = []
    order: dict[str, int] = defaultdict(int)
    cols: dict[str, int | None] | None = None
    width = 0
    for line_no, row in _headerless_rows(path):
        if cols is None:
            width = len(row)
            if width < 2:
                raise DataFormatError(path, f"expected at least 'user item' fields, got {row}", line_no)
            cols = _positions(path, width, given)
            if _is_date(row[cols["item"]]):  # e.g. a check-in file read with the default fields
                raise DataFormatError(path, f"field {cols['item'] + 1} ({row[cols['item']]!r}) is a time, not an "
                                            "item: choose the fields with --user-col, --item-col and --time-col",
                                      line_no)
        if len(row) != width:
            raise DataFormatError(path, f"expected {width} fields like the first line, got {len(row)}", line_no)
        user, item = row[cols["user"]], row[cols["item"]]
        ts = parse_ts(row[cols["time"]], path, line_no) if cols["time"] is not None else order[user] * 1000
        order[user] += 1
        events.append(Event(user, item, ts, _action(row, cols, path, line_no)))
    return events


def _delimited(path: Path, given: Columns) -> list[Event]:
    events: list[Event] = []
    order: dict[str, int] = defaultdict(int)
    cols: dict[str, int | None] | None = None
    for line_no, header, row in _rows(path):
        if cols is None:
            names = _resolve_columns(path, header, given)
            cols = {role: (header.index(n) if n is not None else None) for role, n in names.items()}
        if len(row) != len(header):
            raise DataFormatError(path, f"expected {len(header)} fields ({', '.join(header)}), got {len(row)}",
                                  line_no)
        user, item = row[cols["user"]], row[cols["item"]]
        ts = parse_ts(row[cols["time"]], path, line_no) if cols["time"] is not None else order[user] * 1000
        order[user] += 1
        events.append(Event(user, item, ts, _action(row, cols, path, line_no),
                            context=_row_context(row, cols, path, line_no)))
    return events


def _csv_categories(path: Path, given: Columns) -> Catalogue:
    """Each item's categories from the CSV's category column (`_CATEGORY_COLUMNS`), its first non-empty value."""
    categories: dict[str, tuple[str, ...]] = {}
    item = category = None
    for _line_no, header, row in _rows(path):
        if category is None:
            by_norm = {_norm(h): i for i, h in enumerate(header)}
            category = next((by_norm[a] for a in _CATEGORY_COLUMNS if a in by_norm), None)
            if category is None:
                break
            item = header.index(_resolve_columns(path, header, given)["item"])
        names = tuple(c.strip() for c in row[category].split("|") if c.strip())
        if names:
            categories.setdefault(row[item], names)
    return Catalogue({}, categories)


def _row_context(row: list[str], cols: dict[str, int | None], path: Path, line_no: int) -> EventContext | None:
    """The event's context from the optional context columns; None when the file has none or the row is empty."""
    found: dict[str, Any] = {}
    for role, kind, bound in (("lat", float, 90), ("lon", float, 180), ("tz_offset_min", int, 840)):
        text = row[cols[role]].strip() if cols.get(role) is not None else ""
        if text:
            try:
                value = kind(float(text))
            except ValueError:
                raise DataFormatError(path, f"{role} must be a number, got {text!r}", line_no) from None
            if not -bound <= value <= bound:
                raise DataFormatError(path, f"{role} must be within [-{bound}, {bound}], got {text!r}", line_no)
            found[role] = value
    for role in ("device", "region"):
        text = row[cols[role]].strip() if cols.get(role) is not None else ""
        if text:
            found[role] = text
    return _event_context(found)


def _event_context(found: dict[str, Any]) -> EventContext | None:
    """The context of the fields a row gave; a latitude without a longitude (or the reverse) is no place."""
    if ("lat" in found) != ("lon" in found):
        found.pop("lat", None), found.pop("lon", None)
    return EventContext(**found) if found else None


def _action(row: list[str], cols: dict[str, int | None], path: Path, line_no: int) -> str:
    if cols["action"] is not None:
        return row[cols["action"]].strip().lower() or "click"
    if cols["rating"] is not None:
        try:
            return rating_action(float(row[cols["rating"]]))
        except ValueError:
            raise DataFormatError(path, f"rating {row[cols['rating']]!r} is not a number", line_no) from None
    return "click"


# ------------------------------------------------------------------ check-ins
def _checkin_layout(fields: list[str]) -> dict[str, int] | None:
    """The `_CHECKIN_LAYOUTS` entry these fields fit (coordinates are numbers, the time a date), or None."""
    layout = _CHECKIN_LAYOUTS.get(len(fields))
    if layout is None or not (_is_number(fields[layout["lat"]]) and _is_number(fields[layout["lon"]])):
        return None
    return layout if _is_date(fields[layout["time"]]) else None


def _checkin_rows(path: Path) -> Iterator[tuple[int, list[str], dict[str, int]]]:
    """(line number, fields, layout) of each check-in; category names may be Latin-1 (TSMC2014's are)."""
    layout: dict[str, int] | None = None
    width = 0
    with _open(path, errors="replace") as fh:
        for line_no, line in enumerate(fh, 1):
            row = line.rstrip("\r\n").split("\t")
            if row == [""]:
                continue
            if layout is None:
                layout, width = _checkin_layout(row), len(row)
                if layout is None:
                    raise DataFormatError(path, f"expected {_CHECKINS_EXPECTED}, got {line.strip()[:80]!r}", line_no)
            if len(row) != width:
                raise DataFormatError(path, f"expected {width} tab-separated fields like the first line, got "
                                            f"{len(row)}", line_no)
            yield line_no, row, layout


def _checkins(path: Path) -> list[Event]:
    """Every check-in with a user and a place; those without are counted in a warning (Brightkite has some)."""
    events: list[Event] = []
    placeless = 0
    for line_no, row, layout in _checkin_rows(path):
        user, item = row[layout["user"]].strip(), row[layout["item"]].strip()
        if not user or not item:
            placeless += 1
            continue
        events.append(Event(user, item, parse_ts(row[layout["time"]], path, line_no), "click",
                            context=_checkin_context(row, layout)))
    if placeless:
        log.warning("%s: skipped %d check-ins without a user or a place id", path, placeless)
    return events


def _checkin_context(row: list[str], layout: dict[str, int]) -> EventContext | None:
    """The place and offset of a check-in; coordinates out of range or at (0, 0) (Brightkite's "unknown") are none."""
    found: dict[str, Any] = {}
    try:
        lat, lon = float(row[layout["lat"]]), float(row[layout["lon"]])
        if -90 <= lat <= 90 and -180 <= lon <= 180 and (lat, lon) != (0.0, 0.0):
            found.update(lat=lat, lon=lon)
    except ValueError:
        pass
    if "tz_offset_min" in layout:
        try:
            offset = int(float(row[layout["tz_offset_min"]]))
            if -840 <= offset <= 840:
                found["tz_offset_min"] = offset
        except ValueError:
            pass
    return _event_context(found)


def _checkin_categories(path: Path) -> Catalogue:
    """Each venue's category where the layout names one (TSMC2014), else nothing."""
    categories: dict[str, tuple[str, ...]] = {}
    for _line_no, row, layout in _checkin_rows(path):
        if "category" not in layout:
            break
        if row[layout["category"]].strip():
            categories.setdefault(row[layout["item"]], (row[layout["category"]].strip(),))
    return Catalogue({}, categories)


# ------------------------------------------------------------------ JSON lines
def _field(obj: dict[str, Any], key: str, path: Path, line_no: int, expected: str) -> Any:
    if key not in obj or obj[key] in (None, ""):
        raise DataFormatError(path, f"missing {key!r}: expected {expected}", line_no)
    return obj[key]


def _json_context(found: Any, path: Path, line_no: int) -> EventContext | None:
    """A click's ``context`` object (the documented keys of `streams/schemas/click.schema.json`)."""
    if not isinstance(found, dict):
        return None
    kept: dict[str, Any] = {}
    for key, kind in (("lat", float), ("lon", float), ("tz_offset_min", int)):
        value = found.get(key)
        if value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise DataFormatError(path, f"context.{key} must be a number, got {value!r}", line_no)
            kept[key] = kind(value)
    for key in ("device", "region"):
        if isinstance(found.get(key), str) and found[key]:
            kept[key] = found[key]
    return _event_context(kept)


def _product_events(path: Path) -> tuple[list[Event], list[Event]]:
    clicks: list[Event] = []
    texts: list[Event] = []
    expected = "click events {user_id, item_id, action, ts} or text events {user_id, kind, text, ts}"
    for line_no, obj in json_objects(path):
        user = str(_field(obj, "user_id", path, line_no, expected))
        ts = parse_ts(_field(obj, "ts", path, line_no, expected), path, line_no)
        if "text" in obj and "kind" in obj:
            kind = str(obj["kind"])
            texts.append(Event(user, str(obj.get("item_id") or ""), ts, kind, str(obj["text"]), kind))
        else:
            item = str(_field(obj, "item_id", path, line_no, expected))
            clicks.append(Event(user, item, ts, str(obj.get("action") or "click"),
                                context=_json_context(obj.get("context"), path, line_no)))
    return clicks, texts


def _otto(path: Path) -> list[Event]:
    clicks: list[Event] = []
    expected = '{"session": N, "events": [{"aid": item, "ts": ms, "type": ...}]}'
    for line_no, obj in json_objects(path):
        session = str(_field(obj, "session", path, line_no, expected))
        events = _field(obj, "events", path, line_no, expected)
        if not isinstance(events, list):
            raise DataFormatError(path, f"'events' must be a list: expected {expected}", line_no)
        for ev in events:
            if not isinstance(ev, dict) or "aid" not in ev or "ts" not in ev:
                raise DataFormatError(path, f"event {str(ev)[:60]} lacks aid/ts: expected {expected}", line_no)
            clicks.append(Event(session, str(ev["aid"]), parse_ts(ev["ts"], path, line_no), str(ev.get("type") or "click")))
    return clicks


# (user, item, time, texts) keys of review dumps, by source and release (Amazon 2023's lines have user_id)
_REVIEW_KEYS = {"amazon 2014/2018": ("reviewerID", "asin", "unixReviewTime", ("summary", "reviewText")),
                "amazon 2023": ("user_id", "parent_asin", "timestamp", ("title", "text")),
                "yelp": ("user_id", "business_id", "date", ("text",))}
_REVIEWS_EXPECTED = {
    "amazon": ("Amazon reviews {reviewerID, asin, unixReviewTime, summary, reviewText} (2014, 2018) or "
               "{user_id, parent_asin, timestamp, title, text} (2023)"),
    "yelp": "Yelp reviews {user_id, business_id, date, text}",
}


def _reviews(path: Path, fmt: str) -> tuple[list[Event], list[Event]]:
    """Amazon's or Yelp's reviews: each a "buy" click and a "review" text about the same item."""
    clicks: list[Event] = []
    texts: list[Event] = []
    expected = _REVIEWS_EXPECTED[fmt]
    for line_no, obj in json_objects(path):
        release = "yelp" if fmt == "yelp" else "amazon 2023" if "user_id" in obj else "amazon 2014/2018"
        user_key, item_key, time_key, text_keys = _REVIEW_KEYS[release]
        user = str(_field(obj, user_key, path, line_no, expected))
        item = str(_field(obj, item_key, path, line_no, expected))
        ts = parse_ts(_field(obj, time_key, path, line_no, expected), path, line_no)
        clicks.append(Event(user, item, ts, "buy"))
        text = " ".join(str(obj.get(k) or "") for k in text_keys).strip()
        if text:
            texts.append(Event(user, item, ts, "review", text, "review"))
    return clicks, texts


# ------------------------------------------------------------------ dispatch
def _read(path: Path, fmt: str, columns: Columns) -> tuple[list[Event], list[Event]]:
    """(clicks, texts) of one file in ``fmt``."""
    if fmt == "lines":
        return _lines(path), []
    if fmt == "lines-per-user":
        return _lines_per_user(path), []
    if fmt == "headerless":
        return _headerless(path, columns), []
    if fmt in ("csv", "sessions", "recbole"):
        return _delimited(path, columns), []
    if fmt == "movielens-dat":
        return movielens_dat(path), []
    if fmt == "movielens-100k":
        return movielens_100k(path), []
    if fmt == "jsonl":
        return _product_events(path)
    if fmt == "otto":
        return _otto(path), []
    if fmt in ("amazon", "yelp"):
        return _reviews(path, fmt)
    if fmt == "checkins":
        return _checkins(path), []
    raise DataFormatError(path, f"format {fmt!r} reads a folder; for a file use one of "
                                f"{', '.join(f for f in FORMATS[1:] if f not in FOLDER_FORMATS)}")


_FOLDER_FILES = (  # (file names tried in order, format)
    (("ratings.dat",), "movielens-dat"),
    (("u.data",), "movielens-100k"),
    (("train.tsv.gz", "train.tsv", "train.csv.gz", "train.csv"), "sessions"),
    (("reviews.jsonl.gz", "reviews.jsonl"), "amazon"),
    (("train.jsonl.gz", "train.jsonl"), "auto"),
    (("events.jsonl.gz", "events.jsonl"), "auto"),
)


_DATA_FILE = re.compile(r".+\.(csv|tsv|txt|dat|jsonl)(\.gz)?")


def _folder(folder: Path, fmt: str, columns: Columns, test: Path | None) -> Dataset:
    if fmt in ("auto", "ml-1m") and (folder / "sequences.txt.gz").is_file():
        return load_ml1m(folder)
    if fmt in ("auto", "movielens") and any((folder / f).is_file() for f in ("ratings.csv.gz", "ratings.csv")):
        return load_movielens_small(folder)
    for names, folder_fmt in _FOLDER_FILES:
        found = next((folder / n for n in names if (folder / n).is_file()), None)
        if found is not None:
            if test is None and found.name.startswith("train."):
                beside = found.with_name("test." + found.name.split(".", 1)[1])
                test = beside if beside.is_file() else None
            return _file(found, fmt if fmt != "auto" else folder_fmt, columns, test, name=folder.name)
    inters = sorted(folder.glob("*.inter"))
    if len(inters) == 1:
        return _file(inters[0], fmt if fmt != "auto" else "recbole", columns, test, name=folder.name)
    data_files = [f for f in sorted(folder.iterdir()) if f.is_file() and _DATA_FILE.fullmatch(f.name.lower())
                  and not f.name.startswith("meta_")]  # Amazon's item files lie beside its reviews
    if len(data_files) == 1:  # e.g. foursquare-nyc/checkins.csv.gz beside its README
        return _file(data_files[0], fmt, columns, test, name=folder.name)
    raise DataFormatError(folder, "expected a folder with sequences.txt.gz (ML-1M), ratings.csv[.gz] "
                                  "(MovieLens), ratings.dat (MovieLens 1M/10M), u.data (MovieLens 100k), "
                                  "one <name>.inter (RecBole), train.tsv[.gz] (sessions), reviews.jsonl[.gz] "
                                  "(Amazon), train.jsonl / events.jsonl, or a single .csv/.tsv/.txt/.jsonl "
                                  f"file (found {len(data_files)}); or give a file")


def _read_utf8(path: Path, fmt: str, columns: Columns) -> tuple[list[Event], list[Event]]:
    """`_read`, with a file that is not UTF-8 named in one line rather than a traceback."""
    try:
        return _read(path, fmt, columns)
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, f"not UTF-8 text (byte {exc.object[exc.start]:#04x}: {exc.reason}); "
                                    "re-encode it as UTF-8") from None


def _file(path: Path, fmt: str, columns: Columns, test: Path | None, name: str | None = None) -> Dataset:
    if fmt == "auto":
        fmt = sniff_format(path)
    clicks, texts = _read_utf8(path, fmt, columns)
    if not clicks:
        raise DataFormatError(path, f"no click events found (read as {fmt})")
    test_clicks = _read_utf8(test, fmt, columns)[0] if test else []
    return Dataset(name or path.name.split(".")[0], clicks, texts, _catalogue(path, fmt, columns), test_clicks)


def _catalogue(path: Path, fmt: str, columns: Columns) -> Catalogue:
    """Items' titles and categories: from the events file itself (check-ins, a CSV's category column) or beside it."""
    if fmt == "checkins":
        return _checkin_categories(path)
    if fmt == "csv":
        return _csv_categories(path, columns)
    return catalogue_beside(path, fmt)


def load_dataset(
    path_or_name: str | Path, fmt: str = "auto", columns: Columns | None = None, test: str | Path | None = None
) -> Dataset:
    """Load ``"synthetic"``, a dataset folder or an event-log file into a `Dataset`.

    ``test`` names a held-out test file (session data); a folder's
    ``test.tsv[.gz]`` beside its ``train.tsv[.gz]`` is found on its own.

    >>> load_dataset("../shared/data/yoochoose-100k").test_clicks[:1]  # doctest: +SKIP
    [Event(user_id='1', item_id='214536502', ts=1396860669277, action='click', ...)]
    """
    if fmt not in FORMATS:
        raise DataFormatError(path_or_name, f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if str(path_or_name) == "synthetic":
        return synthetic()
    path = Path(path_or_name)
    test_path = Path(test) if test is not None else None
    if test_path is not None and not test_path.is_file():
        raise DataFormatError(test_path, "test file not found")
    if path.is_dir():
        return _folder(path, fmt, columns or Columns(), test_path)
    if not path.is_file():
        raise DataFormatError(path, "no such file or folder (expected an event log, or 'synthetic')")
    if fmt in FOLDER_FORMATS:
        raise DataFormatError(path, f"format {fmt!r} reads a folder, not a file")
    return _file(path, fmt, columns or Columns(), test_path)
