"""Event-log formats: each read into the canonical Dataset; bad files get one clear line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from encoders.errors import DataFormatError
from encoders.data import Columns, load_dataset, parse_ts, sniff_format
from encoders.data.records import EventContext


def _write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_plain_lines_keep_file_order_per_user(tmp_path: Path) -> None:
    log = load_dataset(_write(tmp_path / "log.txt", "u1 a\nu2 b\nu1 c\n\nu1 a\n"))
    assert sniff_format(tmp_path / "log.txt") == "lines"
    assert [e.item_id for e in log.sequences()["u1"]] == ["a", "c", "a"]
    assert [e.ts for e in log.sequences()["u1"]] == [0, 1000, 2000]


def test_lines_with_timestamps_are_sorted_by_time(tmp_path: Path) -> None:
    log = load_dataset(_write(tmp_path / "log.txt.gz", "u1 a 1700000300\nu1 b 1700000100\n"))
    assert [(e.item_id, e.ts) for e in log.sequences()["u1"]] == [("b", 1_700_000_100_000), ("a", 1_700_000_300_000)]


def test_csv_with_known_header_and_ratings(tmp_path: Path) -> None:
    text = "userId,movieId,rating,timestamp\n1,10,4.5,1000000000\n1,11,2.0,999999999\n"
    log = load_dataset(_write(tmp_path / "r.csv", text))
    assert [(e.item_id, e.action) for e in log.sequences()["1"]] == [("11", "view"), ("10", "buy")]


def test_tsv_with_named_columns_and_iso_times(tmp_path: Path) -> None:
    text = "who\twhat\twhen\tkind\nann\tx\t2024-01-02T00:00:00Z\tCart\nann\ty\t2024-01-01T00:00:00\tview\n"
    log = load_dataset(_write(tmp_path / "e.tsv", text), columns=Columns(user="who", item="what", time="when",
                                                                          action="kind"))
    assert [(e.item_id, e.action) for e in log.sequences()["ann"]] == [("y", "view"), ("x", "cart")]
    with pytest.raises(DataFormatError, match=r"e.tsv:1: no user column in header \['who'"):
        load_dataset(tmp_path / "e.tsv")


def test_product_schema_jsonl_with_texts(tmp_path: Path) -> None:
    lines = [{"event_id": "1", "user_id": "u", "item_id": "i1", "action": "buy", "ts": 1_700_000_000_000},
             {"event_id": "2", "user_id": "u", "kind": "search", "text": "red shoes", "ts": 1_700_000_001_000}]
    log = load_dataset(_write(tmp_path / "events.jsonl", "\n".join(json.dumps(x) for x in lines)))
    assert [(e.item_id, e.action, e.ts) for e in log.clicks] == [("i1", "buy", 1_700_000_000_000)]
    assert [(e.kind, e.text) for e in log.texts] == [("search", "red shoes")]


def test_session_folder_finds_its_test_file(shared_folder) -> None:
    log = load_dataset(shared_folder("yoochoose-100k"))
    assert (len(log.clicks), len(log.test_clicks), len(log.sequences())) == (70_278, 13_568, 17_794)
    assert log.sequences()["3"][0].ts == 1_396_437_466_940  # seconds with ms precision


def test_otto_and_amazon(shared_folder) -> None:
    otto = load_dataset(shared_folder("otto-sample"))
    assert len(otto.clicks) == 862 and {e.action for e in otto.clicks} == {"clicks", "carts", "orders"}
    amazon = load_dataset(shared_folder("amazon-musical-instruments"))
    assert (len(amazon.clicks), len(amazon.texts), len(amazon.sequences())) == (10_261, 10_261, 1_429)
    assert amazon.texts[0].kind == "review" and amazon.texts[0].item_id == amazon.clicks[0].item_id


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("bad.txt", "u1 a\nu1\n", r"bad.txt:2: expected 'user item \[timestamp\]', got 'u1'$"),
        ("bad.dat", "1::2::5::978300760\n1::2::3\n", r"bad.dat:2: expected 'user::item::rating::timestamp'"),
        ("wide.tsv", "1\t2\t3\n1\t2\n", r"wide.tsv:2: expected 3 fields like the first line, got 2"),
        ("typed.inter", "user_id:token\trating:float\n1\t4\n", r"typed.inter:1: no item column in header"),
        ("bad.csv", "user,item,ts\nu,i,yesterday\n", r"bad.csv:2: timestamp 'yesterday' is neither"),
        ("short.csv", "user,item,ts\nu,i\n", r"short.csv:2: expected 3 fields"),
        ("bad.jsonl", '{"user_id": "u", "item_id": "i", "ts": 1}\n{"user_id": \n', r"bad.jsonl:2: invalid JSON"),
        ("nouser.jsonl", '{"item_id": "i", "ts": 1}\n', r"nouser.jsonl:1: missing 'user_id'"),
        ("empty.txt", "\n\n", r"empty.txt: empty file"),
    ],
)
def test_errors_name_file_line_and_expectation(tmp_path: Path, name: str, text: str, error: str) -> None:
    with pytest.raises(DataFormatError, match=error):
        load_dataset(_write(tmp_path / name, text))


def test_a_folder_with_one_data_file_reads_it_and_check_in_columns_are_known(tmp_path: Path) -> None:
    """The Foursquare check-in layout: place ids and UTC times under their own names, a README beside."""
    folder = tmp_path / "checkins"
    folder.mkdir()
    (folder / "README.md").write_text("# check-ins\n")
    _write(folder / "checkins.csv.gz", "user_id,venue_id,stan_poi_id,latitude,longitude,utc_time\n"
                                       "1,4d4a,3601,40.78,-73.97,2012-04-07 17:42:29+00:00\n"
                                       "1,,3788,40.73,-73.99,2012-04-07 16:00:00+00:00\n")
    log = load_dataset(folder)
    assert log.name == "checkins"
    assert [(e.item_id, e.ts) for e in log.sequences()["1"]] == [("3788", 1333814400000), ("3601", 1333820549000)]
    assert log.sequences()["1"][1].context == EventContext(lat=40.78, lon=-73.97)  # context columns are read
    _write(folder / "more.csv", "user,item\n1,2\n")
    with pytest.raises(DataFormatError, match=r"a single .csv/.tsv/.txt/.jsonl file \(found 2\)"):
        load_dataset(folder)


def test_context_columns_and_the_product_schemas_context_are_read_and_bad_values_named(tmp_path: Path) -> None:
    text = "user,item,timestamp,latitude,longitude,timezone_offset,device\n1,a,5,40.7,-74.0,-240,phone\n1,b,6,,,,\n"
    a, b = load_dataset(_write(tmp_path / "c.csv", text)).sequences()["1"]
    assert a.context == EventContext(device="phone", lat=40.7, lon=-74.0, tz_offset_min=-240) and b.context is None
    _write(tmp_path / "bad.csv", "user,item,timestamp,latitude,longitude\n1,a,5,91.5,-74.0\n")
    with pytest.raises(DataFormatError, match=r"bad.csv:2: lat must be within \[-90, 90\], got '91.5'"):
        load_dataset(tmp_path / "bad.csv")
    line = {"user_id": "u", "item_id": "i", "action": "view", "ts": 5, "context": {"region": "US", "lat": 1}}
    (event,) = load_dataset(_write(tmp_path / "e.jsonl", json.dumps(line) + "\n")).clicks
    assert event.context == EventContext(region="US")  # a latitude without a longitude is no place


def test_folder_and_format_errors(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="expected a folder with sequences.txt.gz"):
        load_dataset(tmp_path)
    with pytest.raises(DataFormatError, match="no such file or folder"):
        load_dataset(tmp_path / "missing.csv")
    with pytest.raises(DataFormatError, match="unknown format 'parquet'"):
        load_dataset(tmp_path, fmt="parquet")


def test_timestamp_units() -> None:
    here = Path("x")
    assert parse_ts("1396437466.94", here, 1) == 1_396_437_466_940
    assert parse_ts(1_659_304_800_025, here, 1) == 1_659_304_800_025
    assert parse_ts("1970-01-01T00:00:01Z", here, 1) == 1000
    assert parse_ts("Thu Jan 01 01:00:01 +0100 1970", here, 1) == 1000  # TSMC2014's (Twitter's) form


def test_cli_prints_one_line_for_a_bad_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    _write(tmp_path / "bad.txt", "just-one-field\n")
    out = subprocess.run([sys.executable, "-m", "streams", "train", "--data", str(tmp_path / "bad.txt"),
                          "--out", str(tmp_path / "ckpt")], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"interest-updater: error: {tmp_path / 'bad.txt'}:1: expected 'user item [timestamp]', got 'just-one-field'"]


def test_lines_per_user_are_sniffed_and_kept_in_order(tmp_path: Path) -> None:
    path = _write(tmp_path / "Beauty.txt", "1 10 11 12\n2 11 13\n1 14\n")
    assert sniff_format(path) == "lines-per-user"
    log = load_dataset(path)
    assert [e.item_id for e in log.sequences()["1"]] == ["10", "11", "12", "14"]
    assert [e.ts for e in log.sequences()["2"]] == [0, 1000]
    with pytest.raises(DataFormatError, match="got '1 10 11 12' \\(one line per user with all its items"):
        load_dataset(path, fmt="lines")


def test_movielens_dat_folder_with_latin1_titles(tmp_path: Path) -> None:
    _write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::2::978298413\n")
    (tmp_path / "movies.dat").write_bytes("1193::Am\xe9lie (2001)::Comedy|Romance\n661::Heat (1995)::Action\n"
                                          .encode("latin-1"))
    assert sniff_format(tmp_path / "ratings.dat") == "movielens-dat"
    log = load_dataset(tmp_path)
    assert [(e.item_id, e.action, e.ts) for e in log.sequences()["1"]] == [("1193", "buy", 978_300_760_000),
                                                                          ("661", "click", 978_302_109_000)]
    assert log.catalogue.titles["1193"] == "Am\xe9lie (2001)"
    assert log.catalogue.categories["1193"] == ("Comedy", "Romance")


def test_movielens_100k_folder_and_its_u_data_file(tmp_path: Path) -> None:
    _write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t5\t881250950\n")
    _write(tmp_path / "u.genre", "unknown|0\nAction|1\nComedy|2\n")
    _write(tmp_path / "u.item", "242|Kolya (1996)|24-Jan-1997||http://x|0|0|1\n302|L.A. Confidential|01-Jan-1997||"
                                "http://y|0|1|0\n")
    log = load_dataset(tmp_path)
    assert sniff_format(tmp_path / "u.data") == "movielens-100k"
    assert [(e.item_id, e.action) for e in log.sequences()["196"]] == [("242", "click"), ("302", "buy")]
    assert log.catalogue.titles["242"] == "Kolya (1996)" and log.catalogue.categories["302"] == ("Action",)
    renamed = _write(tmp_path / "ratings.tsv", (tmp_path / "u.data").read_text())
    assert sniff_format(renamed) == "headerless"  # the same columns by position: rating 3, timestamp 4
    assert [(e.item_id, e.ts) for e in load_dataset(renamed).sequences()["196"]] == [("242", 881_250_949_000),
                                                                                    ("302", 881_250_950_000)]


def test_headerless_csv_with_columns_by_field_number(tmp_path: Path) -> None:
    path = _write(tmp_path / "ratings_Beauty.csv", "A39HTATAQ9V7YF,0205616461,5.0,1369699200\n"
                                                   "A3JM6GV9MNOF9X,0558925278,3.0,1355443200\n")
    assert sniff_format(path) == "headerless"
    log = load_dataset(path)
    assert [(e.item_id, e.action, e.ts) for e in log.sequences()["A39HTATAQ9V7YF"]] == [
        ("0205616461", "buy", 1_369_699_200_000)]
    swapped = load_dataset(path, columns=Columns(user="2", item="1", rating="3", time="4"))
    assert set(swapped.sequences()) == {"0205616461", "0558925278"}
    with pytest.raises(DataFormatError, match=r"ratings_Beauty.csv:1: --user-col 'reviewer': a file without a "
                                              r"header needs a field number from 1 to 4"):
        load_dataset(path, columns=Columns(user="reviewer"))


def test_recbole_atomic_files(tmp_path: Path) -> None:
    _write(tmp_path / "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                       "196\t242\t3\t881250949\n196\t302\t5\t881250950\n")
    _write(tmp_path / "ml-100k.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                      "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir\n")
    assert sniff_format(tmp_path / "ml-100k.inter") == "recbole"
    log = load_dataset(tmp_path)
    assert [(e.item_id, e.action) for e in log.sequences()["196"]] == [("242", "click"), ("302", "buy")]
    assert log.catalogue.titles["302"] == "L.A. Confidential"
    assert log.catalogue.categories["302"] == ("Crime", "Film-Noir")


def test_amazon_2023_reviews_with_their_meta_file_in_a_folder(tmp_path: Path) -> None:
    """McAuley Lab's 2023 release as published: <Category>.jsonl and meta_<Category>.jsonl side by side."""
    review = {"rating": 5.0, "title": "Great", "text": "Loved it", "images": [], "asin": "B01X",
              "parent_asin": "B01", "user_id": "AG1", "timestamp": 1588687728923, "verified_purchase": True}
    later = {**review, "title": "Fine", "text": "ok", "asin": "B02", "parent_asin": "B02", "timestamp": 1588687729923}
    _write(tmp_path / "All_Beauty.jsonl", "\n".join(json.dumps(r) for r in (later, review)) + "\n")
    _write(tmp_path / "meta_All_Beauty.jsonl", "\n".join(json.dumps(m) for m in (
        {"main_category": "All Beauty", "title": "Leather Conditioner", "categories": [], "parent_asin": "B01"},
        {"main_category": "All Beauty", "title": "Tomato Mask", "categories": ["Beauty", "Skin Care", "Masks"],
         "parent_asin": "B02"})) + "\n")
    assert sniff_format(tmp_path / "All_Beauty.jsonl") == "amazon"
    log = load_dataset(tmp_path)  # the meta file beside it is not a second data file
    assert [(e.item_id, e.action, e.ts) for e in log.sequences()["AG1"]] == [
        ("B01", "buy", 1588687728923), ("B02", "buy", 1588687729923)]  # parent_asin, the benchmark's item
    assert [(t.item_id, t.kind, t.text) for t in log.texts] == [("B02", "review", "Fine ok"),
                                                                ("B01", "review", "Great Loved it")]
    assert log.catalogue.titles == {"B01": "Leather Conditioner", "B02": "Tomato Mask"}
    assert log.catalogue.categories == {"B01": ("All Beauty",), "B02": ("Masks",)}  # the finest category
    _write(tmp_path / "meta_All_Beauty.jsonl", '{"title": "no id"}\n')
    with pytest.raises(DataFormatError, match=r"meta_All_Beauty.jsonl:1: expected a JSON object with parent_asin"):
        load_dataset(tmp_path)
    _write(tmp_path / "All_Beauty.jsonl", json.dumps({k: v for k, v in review.items() if k != "timestamp"}))
    with pytest.raises(DataFormatError, match=r"All_Beauty.jsonl:1: missing 'timestamp': expected Amazon reviews"):
        load_dataset(tmp_path / "All_Beauty.jsonl")


