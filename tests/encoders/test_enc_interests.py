"""Multi-granularity interests: decay, categories, drift, blending, and the encoder's long-term vector."""

import numpy as np
import pytest
import torch

from encoders.interests import DAY_MS, BlendWeights, CategoryIndex, category_distribution, decay_weights, drift


def test_an_event_one_half_life_old_counts_half():
    weights = decay_weights(np.array([0, 10 * DAY_MS, 20 * DAY_MS]), 10 * DAY_MS)
    assert np.allclose(weights, [0.25, 0.5, 1.0])
    assert np.allclose(decay_weights(np.array([0, 5]), 0), [1.0, 1.0])


def test_older_categories_weigh_less_in_the_distribution():
    cats = {"old": ("Drama",), "new": ("Comedy",)}
    dist = category_distribution(["old", "new"], [0, 30 * DAY_MS], cats, 30 * DAY_MS)
    assert list(dist) == ["Comedy", "Drama"]
    assert dist["Comedy"] == pytest.approx(2 / 3) and sum(dist.values()) == pytest.approx(1.0)
    assert category_distribution(["unknown"], [0], cats, DAY_MS) == {}


def test_category_lift_favours_the_users_categories_and_leaves_others_alone():
    index = CategoryIndex(["a", "b", "c"], {"a": ("Drama",), "b": ("Comedy",)})
    lift = index.lift([{"Drama": 1.0}, {}])
    drama, comedy, uncategorised = lift[0, 2], lift[0, 3], lift[0, 4]
    assert drama > 0 > comedy and uncategorised == 0.0
    assert np.all(lift[1] == 0.0) and np.all(lift[:, :2] == 0.0)  # no mix; padding and unknown rows


def test_drift_is_a_cosine_distance():
    v = np.array([1.0, 0.0], dtype=np.float32)
    assert drift(v, v) == pytest.approx(0.0)
    assert drift(v, -v) == pytest.approx(2.0)
    assert drift(v, np.array([0.0, 3.0], dtype=np.float32)) == pytest.approx(1.0)
    assert drift(None, v) is None


def test_blend_weights_parse_and_refuse_unknown_names():
    weights = BlendWeights.parse("long_term=0.5, session=0.25")
    assert (weights.current, weights.long_term, weights.session, weights.categories) == (1.0, 0.5, 0.25, 0.0)
    with pytest.raises(ValueError, match="name=number"):
        BlendWeights.parse("longterm=1")
    with pytest.raises(ValueError, match="not a number"):
        BlendWeights.parse("session=lots")


def _events(n, start=1_700_000_000_000, step=3_600_000, items=("1", "2", "3", "4")):
    return [(items[i % len(items)], "click", start + i * step) for i in range(n)]


def test_long_term_is_the_decayed_mean_of_the_encoders_states(synthetic_checkpoint):
    from encoders.features import from_tuples, pad_batch
    from encoders.inference import InterestEncoder

    half_life = 5 * 3_600_000
    encoder = InterestEncoder.from_checkpoint(synthetic_checkpoint, device="cpu", half_life_ms=half_life)
    events = _events(12)
    encoded = encoder.encode_interests([events, events[:3]])
    batch = pad_batch([from_tuples(events, encoder.vocab)], 12)
    with torch.inference_mode():
        hidden = encoder.model(*(torch.from_numpy(a) for a in (batch.items, batch.actions, batch.gaps)))[0].numpy()
    weights = decay_weights(np.array([e[2] for e in events]), half_life)
    expected = (weights[:, None] * hidden).sum(0) / weights.sum()
    assert np.allclose(encoded.long_term[0], expected, atol=1e-5)
    assert np.allclose(encoded.current[0], hidden[-1], atol=1e-5)
    # A user's interests do not depend on who shares the batch (right padding + causal attention).
    alone = encoder.encode_interests([events[:3]])
    assert np.allclose(alone.long_term[0], encoded.long_term[1], atol=1e-5)


def test_a_user_with_no_events_gets_zero_vectors(synthetic_checkpoint):
    from encoders.inference import InterestEncoder

    encoder = InterestEncoder.from_checkpoint(synthetic_checkpoint, device="cpu")
    encoded = encoder.encode_interests([[], _events(2)])
    assert not encoded.current[0].any() and not encoded.long_term[0].any() and encoded.long_term[1].any()


def test_category_shares_of_many_histories_equal_each_alone():
    cats = {"a": ["x"], "b": ["x", "y"], "c": ["z"], "d": []}
    index = CategoryIndex(["a", "b", "c", "d"], cats)
    row = {"a": 2, "b": 3, "c": 4, "d": 5}
    histories = [(["a", "b"], [0, DAY_MS]), ([], []), (["d"], [5]), (["c", "a", "c"], [0, 3 * DAY_MS, 9 * DAY_MS])]
    arrays = [(np.array([row[i] for i in items], dtype=np.int64), np.array(ts, dtype=np.int64))
              for items, ts in histories]
    shares = index.shares_of(arrays, 2 * DAY_MS)
    for (items, ts), got in zip(histories, shares):
        assert index.as_dict(got) == pytest.approx(category_distribution(items, ts, cats, 2 * DAY_MS))
    assert list(index.as_dict(shares[3])) == ["z", "x"]  # largest first
    assert not shares[1].any() and not shares[2].any()
