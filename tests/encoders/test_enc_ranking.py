"""One ranking rule: the worker's `recommend` and `evaluate` rank ML-1M alike.

A small encoder is trained for real on a few hundred ML-1M users; each
leave-one-out test case is then ranked twice, by the worker's path (events as
``(item, action, ts)`` tuples through `InterestEncoder.recommend`, behaviour
only, seen items excluded) and by the evaluation's (`top_cases` over the
model scorer, the lists `evaluate`'s metrics count), and the top-10 lists
must be identical, case by case.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from encoders.data import Dataset, Event
from encoders.evaluation.evaluate import evaluate, model_scorer, top_cases
from encoders.inference import InterestEncoder
from encoders.interests import BlendWeights, UserEvents, behaviour_events
from encoders.protocols import make_split
from encoders.vocab import UNKNOWN_ITEM

USERS = 300
K = 10


@pytest.fixture(scope="module")
def ml1m_users(ml1m: Dataset) -> Dataset:
    """Every 20th ML-1M user (short and long histories alike), with the catalogue."""
    sequences = ml1m.sequences()
    keep = set(sorted(sequences, key=int)[:: len(sequences) // USERS][:USERS])
    clicks = [e for e in ml1m.clicks if e.user_id in keep]
    return Dataset("ml-1m-slice", clicks, [], ml1m.catalogue)


@pytest.fixture(scope="module")
def encoder(ml1m_users: Dataset, tmp_path_factory) -> InterestEncoder:
    from encoders.training.train import train

    # max_len 50 < most histories: both paths must cut to the last 50 events alike.
    path = train(ml1m_users, tmp_path_factory.mktemp("ckpt") / "ml1m-slice", d_model=32, n_layers=1, n_heads=2,
                 max_len=50, epochs=1, progress=False, device="cpu")
    return InterestEncoder.from_checkpoint(path, device="cpu")


def _tuples(events: list[Event]) -> list[tuple[str, str, int]]:
    return [(e.item_id, e.action, e.ts) for e in events]


def _worker_inputs(dataset: Dataset) -> list[UserEvents]:
    """Each test case as the worker sees the user: the history before the held-out last event.

    Users come in `make_split`'s order (the dataset's, those with 3+ events).
    ML-1M's events are one second apart, so the worker's session rule
    (`state.sessions`, 30 minutes of inactivity) keeps the whole history.
    """
    histories = [_tuples(events[:-1]) for events in dataset.sequences().values() if len(events) >= 3]
    return [UserEvents(history, session=history) for history in histories]


def test_the_worker_and_evaluate_give_identical_top_10_lists_on_ml1m(
    encoder: InterestEncoder, ml1m_users: Dataset
) -> None:
    cases = make_split(ml1m_users, encoder.vocab, "leave-one-out").test
    users = _worker_inputs(ml1m_users)
    assert len(users) == len(cases) > 250

    served = encoder.recommend(users, BlendWeights(), k=K, exclude_seen=True)
    worker = [[encoder.vocab.index(item) for item, _ in rec.items] for rec in served]
    offline = top_cases(model_scorer(encoder.model), cases, k=K, exclude_history=True)
    differ = [row for row, (w, o) in enumerate(zip(worker, offline)) if w != o]
    assert not differ, f"{len(differ)} of {len(cases)} cases differ, first: {worker[differ[0]]} vs {offline[differ[0]]}"
    assert all(len(top) == K for top in worker)
    assert not any(set(top) & set(case.items) for top, case in zip(worker, cases.inputs))  # seen items stay out
    assert len({tuple(top) for top in worker}) > len(worker) // 2  # lists that depend on the user

    # The figure `evaluate` reports is the one these lists give.
    figures = evaluate(encoder, ml1m_users, device="cpu")
    ranks = [top.index(target) if target in top else None for top, target in zip(worker, cases.targets)]
    assert figures["cases"] == len(cases)
    assert figures["hr@10"] == sum(r is not None for r in ranks) / len(cases)
    assert figures["ndcg@10"] == pytest.approx(sum(1 / math.log2(r + 2) for r in ranks if r is not None)
                                               / len(cases), abs=1e-12)

    # Sensitivity: keeping seen items changes the worker's lists, so equality above is not vacuous.
    kept = encoder.recommend(users, BlendWeights(), k=K, exclude_seen=False)
    assert any([encoder.vocab.index(i) for i, _ in rec.items] != top for rec, top in zip(kept, offline))


def test_recommend_is_the_documented_blend_and_a_text_only_user_gets_the_stand_in(
    encoder: InterestEncoder, ml1m_users: Dataset
) -> None:
    users = _worker_inputs(ml1m_users)[:20]
    users = [UserEvents(u.clicks, session=u.clicks[-5:]) for u in users]
    users.append(UserEvents([], texts=[(np.zeros(384, np.float32), 5_000)]))  # no clicks (and no fusion here)
    weights = BlendWeights(current=1.0, long_term=0.5, session=0.25, categories=0.1)
    recs = encoder.recommend(users, weights, k=K)

    found = encoder.interests(users)
    assert [r.items for r in recs] == encoder.rank(found, weights, k=K)
    # score = w_c current + w_l long_term + w_s session against the items, + w_cat * category lift.
    encoded = encoder.encode_interests([u.clicks or behaviour_events([], u.texts) for u in users])
    session = encoder.encode_interests([u.session or behaviour_events([], u.texts) for u in users])
    query = weights.query(encoded.current, encoded.long_term, session.current)
    assert encoder.categories and any(r.categories for r in recs)
    bias = weights.categories * encoder.categories.lift([r.categories for r in recs])
    expected = encoder.top_k(query, K, [{c[0] for c in u.clicks} for u in users], bias)
    assert [[i for i, _ in r.items] for r in recs] == [[i for i, _ in row] for row in expected]
    np.testing.assert_allclose(np.stack([r.current for r in recs]), encoded.current, atol=1e-6)

    stand_in = encoder.encode([[(UNKNOWN_ITEM, "search", 0)]])[0]
    np.testing.assert_allclose(recs[-1].current, stand_in, atol=1e-6)
    assert recs[-1].categories == {} and len(recs[-1].items) == K