def test_amazon_2023_rating_csvs_name_the_item_parent_asin(tmp_path: Path) -> None:
    path = _write(tmp_path / "All_Beauty.train.csv", "user_id,parent_asin,rating,timestamp\n"
                                                     "AG1,B01,5.0,1588687728923\nAG1,B02,2.0,1588687729923\n")
    assert [(e.item_id, e.action) for e in load_dataset(path).sequences()["AG1"]] == [("B01", "buy"), ("B02", "view")]


def test_check_in_files_as_snap_and_tsmc2014_publish_them(tmp_path: Path) -> None:
    gowalla = _write(tmp_path / "loc-gowalla_totalCheckins.txt.gz",
                     "0\t2010-10-19T23:55:27Z\t30.2359091167\t-97.7951395833\t22847\n"
                     "0\t2010-10-18T22:17:43Z\t30.2691029532\t-97.7493953705\t420315\n"
                     "1\t2010-10-17T23:42:03Z\t0.0\t0.0\t316637\n"  # Brightkite's (0, 0): no place known
                     "1\t2010-10-17T19:26:05Z\t91.5\t-97.75\t\n")  # no place id: skipped, counted in a warning
    assert sniff_format(gowalla) == "checkins"
    log = load_dataset(gowalla)
    assert [(e.item_id, e.ts, e.action) for e in log.sequences()["0"]] == [
        ("420315", 1287440263000, "click"), ("22847", 1287532527000, "click")]
    assert log.sequences()["0"][0].context == EventContext(lat=30.2691029532, lon=-97.7493953705)
    assert [(e.item_id, e.context) for e in log.sequences()["1"]] == [("316637", None)]
    tsmc = _write(tmp_path / "dataset_TSMC2014_NYC.txt",
                  "470\t49bbd6c0f964a520f4531fe3\t4bf58dd8d48988d127951735\tArts & Crafts Store\t40.7198\t-74.0025"
                  "\t-240\tTue Apr 03 18:00:09 +0000 2012\n"
                  "470\t4c5cc7b485a1e21e00d35711\t4bf58dd8d48988d103941735\tCaf\xe9\t40.7161\t-73.8830"
                  "\t-240\tTue Apr 03 18:02:24 +0000 2012\n")
    tsmc.write_bytes(tsmc.read_text(encoding="utf-8").encode("latin-1"))  # as published: Latin-1
    log = load_dataset(tsmc)
    first, second = log.sequences()["470"]
    assert (first.ts, first.context) == (1333476009000, EventContext(lat=40.7198, lon=-74.0025, tz_offset_min=-240))
    assert log.catalogue.categories["49bbd6c0f964a520f4531fe3"] == ("Arts & Crafts Store",)
    assert log.catalogue.categories[second.item_id] == ("Caf\ufffd",)  # an unreadable byte, not a failure
    _write(tsmc, "470\tvenue\tcat\tCafe\t40.7\t-74.0\t-240\tTue Apr 03 18:00:09 +0000 2012\n470\tvenue\n")
    with pytest.raises(DataFormatError, match=r"dataset_TSMC2014_NYC.txt:2: expected 8 tab-separated fields like "
                                              r"the first line, got 2"):
        load_dataset(tsmc)
    with pytest.raises(DataFormatError, match=r"u.tsv:1: expected tab-separated 'user, ISO time, latitude"):
        load_dataset(_write(tmp_path / "u.tsv", "1\t2\t3\n"), fmt="checkins")


