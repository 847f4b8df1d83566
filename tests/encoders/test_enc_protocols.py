"""Splits: leave-one-out per user and next item within held-out sessions; the baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.data import Dataset, Event, load_dataset
from encoders.evaluation.evaluate import baseline_metrics, cooccurrence_scorer, score_cases
from encoders.features import SeqArrays
from encoders.protocols import EvalCases, make_split
from encoders.training.loop import train_windows
from encoders.vocab import ItemVocab


def _vocab(dataset: Dataset) -> ItemVocab:
    return ItemVocab.from_items(e.item_id for e in dataset.clicks)


def test_leave_one_out(ml_small: Dataset) -> None:
    vocab = _vocab(ml_small)
    split = make_split(ml_small, vocab)
    seqs = ml_small.sequences()
    assert split.protocol == "leave-one-out" and split.exclude_history
    assert len(split.test) == len(split.valid) == len(seqs) == 671  # every user has >= 3 ratings
    assert sum(len(s) for s in split.train) == len(ml_small.clicks) - 2 * 671
    refit = make_split(ml_small, vocab, through_valid=True)
    assert sum(len(s) for s in refit.train) == len(ml_small.clicks) - 671
    # The validation target is the last training item of the refit, never the test target.
    assert {int(s.items[-1]) for s in refit.train} >= set(split.valid.targets[:5].tolist())


def test_sessions_use_the_test_file(shared_folder) -> None:
    log = load_dataset(shared_folder("yoochoose-100k"))
    vocab = _vocab(log)
    split = make_split(log, vocab)
    assert split.protocol == "session" and not split.exclude_history
    known = [[e for e in s if e.item_id in vocab] for s in log.test_sequences().values()]
    assert len(split.test) == sum(max(len(s) - 1, 0) for s in known)
    assert 1 not in split.test.targets  # unknown items were dropped, not ranked as misses
    n_sessions = len(log.sequences())
    assert len(split.train) == n_sessions - int(n_sessions * 0.1)
    assert len(make_split(log, vocab, through_valid=True).train) == n_sessions
    with pytest.raises(ValueError, match="no held-out test sessions"):
        make_split(load_dataset("synthetic"), _vocab(load_dataset("synthetic")), "session")


def test_windows_cover_every_transition_once() -> None:
    seq = SeqArrays(np.arange(2, 12), np.full(10, 3), np.zeros(10, dtype=np.int64))
    newest = train_windows([seq], max_len=3, all_windows=False)
    assert [w.items.tolist() for w in newest] == [[8, 9, 10, 11]]
    every = train_windows([seq], max_len=3, all_windows=True)
    assert [w.items.tolist() for w in every] == [[8, 9, 10, 11], [5, 6, 7, 8], [2, 3, 4, 5]]
    transitions = [(a, b) for w in every for a, b in zip(w.items[:-1], w.items[1:])]
    assert sorted(transitions) == [(a, a + 1) for a in range(2, 11)]


def test_metrics_by_hand() -> None:
    # Three cases; the scorer puts item 2 first, 3 second, 4 third, ... (scores fall with the index).
    cases = EvalCases([SeqArrays(np.array([5]), np.array([3]), np.array([-1]))] * 3, np.array([2, 4, 30]))
    scores = torch.arange(40, 0, -1, dtype=torch.float32)
    result = score_cases(lambda inputs: scores.expand(len(inputs), -1).clone(), cases, exclude_history=False)
    # ranks: target 2 -> 0, target 4 -> 2, target 30 -> 28 (a miss at 10 and 20).
    assert result["hr@10"] == pytest.approx(2 / 3)
    assert result["ndcg@10"] == pytest.approx((1.0 + 1 / np.log2(4)) / 3)
    assert result["mrr@20"] == pytest.approx((1.0 + 1 / 3) / 3)


def test_cooccurrence_follows_the_last_item() -> None:
    clicks = [Event(f"s{n}", item, n * 10 + i) for n in range(5) for i, item in enumerate(("a", "b", "c"))]
    test = [Event("t", "a", 1000), Event("t", "b", 1001)]
    log = Dataset("toy", clicks, [], load_dataset("synthetic").catalogue, test)
    vocab = _vocab(log)
    split = make_split(log, vocab, through_valid=True)
    scores = cooccurrence_scorer(split, len(vocab))(split.test.inputs)
    assert scores[0].argmax().item() == vocab.index("b")
    assert baseline_metrics(log)["item-to-item co-occurrence"]["hr@10"] == 1.0


def test_sampled_softmax_masks_the_target_among_its_negatives() -> None:
    from encoders.training.loop import sampled_softmax_loss

    # Two items: every sampled negative is either the target (masked) or the other item.
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    hidden = torch.tensor([[2.0, 0.5]])
    torch.manual_seed(3)
    loss = sampled_softmax_loss(hidden, table, torch.tensor([0]), negatives=50)
    torch.manual_seed(3)
    others = int((torch.randint(0, 2, (50,)) == 1).sum())
    expected = -torch.log(torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + others * np.exp(0.5)))
    assert 0 < others < 50 and loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_the_chunked_full_softmax_is_the_plain_cross_entropy_and_its_gradients(chunk) -> None:
    from encoders.training.loop import full_softmax_loss

    torch.manual_seed(4)
    hidden = (torch.randn(50, 8) * 3).requires_grad_()  # large logits: the softmax must be stable
    table = torch.randn(30, 8).requires_grad_()
    targets = torch.randint(0, 30, (50,))
    loss = full_softmax_loss(hidden, table, targets, chunk=chunk)
    grads = torch.autograd.grad(2.0 * loss, (hidden, table))
    plain = torch.nn.functional.cross_entropy(hidden @ table.T, targets)
    want = torch.autograd.grad(2.0 * plain, (hidden, table))
    torch.testing.assert_close(loss, plain, atol=1e-5, rtol=1e-5)
    for got, expected in zip(grads, want):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_full_softmax_in_bf16_products_stays_within_a_percent_of_fp32() -> None:
    from encoders.training.loop import full_softmax_loss

    torch.manual_seed(5)
    hidden = (torch.randn(300, 16) * 2).requires_grad_()
    table = torch.randn(200, 16).requires_grad_()
    targets = torch.randint(0, 200, (300,))
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        loss = full_softmax_loss(hidden, table, targets, chunk=64, matmul_dtype=dtype)
        results.append((loss, *torch.autograd.grad(loss, (hidden, table))))
    (loss32, *grads32), (loss16, *grads16) = results
    assert loss16.dtype == grads16[0].dtype == grads16[1].dtype == torch.float32
    torch.testing.assert_close(loss16, loss32, rtol=1e-2, atol=0)
    for got, expected in zip(grads16, grads32):
        # Close, and not equal: the products did run in bfloat16.
        assert 0.0 < float((got - expected).norm() / expected.norm()) < 0.01


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [
    (True, False, torch.bfloat16), (False, True, torch.bfloat16), (False, False, torch.float32)])
def test_loss_precision_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch, avx512_bf16, amx, expected) -> None:
    from encoders.training.loop import precision_dtype

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert precision_dtype("auto", torch.device("cpu")) == expected
    assert precision_dtype("fp32", torch.device("cpu")) == torch.float32  # an explicit choice is kept
    assert precision_dtype("bf16", torch.device("cpu")) == torch.bfloat16
