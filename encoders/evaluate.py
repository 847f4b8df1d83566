"""Leave-one-out, full-ranking evaluation (the ML-1M benchmark protocol).

Per user with >= 3 events: for split="test" the input is every event but the
last and the target is the last item; for "valid" the input stops one event
earlier and the target is the second-to-last item.  Every real item in the
vocabulary is ranked (no sampled negatives).  With ``exclude_history`` the
items in the input history are removed from the ranking, as a recommender
would; a target that repeats a history item then counts as a miss.  A target
unknown to the vocabulary also counts as a miss.  Ranks count the items
scoring strictly higher than the target (ties in the target's favour).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .datasets import Dataset
from .features import SeqArrays, pad_batch, split_input, user_arrays
from .model import SequenceEncoder, resolve_device
from .vocab import ItemVocab

__all__ = ["EvalCases", "eval_cases", "evaluate", "popularity_baseline", "rank_metrics"]


@dataclass(frozen=True)
class EvalCases:
    """Inputs (full histories) and target item indices of one split."""

    inputs: list[SeqArrays]
    targets: np.ndarray


def eval_cases(dataset: Dataset, vocab: ItemVocab, split: str) -> EvalCases:
    """The leave-one-out cases of ``split`` ("valid" or "test")."""
    inputs: list[SeqArrays] = []
    targets: list[int] = []
    for seq in user_arrays(dataset, vocab).values():
        case = split_input(seq, split)
        if case is not None:
            inputs.append(case[0])
            targets.append(case[1])
    return EvalCases(inputs, np.asarray(targets, dtype=np.int64))


def _history(inputs: Sequence[SeqArrays], device: torch.device) -> torch.Tensor:
    # Padded with 0 (the padding row), which is masked anyway.
    width = max(len(s) for s in inputs)
    hist = np.zeros((len(inputs), width), dtype=np.int64)
    for row, seq in enumerate(inputs):
        hist[row, : len(seq)] = seq.items
    return torch.from_numpy(hist).to(device)


def _metrics(scores: torch.Tensor, targets: torch.Tensor, k: int) -> tuple[float, float]:
    """Sums of hits and NDCG over a batch of masked score rows."""
    target_scores = scores.gather(1, targets[:, None])
    ranks = (scores > target_scores).sum(1)
    hits = (ranks < k) & torch.isfinite(target_scores[:, 0])
    ndcg = torch.where(hits, 1.0 / torch.log2(ranks.to(torch.float32) + 2.0), torch.zeros_like(target_scores[:, 0]))
    return float(hits.sum()), float(ndcg.sum())


def _mask(scores: torch.Tensor, inputs: Sequence[SeqArrays], exclude_history: bool) -> torch.Tensor:
    scores[:, :2] = float("-inf")  # padding and unknown are never recommendations
    if exclude_history:
        scores.scatter_(1, _history(inputs, scores.device), float("-inf"))
    return scores


def _user_vectors(model: SequenceEncoder, seqs: Sequence[SeqArrays], device: torch.device) -> torch.Tensor:
    batch = pad_batch(seqs, max(len(s) for s in seqs))
    t = [torch.from_numpy(a).to(device) for a in (batch.items, batch.actions, batch.gaps, batch.lengths)]
    return model.user_vectors(*t)


def _result(hits: float, ndcg: float, users: int, k: int) -> dict[str, Any]:
    return {f"hr@{k}": hits / max(users, 1), f"ndcg@{k}": ndcg / max(users, 1), "users": users}


@torch.inference_mode()
def rank_metrics(
    model: SequenceEncoder,
    cases: EvalCases,
    *,
    k: int = 10,
    exclude_history: bool = True,
    batch_size: int = 256,
) -> dict[str, Any]:
    """HR@k / NDCG@k of ``model`` on precomputed cases (used per epoch by train)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    table = model.item_table().float()
    max_len = model.config.max_len
    # Sorting by length keeps padding small; results do not depend on it (right padding).
    order = np.argsort([len(s) for s in cases.inputs], kind="stable")
    hits = ndcg = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        inputs = [cases.inputs[i] for i in idx]
        vectors = _user_vectors(model, [s.window(-max_len, None) for s in inputs], device)
        scores = _mask(vectors.float() @ table.T, inputs, exclude_history)
        h, n = _metrics(scores, torch.from_numpy(cases.targets[idx]).to(device), k)
        hits, ndcg = hits + h, ndcg + n
    model.train(was_training)
    return _result(hits, ndcg, len(order), k)


def _model_and_vocab(obj: Any, vocab: ItemVocab | None, device: str) -> tuple[SequenceEncoder, ItemVocab]:
    if isinstance(obj, (str, Path)):
        model, loaded_vocab, _ = load_checkpoint(obj, device)
        return model, loaded_vocab
    if isinstance(obj, tuple):
        return obj[0].to(resolve_device(device)), obj[1]
    if isinstance(obj, SequenceEncoder):
        if vocab is None:
            raise TypeError("evaluate(model, ...) needs vocab=ItemVocab when given a bare SequenceEncoder")
        return obj.to(resolve_device(device)), vocab
    # An InterestEncoder (duck-typed to avoid importing the inference module here).
    return obj.model, obj.vocab


def evaluate(
    model_or_checkpoint: Any,
    dataset: Dataset,
    *,
    split: str = "test",
    k: int = 10,
    exclude_history: bool = True,
    device: str = "auto",
    vocab: ItemVocab | None = None,
) -> dict[str, Any]:
    """Full-ranking leave-one-out HR@k and NDCG@k.

    ``model_or_checkpoint`` is a checkpoint directory, an `InterestEncoder`,
    a ``(SequenceEncoder, ItemVocab)`` pair, or a `SequenceEncoder` with
    ``vocab=``.  Returns ``{"hr@10": ..., "ndcg@10": ..., "users": n}``.

    >>> evaluate("/tmp/ckpt-ml1m", load_dataset("../shared/data/ml-1m"))  # doctest: +SKIP
    {'hr@10': 0.3, 'ndcg@10': 0.17, 'users': 6040}
    """
    model, vocab = _model_and_vocab(model_or_checkpoint, vocab, device)
    return rank_metrics(model, eval_cases(dataset, vocab, split), k=k, exclude_history=exclude_history)


def popularity_baseline(dataset: Dataset, split: str = "test", k: int = 10) -> dict[str, Any]:
    """Rank every item by its count in the training part of all users, same protocol."""
    vocab = ItemVocab.from_items(e.item_id for e in dataset.clicks)
    counts = np.zeros(len(vocab), dtype=np.float32)
    for seq in user_arrays(dataset, vocab).values():
        np.add.at(counts, split_input(seq, "train")[0].items, 1.0)
    cases = eval_cases(dataset, vocab, split)
    base = torch.from_numpy(counts)
    hits = ndcg = 0.0
    for start in range(0, len(cases.inputs), 512):
        inputs = cases.inputs[start : start + 512]
        scores = _mask(base.expand(len(inputs), -1).clone(), inputs, True)
        h, n = _metrics(scores, torch.from_numpy(cases.targets[start : start + 512]), k)
        hits, ndcg = hits + h, ndcg + n
    return _result(hits, ndcg, len(cases.inputs), k)
