"""Cached windows: extending a user's window gives what encoding it from scratch gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.config import BLOCKS, EncoderConfig
from encoders.features import from_arrays
from encoders.inference import InterestEncoder
from encoders.interests import History, UserEvents
from encoders.nn.model import SequenceEncoder
from encoders.states import Window, WindowEncoder, window_start
from encoders.vocab import ItemVocab

MAX_LEN, HOP = 16, 5
HALF_LIFE = 3_600_000


@pytest.fixture(scope="module", params=BLOCKS)
def model(request) -> SequenceEncoder:
    """A small model of each block type: every test here holds its cached paths to its forward pass."""
    torch.manual_seed(0)
    model = SequenceEncoder(EncoderConfig(n_items=60, d_model=16, n_layers=2, n_heads=2, max_len=MAX_LEN,
                                          block=request.param))
    with torch.no_grad():  # larger weights than the init, so that every input visibly matters
        for emb in (model.item_emb, model.action_emb, model.time_emb):
            emb.weight.normal_(0.0, 1.0)
    return model.eval()


def _events(rng, n: int, start: int = 1_700_000_000_000):
    return (rng.integers(2, 60, n), rng.integers(2, 6, n), start + np.cumsum(rng.integers(1, 900_000, n)))


def _window(items, actions, ts, keys, total, key, hop=HOP) -> Window:
    seq = from_arrays(items, actions, ts)
    return Window(seq, ts, window_start(total, len(seq), MAX_LEN, hop), key, keys)


def test_window_start_keeps_between_max_len_minus_hop_plus_one_and_max_len_events():
    for total in range(0, 80):
        for kept in {total, min(total, 20)}:
            start = window_start(total, kept, MAX_LEN, HOP)
            length = kept - start
            assert 0 <= start <= kept
            if kept < total:  # the oldest kept event has lost its predecessor: it only gives its successor's gap
                assert start >= 1
            if total <= MAX_LEN:
                assert length == kept
            else:
                assert MAX_LEN - HOP < length <= MAX_LEN or length == kept - 1
    assert [window_start(n, n, MAX_LEN, 1) for n in (10, 16, 17, 40)] == [0, 0, 1, 24]  # hop 1: the last max_len


def test_extending_cached_windows_equals_encoding_them_from_scratch(model):
    """Several users refreshed in chunks of 1-4 events, histories bounded at 20 events, window hop 5."""
    rng = np.random.default_rng(0)
    cached = WindowEncoder(model, buckets=(8, MAX_LEN), half_life_ms=HALF_LIFE, cache_bytes=10**8)
    scratch = WindowEncoder(model, buckets=(8, MAX_LEN), half_life_ms=HALF_LIFE)
    users = {f"u{n}": tuple(np.zeros(0, np.int64) for _ in range(3)) + (np.zeros(0, np.uint64),) for n in range(6)}
    totals = dict.fromkeys(users, 0)
    next_key = 1
    for _ in range(25):
        windows, plain = [], []
        for user in rng.choice(sorted(users), size=4, replace=False):
            items, actions, ts = users[user][:3]
            new = rng.integers(1, 5)
            more = _events(rng, new, start=int(ts[-1]) if len(ts) else 1_700_000_000_000)
            keys = np.arange(next_key, next_key + new, dtype=np.uint64)
            next_key += new
            state = [np.concatenate([a, b]) for a, b in zip((items, actions, ts, users[user][3]), (*more, keys))]
            users[user] = tuple(a[-20:] for a in state)  # Redis keeps the newest 20
            totals[user] += new
            windows.append(_window(*users[user], totals[user], user))
            plain.append(_window(*users[user], totals[user], None))
        last, long_term = cached.encode(windows)
        want_last, want_long = scratch.encode(plain)
        np.testing.assert_allclose(last, want_last, atol=2e-5)
        np.testing.assert_allclose(long_term, want_long, atol=2e-5)
    assert cached.stats["extended"] > 30 and cached.stats["encoded"] >= 6  # both paths ran
    assert scratch.cached_bytes == 0 and cached.cached_bytes > 0


def test_a_changed_history_is_encoded_again_and_a_small_budget_evicts(model):
    rng = np.random.default_rng(1)
    items, actions, ts = _events(rng, 10)
    keys = np.arange(10, dtype=np.uint64)
    enc = WindowEncoder(model, buckets=(MAX_LEN,), half_life_ms=HALF_LIFE, cache_bytes=10**8)
    enc.encode([_window(items[:8], actions[:8], ts[:8], keys[:8], 8, "u")])
    # An event inserted in the middle (out of order): the cached prefix no longer matches.
    order = [0, 1, 2, 9, 3, 4, 5, 6, 7]
    fixed_ts = np.sort(ts[order])
    last, _ = enc.encode([_window(items[order], actions[order], fixed_ts, keys[order], 9, "u")])
    fresh, _ = WindowEncoder(model, buckets=(MAX_LEN,), half_life_ms=HALF_LIFE).encode(
        [_window(items[order], actions[order], fixed_ts, keys[order], 9, None)])
    np.testing.assert_allclose(last, fresh, atol=2e-5)
    assert enc.stats == {"reused": 0, "extended": 0, "encoded": 2, "evicted": 0}

    tiny = WindowEncoder(model, buckets=(MAX_LEN,), half_life_ms=HALF_LIFE, cache_bytes=3000)
    for user in ("a", "b", "c"):
        tiny.encode([_window(items, actions, ts, keys, 10, user)])
    assert tiny.stats["evicted"] >= 2 and tiny.cached_bytes <= 3000


def test_histories_with_window_hop_1_give_the_exact_interests(model):
    """The worker's path (arrays, cached windows) against the tuple path, which encodes the last max_len."""
    rng = np.random.default_rng(2)
    vocab = ItemVocab(f"i{n}" for n in range(58))
    encoder = InterestEncoder(model, vocab, "m", window_hop=1, cache_bytes=10**8, half_life_ms=HALF_LIFE)
    items, actions, ts = _events(rng, 30)
    keys = np.arange(30, dtype=np.uint64)
    for n in (3, 9, 16, 17, 30):  # the same user refreshed as the history grows past max_len
        session = n - 4 if n > 4 else 0
        history = History("u", items[:n], actions[:n], ts[:n], keys[:n], total=n, session_start=session)
        got = encoder.interests_of_histories([history])
        tuples = [(vocab.item_id(int(i)), ("view", "click", "cart", "buy")[int(a) - 2], int(t))
                  for i, a, t in zip(items[:n], actions[:n], ts[:n])]
        want = encoder.interests([UserEvents(tuples, session=tuples[session:])])
        for name in ("current", "long_term", "session"):
            np.testing.assert_allclose(getattr(got, name), getattr(want, name), atol=2e-5, err_msg=f"{name} at {n}")
    assert encoder.windows.stats["extended"] >= 2


def test_a_scaled_input_is_encoded_alike_by_the_training_and_the_lean_paths(model):
    scaled = SequenceEncoder(EncoderConfig(n_items=60, d_model=16, n_layers=2, n_heads=2, max_len=MAX_LEN,
                                           input_scale=4.0, block=model.config.block)).eval()
    scaled.load_state_dict(model.state_dict())
    rng = np.random.default_rng(3)
    items, actions, ts = (torch.from_numpy(np.asarray(a))[None, :] for a in _events(rng, 10))
    gaps = torch.cat([torch.tensor([[-1]]), ts[:, 1:] - ts[:, :-1]], 1)
    with torch.no_grad():
        lean, _ = scaled.encode_cached(items, actions, gaps)
        assert torch.allclose(scaled(items, actions, gaps), lean, atol=1e-5)
        assert not torch.allclose(model(items, actions, gaps), lean, atol=1e-3)  # the scale is applied
