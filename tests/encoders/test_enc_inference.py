"""InterestEncoder: padding invariance on real sequences, unknown items, top-K."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from encoders.config import EncoderConfig
from encoders.data import Dataset
from encoders.features import from_tuples
from encoders.inference import InterestEncoder
from encoders.nn.model import SequenceEncoder
from encoders.vocab import ItemVocab


def _tuples(dataset: Dataset, user: str) -> list[tuple[str, str, int]]:
    return [(e.item_id, e.action, e.ts) for e in dataset.sequences()[user]]


@pytest.fixture(scope="module")
def encoder(ml_small: Dataset) -> InterestEncoder:
    torch.manual_seed(0)
    vocab = ItemVocab.from_items(e.item_id for e in ml_small.clicks)
    model = SequenceEncoder(EncoderConfig(n_items=len(vocab), d_model=32, max_len=200))
    with torch.no_grad():  # larger weights than the init, so that inputs matter visibly
        for emb in (model.item_emb, model.action_emb, model.time_emb):
            emb.weight.normal_(0.0, 1.0)
    return InterestEncoder(model.eval(), vocab, "test")


def _reference(encoder: InterestEncoder, events: list[tuple[str, str, int]]) -> torch.Tensor:
    seq = from_tuples(events, encoder.vocab).window(-encoder.max_len, None)
    tensors = [torch.from_numpy(a)[None] for a in (seq.items, seq.actions, seq.gaps)]
    with torch.inference_mode():
        return encoder.model.user_vectors(*tensors, torch.tensor([len(seq)]))[0]


def test_encode_matches_unpadded_single_sequences(encoder: InterestEncoder, ml_small: Dataset) -> None:
    seqs = ml_small.sequences()
    # Real users of mixed lengths, cut to lengths that land in every bucket (and beyond max_len).
    users = sorted(seqs, key=lambda u: len(seqs[u]))
    picks = [users[0], users[len(users) // 2], users[-1], users[-2]]
    batch = [_tuples(ml_small, u)[:n] for u, n in zip(picks * 2, (1, 15, 17, 40, 70, 150, 199, 900))]
    vectors = encoder.encode(batch)
    assert vectors.dtype == np.float32 and vectors.shape == (8, encoder.dim)
    for row, events in enumerate(batch):
        assert torch.allclose(torch.from_numpy(vectors[row]), _reference(encoder, events), atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_unknown_items_and_empty_sequences(encoder: InterestEncoder) -> None:
    known = encoder.vocab.item_ids[0]
    a, b, empty = encoder.encode([[(known, "click", 0), ("never-seen", "buy", 5000)],
                                  [(known, "click", 0), ("also-new", "buy", 5000)], []])
    np.testing.assert_array_equal(a, b)  # both unseen ids use the unknown embedding
    assert not empty.any()


def test_top_k_excludes_and_never_returns_reserved(encoder: InterestEncoder, ml_small: Dataset) -> None:
    vectors = encoder.encode([_tuples(ml_small, "1"), _tuples(ml_small, "2")])
    plain = encoder.top_k(vectors, 5)
    assert [len(r) for r in plain] == [5, 5]
    assert all(s1 >= s2 for row in plain for (_, s1), (_, s2) in pairwise(row))
    banned = {item for item, _ in plain[0][:3]} | {"not-an-item"}
    excluded = encoder.top_k(vectors, 5, exclude=[banned, set()])
    assert not banned & {item for item, _ in excluded[0]}
    assert excluded[1] == plain[1]
    everything = encoder.top_k(vectors[:1], 10**6, exclude=[set(encoder.vocab.item_ids[5:])])
    assert sorted(i for i, _ in everything[0]) == sorted(encoder.vocab.item_ids[:5])
    with pytest.raises(ValueError, match="exclude has 1 sets for 2 vectors"):
        encoder.top_k(vectors, 5, exclude=[set()])
