"""Large catalogues: the index's candidates, re-ranked by the rule, give the scan's lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.config import EncoderConfig
from encoders.inference import InterestEncoder
from encoders.interests import BlendWeights, History
from encoders.nn.model import SequenceEncoder
from encoders.vocab import ItemVocab

ITEMS = 3000
BLEND = BlendWeights(current=1.0, long_term=0.25, session=0.5, categories=0.5)


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    model = SequenceEncoder(EncoderConfig(n_items=ITEMS + 2, d_model=32, n_layers=1, n_heads=2, max_len=50)).eval()
    with torch.no_grad():
        model.item_emb.weight.normal_(0.0, 1.0)
    vocab = ItemVocab(f"i{n}" for n in range(ITEMS))
    categories = {f"i{n}": (f"c{n % 7}",) + ((f"c{n % 5}",) if n % 3 == 0 else ()) for n in range(ITEMS)}
    rng = np.random.default_rng(1)
    histories = []
    for user in range(60):
        n = int(rng.integers(1, 40))
        histories.append(History(f"u{user}", rng.integers(2, ITEMS + 2, n), rng.integers(2, 6, n),
                                 1_700_000_000_000 + np.cumsum(rng.integers(1, 10**6, n)),
                                 np.arange(n, dtype=np.uint64), total=n))
    return model, vocab, categories, histories


def _lists(encoder, histories):
    return [rec.rows for rec in encoder.recommend_histories(histories, BLEND, k=10)]


def test_candidates_from_every_list_give_the_scan_exactly(parts, tmp_path):
    model, vocab, categories, histories = parts
    scan = InterestEncoder(model, vocab, "m", categories=categories)
    every = InterestEncoder(model, vocab, "m", categories=categories, ann_above=1000, ann_candidates=ITEMS, ann_probe=ITEMS,
                            index_cache=tmp_path)
    assert scan.index is None and every.index is not None
    assert _lists(every, histories) == _lists(scan, histories)
    assert list(tmp_path.glob("ivf-m-*.faiss"))  # saved for the next start
    again = InterestEncoder(model, vocab, "m", categories=categories, ann_above=1000, ann_candidates=ITEMS, ann_probe=ITEMS,
                            index_cache=tmp_path)
    assert _lists(again, histories) == _lists(scan, histories)  # loaded from the cache


def test_a_few_hundred_candidates_find_nearly_all_of_the_scans_top_10(parts):
    model, vocab, categories, histories = parts
    scan = InterestEncoder(model, vocab, "m", categories=categories)
    ann = InterestEncoder(model, vocab, "m", categories=categories, ann_above=1000, ann_candidates=200)
    found, truth = _lists(ann, histories), _lists(scan, histories)
    recall = np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)])
    assert recall >= 0.9, recall
    seen = [set(h.items.tolist()) for h in histories]
    assert not any(set(rows) & s for rows, s in zip(found, seen))  # seen items stay out


@pytest.mark.parametrize("kind", ["scan", "ivf", "hnsw"])
def test_unavailable_items_are_never_recommended_and_come_back_when_available(parts, kind):
    model, vocab, categories, histories = parts
    options = {} if kind == "scan" else dict(ann_above=1000, ann_candidates=ITEMS, ann_probe=ITEMS, index_kind=kind)
    encoder = InterestEncoder(model, vocab, "m", categories=categories, **options)
    before = _lists(encoder, histories)
    blocked_rows = {row for rows in before[:30] for row in rows}
    blocked = {vocab.item_id(row) for row in blocked_rows} | {"not-in-the-model"}
    assert encoder.set_unavailable(blocked) == len(blocked_rows)
    during = _lists(encoder, histories)
    assert all(len(rows) == 10 and not set(rows) & blocked_rows for rows in during)
    encoder.set_unavailable(set())
    assert _lists(encoder, histories) == before


@pytest.mark.parametrize("kind", ["scan", "ivf"])
def test_new_items_are_scored_from_their_vectors_and_read_as_the_unknown_item(parts, kind):
    model, vocab, categories, histories = parts
    options = {} if kind == "scan" else dict(ann_above=1000, ann_candidates=200, index_kind=kind)
    encoder = InterestEncoder(model, vocab, "m", categories=categories, **options)
    before = encoder.recommend_histories(histories[:5], BLEND, k=10)
    # A new item with twice the vector of each user's best item outranks it for that user.
    best = [rec.rows[0] for rec in before]
    vectors = 2 * encoder._model_table[best].numpy()
    encoder.set_new_items([f"new{n}" for n in range(5)], vectors)
    assert encoder.n_rows == len(vocab) + 5 and encoder.item_id(len(vocab) + 2) == "new2"
    after = encoder.recommend_histories(histories[:5], BLEND, k=10)
    assert all(f"new{n}" in [i for i, _ in rec.items] for n, rec in enumerate(after))

    # A user who clicked a new item: the model reads it as its unknown item, the list leaves it out.
    h = histories[0]
    clicked = History(h.user_id, np.append(h.items, len(vocab)), np.append(h.actions, 3), np.append(h.ts, h.ts[-1] + 1),
                      np.append(h.keys, 10**6), total=h.total + 1)
    as_unknown = History(h.user_id, np.append(h.items, 1), clicked.actions, clicked.ts, clicked.keys, total=h.total + 1)
    [rec] = encoder.recommend_histories([clicked], BLEND, k=10)
    [same] = encoder.recommend_histories([as_unknown], BLEND, k=10)
    assert "new0" not in [i for i, _ in rec.items] and np.allclose(rec.current, same.current)

    encoder.set_unavailable({"new1"})
    assert "new1" not in [i for i, _ in encoder.recommend_histories(histories[1:2], BLEND, k=10)[0].items]
    encoder.set_new_items([], np.empty((0, model.config.d_model), np.float32))
    assert encoder.n_rows == len(vocab)
    assert [r.rows for r in encoder.recommend_histories(histories[:5], BLEND, k=10)] == [r.rows for r in before]