def test_a_headerless_file_whose_item_field_holds_times_is_refused(tmp_path: Path) -> None:
    """Read with the default fields (user 1, item 2), a check-in CSV would make every time an item."""
    path = _write(tmp_path / "visits.csv", "0,2010-10-19T23:55:27Z,30.23,-97.79,22847\n")
    with pytest.raises(DataFormatError, match=r"visits.csv:1: field 2 \('2010-10-19T23:55:27Z'\) is a time, not an "
                                              r"item: choose the fields with --user-col, --item-col and --time-col"):
        load_dataset(path)
    log = load_dataset(path, columns=Columns(item="5", time="2", rating="3"))
    assert [e.item_id for e in log.clicks] == ["22847"]


def test_a_file_that_is_not_utf8_gets_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("user,item\nu,Caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"latin1.csv: not UTF-8 text \(byte 0xe9: .*\); re-encode it as UTF-8"):
        load_dataset(path)
    good = _write(tmp_path / "train.csv", "user,item\nu,cafe\n")
    with pytest.raises(DataFormatError, match=r"latin1.csv: not UTF-8 text"):  # a held-out test file too
        load_dataset(good, test=path)


def test_yelp_reviews_with_the_business_file_beside_them(tmp_path: Path) -> None:
    reviews = [{"review_id": "r1", "user_id": "U1", "business_id": "B2", "stars": 4.0, "text": "Good pizza",
                "date": "2018-07-07 22:09:11"},
               {"review_id": "r2", "user_id": "U1", "business_id": "B1", "stars": 2.0, "text": "Slow",
                "date": "2016-01-01 10:00:00"}]
    path = _write(tmp_path / "yelp_academic_dataset_review.json", "\n".join(json.dumps(r) for r in reviews) + "\n")
    _write(tmp_path / "yelp_academic_dataset_business.json",
           json.dumps({"business_id": "B2", "name": "Luigi's", "categories": "Pizza, Italian"}) + "\n"
           + json.dumps({"business_id": "B1", "name": "Quick Stop", "categories": None}) + "\n")
    assert sniff_format(path) == "yelp"
    log = load_dataset(path)
    assert [(e.item_id, e.action, e.ts) for e in log.sequences()["U1"]] == [("B1", "buy", 1451642400000),
                                                                            ("B2", "buy", 1531001351000)]
    assert sorted((t.item_id, t.text) for t in log.texts) == [("B1", "Slow"), ("B2", "Good pizza")]
    assert log.catalogue.titles == {"B2": "Luigi's", "B1": "Quick Stop"}
    assert log.catalogue.categories == {"B2": ("Pizza", "Italian")}
    _write(path, json.dumps({k: v for k, v in reviews[0].items() if k != "date"}) + "\n")
    with pytest.raises(DataFormatError, match=r"review.json:1: missing 'date': expected Yelp reviews"):
        load_dataset(path)


@pytest.mark.parametrize("item_column", ["book_id", "business_id", "anime_id", "track_id"])
def test_common_item_column_names_need_no_flag(tmp_path: Path, item_column: str) -> None:
    """Goodreads', Yelp's, the anime and music sets' CSVs as published."""
    path = _write(tmp_path / "interactions.csv", f"user_id,{item_column},rating\nu,i1,5\nu,i2,1\n")
    assert [(e.item_id, e.action) for e in load_dataset(path).sequences()["u"]] == [("i1", "buy"), ("i2", "view")]


def test_a_csv_category_column_gives_the_items_categories(tmp_path: Path) -> None:
    """TSMC2014's Kaggle CSV names each venue's category in every row; genres may be '|'-separated."""
    path = _write(tmp_path / "tsmc.csv", "userId,venueId,venueCategory,latitude,longitude,utcTimestamp\n"
                                         "470,v1,Arts & Crafts Store,40.7,-74.0,Tue Apr 03 18:00:09 +0000 2012\n"
                                         "470,v2,,40.6,-74.0,Tue Apr 03 18:00:25 +0000 2012\n")
    log = load_dataset(path)
    assert [e.ts for e in log.sequences()["470"]] == [1333476009000, 1333476025000]  # utcTimestamp is a time
    assert log.catalogue.categories == {"v1": ("Arts & Crafts Store",)}
    films = load_dataset(_write(tmp_path / "films.csv", "user,item,genres\nu,a,Comedy|Drama\nu,b,\n"))
    assert films.catalogue.categories == {"a": ("Comedy", "Drama")}
