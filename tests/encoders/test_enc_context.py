"""Context features: from events to columns, into a model, and a model with context served without it."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.config import EncoderConfig
from encoders.data.records import Catalogue, Dataset, Event, EventContext
from encoders.features import CONTEXT_FEATURES, cell_of, context_columns, from_events, pad_batch
from encoders.nn.model import SequenceEncoder
from encoders.vocab import ItemVocab

HOUR, DEVICE, REGION, CELL, DISTANCE = range(len(CONTEXT_FEATURES))
NYC = EventContext(device="phone", region="US-NY", lat=40.7580, lon=-73.9855, tz_offset_min=-300)  # Times Square


def _ms(*when: int) -> int:
    return int(datetime(*when, tzinfo=timezone.utc).timestamp() * 1000)


def test_columns_give_the_local_hour_of_the_week_labels_cells_and_distances():
    near = EventContext(lat=40.7484, lon=-73.9857, tz_offset_min=-300)  # the Empire State Building, 1.1 km south
    far = EventContext(lat=42.3601, lon=-71.0589, tz_offset_min=-300)  # Boston, ~300 km
    ts = [_ms(2024, 1, 1, 5, 30), _ms(2024, 1, 1, 6, 0), _ms(2024, 1, 8, 4, 59), _ms(2024, 1, 8, 6, 0)]
    cols = context_columns(ts, [NYC, near, far, None])
    # 05:30 UTC on Monday 1 January is 00:30 in New York: the first hour of the week.
    assert cols[:, HOUR].tolist() == [1, 2, 168, 0]  # 04:59 UTC on the next Monday is Sunday 23:59 there
    assert cols[0, DEVICE] > 0 and cols[0, REGION] > 0 and cols[1, DEVICE] == cols[1, REGION] == 0
    assert cols[0, CELL] == cell_of(40.7580, -73.9855) != cols[1, CELL] and cols[3].tolist() == [0] * 5
    # In 100 m steps, doubling: 1.1 km -> 1 + floor(log2(1 + 11)) = 4; 306 km -> 12; no previous place: 0.
    assert cols[:, DISTANCE].tolist() == [0, 4, 12, 0]
    assert cell_of(None, None) == 0


def test_events_with_context_carry_columns_and_batches_pad_them_with_unknown():
    vocab = ItemVocab(["a", "b"])
    with_context = from_events([Event("u", "a", 1000, context=NYC), Event("u", "b", 2000)], vocab)
    plain = from_events([Event("v", "a", 1000)], vocab)
    assert plain.context is None and with_context.context.shape == (2, len(CONTEXT_FEATURES))
    assert with_context.window(1, None).context.tolist() == [[0] * 5]
    batch = pad_batch([with_context, plain], 3)
    assert batch.context.shape == (2, 3, 5) and not batch.context[1].any()
    assert batch.context[0, 0, :DISTANCE].all() and not batch.context[0, 1:].any()  # a first event has no distance
    assert pad_batch([plain], 2).context is None


@pytest.fixture()
def model() -> SequenceEncoder:
    torch.manual_seed(0)
    return SequenceEncoder(EncoderConfig(n_items=12, d_model=16, n_layers=1, n_heads=1, max_len=8,
                                         block="sasrec", context=True)).eval()


def test_no_context_is_unknown_context_and_context_changes_the_vector(model):
    items, actions, gaps = torch.tensor([[2, 3, 4]]), torch.full((1, 3), 3), torch.tensor([[-1, 10, 10]])
    unknown = torch.zeros(1, 3, 5, dtype=torch.long)
    known = torch.from_numpy(context_columns([_ms(2024, 1, 1, 12)] * 3, [NYC] * 3))[None]
    with torch.no_grad():
        plain = model(items, actions, gaps)
        torch.testing.assert_close(plain, model(items, actions, gaps, unknown))
        assert not torch.allclose(plain, model(items, actions, gaps, known), atol=1e-4)
        # The cached inference path reads context the same way.
        cached, _ = model.encode_cached(items, actions, gaps, known)
        torch.testing.assert_close(cached, model(items, actions, gaps, known), atol=1e-5, rtol=1e-5)


def test_an_items_place_cell_joins_its_row_of_the_table(model):
    before = model.item_table().detach().clone()
    cells = torch.zeros(12, dtype=torch.long)
    cells[3] = cell_of(40.7580, -73.9855)
    model.set_item_cells(cells)
    after = model.item_table().detach()
    changed = (after - before).abs().sum(1) > 0
    assert changed.tolist() == [False] * 3 + [True] + [False] * 8  # 0 is "no cell": every row shares it
    with pytest.raises(ValueError, match="no context features"):
        SequenceEncoder(EncoderConfig(n_items=12, d_model=16)).set_item_cells(cells)


def test_a_model_reads_only_the_features_it_was_given():
    torch.manual_seed(0)
    hour_only = SequenceEncoder(EncoderConfig(n_items=12, d_model=16, n_layers=1, n_heads=1, max_len=8, block="sasrec",
                                              context=True, context_features=["hour_of_week"])).eval()
    assert hour_only.config.context_features == ("hour_of_week",)  # a JSON list becomes a tuple
    items, actions, gaps = torch.tensor([[2, 3, 4]]), torch.full((1, 3), 3), torch.tensor([[-1, 10, 10]])
    known = torch.from_numpy(context_columns([_ms(2024, 1, 1, 12)] * 3, [NYC] * 3))[None]
    other_places = known.clone()
    other_places[..., [DEVICE, REGION, CELL, DISTANCE]] = 0
    other_hours = known.clone()
    other_hours[..., HOUR] = 0
    with torch.no_grad():
        vector = hour_only(items, actions, gaps, known)
        torch.testing.assert_close(vector, hour_only(items, actions, gaps, other_places))
        assert not torch.allclose(vector, hour_only(items, actions, gaps, other_hours), atol=1e-4)
        before = hour_only.item_table().clone()
        hour_only.set_item_cells(torch.full((12,), 7))
        torch.testing.assert_close(hour_only.item_table(), before)  # no cell feature: items' cells unread
    with pytest.raises(ValueError, match=r"context_features: unknown \['hour'\]"):
        SequenceEncoder(EncoderConfig(n_items=12, context=True, context_features=("hour",)))
    with pytest.raises(ValueError, match="needs context=True"):
        EncoderConfig(n_items=12, context_features=("cell",))


PLACES = {f"p{n}": (40.70 + 0.05 * (n % 2) + 0.001 * n, -74.00 + 0.001 * n) for n in range(10)}


def _checkins(n_users: int = 40, seed: int = 0) -> Dataset:
    """Users who move between a few places in two neighbourhoods, by hour: context predicts the place."""
    rng = np.random.default_rng(seed)
    clicks = []
    for user in range(n_users):
        t = _ms(2024, 1, 1)
        for _ in range(25):
            t += int(rng.integers(1, 12)) * 3_600_000
            hour = (t // 3_600_000 - 5) % 24
            place = f"p{(2 * int(rng.integers(0, 5)) + (hour >= 12))}"
            lat, lon = PLACES[place]
            clicks.append(Event(f"u{user}", place, t, context=EventContext(lat=lat, lon=lon, tz_offset_min=-300)))
    return Dataset("checkins", clicks, [], Catalogue({}, {}))


def test_train_uses_context_when_the_clicks_have_it_and_the_worker_serves_the_model_without_it(tmp_path: Path):
    from encoders.evaluation.evaluate import baseline_metrics
    from encoders.inference import InterestEncoder
    from encoders.training.config import TrainConfig
    from encoders.training.train import train

    data = _checkins()
    out = train(data, tmp_path / "ctx", epochs=2, d_model=16, n_layers=1, n_heads=1, max_len=30, block="sasrec",
                progress=False, refit=False)
    assert json.loads((out / "config.json").read_text())["context"] is True
    worker = InterestEncoder.from_checkpoint(out, device="cpu")
    assert worker.model.item_cells[worker.vocab.index("p3")] == cell_of(*PLACES["p3"]) > 0
    vectors = worker.encode([[(e.item_id, e.action, e.ts) for e in data.sequences()["u0"][:10]]])
    assert vectors.shape == (1, 16) and np.isfinite(vectors).all()
    some = train(data, tmp_path / "some", epochs=1, d_model=16, n_layers=1, n_heads=1, max_len=30, progress=False,
                 refit=False, context="cell,hour_of_week")
    assert json.loads((some / "config.json").read_text())["context_features"] == ["hour_of_week", "cell"]
    some_model = InterestEncoder.from_checkpoint(some, device="cpu").model
    assert some_model.config.context_features == ("hour_of_week", "cell")
    assert TrainConfig.from_record(some_model.config, {}).context == "hour_of_week,cell"  # what a fine-tune trains
    off = train(data, tmp_path / "off", epochs=1, d_model=16, n_layers=1, n_heads=1, max_len=30, progress=False,
                refit=False, context="off", history="keep")
    assert json.loads((off / "config.json").read_text())["context"] is False
    report = json.loads((off / "report.json").read_text())
    assert report["train_args"]["history"] == "keep"
    # People return to places: with the history kept, a revisit can be a hit (excluded, it never is).
    assert report["baselines_test"]["most popular"]["hr@10"] > baseline_metrics(data)["most popular"]["hr@10"]


def test_most_popular_near_the_last_place_prefers_nearby_places_and_history_is_kept_when_asked():
    from encoders.evaluation.evaluate import baseline_metrics, nearby_popularity_scorer
    from encoders.features import from_events, item_places
    from encoders.protocols import make_split

    here, there = EventContext(lat=40.70, lon=-74.00), EventContext(lat=40.80, lon=-73.90)  # ~14 km apart
    clicks = [Event(f"u{n}", "far-popular", n, context=there) for n in range(5)]
    clicks += [Event("u0", "near", 10, context=EventContext(lat=40.701, lon=-74.001)),
               Event("u9", "home", 1, context=here), Event("u9", "home", 2, context=here)]
    data = Dataset("places", clicks, [], Catalogue({}, {}))
    vocab = ItemVocab.from_items(e.item_id for e in data.clicks)
    places = item_places(data.clicks, vocab)
    assert np.isnan(places[0]).all() and places[vocab.index("home")].tolist() == [40.70, -74.00]
    scores = nearby_popularity_scorer(make_split(data, vocab), places)([from_events(clicks[-1:], vocab)])[0]
    assert scores[vocab.index("near")] > scores[vocab.index("far-popular")] > 0
    assert np.isnan(item_places([Event("u", "home", 1)], vocab)).all()  # no coordinates: no place
    kept = baseline_metrics(_checkins(), exclude_history=False)
    excluded = baseline_metrics(_checkins())
    assert set(kept) == {"most popular", "item-to-item co-occurrence", "most popular near the last place"}
    assert kept["most popular"] != excluded["most popular"]  # the history rule reaches the baselines


def test_the_worker_reads_stored_context_words_as_training_reads_the_events(model):
    """A history from Redis carries one context word per click (`context_word`); a model with context encodes it
    exactly as training encodes the events, from scratch and when a cached window is extended."""
    from encoders.features import context_word, from_events
    from encoders.inference import InterestEncoder
    from encoders.interests import History

    vocab = ItemVocab([f"i{n}" for n in range(10)])
    here = EventContext(device="phone", lat=40.7580, lon=-73.9855, tz_offset_min=-300)
    there = EventContext(region="US-NY", lat=40.7000, lon=-74.0100, tz_offset_min=-300)
    events = [Event("u", f"i{n}", _ms(2024, 1, 1, n), context=(here, there, None)[n % 3]) for n in range(6)]
    seq = from_events(events, vocab)
    words = np.array([context_word(e.ts, e.context) for e in events], dtype=np.uint64)
    np.testing.assert_array_equal(context_columns([e.ts for e in events], [e.context for e in events]), seq.context)
    worker = InterestEncoder(model, vocab, cache_bytes=1 << 20)

    def history(n: int, context: np.ndarray | None) -> History:
        return History("u", seq.items[:n], seq.actions[:n], np.array([e.ts for e in events[:n]]),
                       np.arange(n, dtype=np.uint64), total=n, context=context)

    def trained(n: int) -> np.ndarray:
        with torch.no_grad():
            hidden = model(*(torch.from_numpy(a[None, :n]) for a in (seq.items, seq.actions, seq.gaps)),
                           torch.from_numpy(seq.context[None, :n]))
        return hidden[0, -1].numpy()

    scratch = worker.interests_of_histories([history(5, words[:5])]).current[0]
    np.testing.assert_allclose(scratch, trained(5), atol=1e-5)
    extended = worker.interests_of_histories([history(6, words)]).current[0]  # the cached window plus one event
    assert worker.windows.stats["extended"] == 1
    np.testing.assert_allclose(extended, trained(6), atol=1e-5)
    unknown = InterestEncoder(model, vocab).interests_of_histories([history(6, np.zeros(6, np.uint64))]).current[0]
    assert not np.allclose(unknown, extended, atol=1e-4)


def test_a_context_word_keeps_the_cell_edges_and_a_place_to_about_20_metres():
    from encoders.features import columns_of_words, context_word

    edge = EventContext(lat=40.72, lon=-73.99)
    below, above = EventContext(lat=40.71999, lon=-73.99), EventContext(lat=40.72001, lon=-73.99)
    cells = columns_of_words(np.array([context_word(0, c) for c in (below, edge, above)], np.uint64))[:, CELL]
    assert cells[0] != cells[1] == cells[2] == cell_of(40.72, -73.99)
    assert cells.tolist() == [cell_of(c.lat, c.lon) for c in (below, edge, above)]
    # 20 m apart: the first distance bucket (under 100 m); the word's step is 0.0002 degrees of latitude.
    step = columns_of_words(np.array([context_word(0, edge), context_word(0, EventContext(lat=40.7202, lon=-73.99))],
                                     np.uint64))
    assert step[:, DISTANCE].tolist() == [0, 1]
    assert context_word(0, None) == 0 and not columns_of_words(np.zeros(3, np.uint64)).any()
