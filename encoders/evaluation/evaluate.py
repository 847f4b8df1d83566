"""Full-ranking evaluation of the sequence encoder and two baselines.

Every real item in the vocabulary is ranked (no sampled negatives) for each
case of a protocol's split (`encoders.protocols`: leave-one-out per user, or
next item within held-out sessions).  With ``exclude_history`` the items in
the input history are removed from the ranking, as a recommender would; a
target that repeats a history item then counts as a miss.  A target unknown
to the vocabulary also counts as a miss.  Ranks count the items scoring
strictly higher than the target (ties in the target's favour).

Reported per k in ``KS``: HR@k (= Recall@k with one target), NDCG@k and
MRR@k, averaged over the cases.  A *scorer* maps a batch of input histories
to a [B, n_items] score matrix; the model, the most-popular baseline and the
item-to-item co-occurrence baseline are all scorers, evaluated by the same
code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..data.records import Dataset
from ..features import SeqArrays, haversine_km, item_places, pad_batch
from ..nn.model import SequenceEncoder, resolve_device
from ..protocols import EvalCases, Split, make_split
from ..ranking import KS, add_rank_metrics, item_scores, mask_scores, top_items
from ..vocab import ItemVocab

__all__ = [
    "Scorer",
    "baseline_metrics",
    "cooccurrence_scorer",
    "evaluate",
    "model_scorer",
    "popularity_scorer",
    "rank_metrics",
    "resolve_model",
    "score_cases",
    "top_cases",
]

COOCCURRENCE_STEPS = 10  # pairs up to this many events apart, weighted 1/distance
NEARBY_KM = 1.0  # most popular near the last place: popularity decays e-fold per km of distance

Scorer = Callable[[Sequence[SeqArrays]], torch.Tensor]


def _masked_batches(
    scorer: Scorer, cases: EvalCases, exclude_history: bool, batch_size: int
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(case indices, masked [B, n_items] scores) per batch: the ranking rule of `encoders.ranking`."""
    # Sorting by length keeps padding small; results do not depend on it (right padding).
    order = np.argsort([len(s) for s in cases.inputs], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        inputs = [cases.inputs[i] for i in idx]
        yield idx, mask_scores(scorer(inputs), [s.items for s in inputs] if exclude_history else None)


def score_cases(
    scorer: Scorer, cases: EvalCases, *, exclude_history: bool, ks: Sequence[int] = KS, batch_size: int = 256
) -> dict[str, Any]:
    """HR@k, NDCG@k and MRR@k of ``scorer`` over ``cases``, plus the case count."""
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("hr", "ndcg", "mrr")}
    for idx, scores in _masked_batches(scorer, cases, exclude_history, batch_size):
        add_rank_metrics(sums, scores, torch.from_numpy(cases.targets[idx]).to(scores.device), ks)
    n = len(cases)
    return {**{key: value / max(n, 1) for key, value in sums.items()}, "cases": n}


def top_cases(
    scorer: Scorer, cases: EvalCases, *, k: int, exclude_history: bool, batch_size: int = 256
) -> list[list[int]]:
    """The ``k`` best item indices of each case, in case order, as `score_cases` ranks them.

    What a metric of `score_cases` counts, as lists: a case is a hit at k
    when its target is among its ``k`` items (up to ties with the target,
    which `score_cases` resolves in the target's favour).  Used to check the
    worker's lists against the evaluation's (tests/encoders/test_enc_ranking.py).

    >>> top_cases(model_scorer(model), split.test, k=10, exclude_history=True)[0]  # doctest: +SKIP
    [2710, 1265, ...]
    """
    best: list[list[int]] = [[] for _ in range(len(cases))]
    for idx, scores in _masked_batches(scorer, cases, exclude_history, batch_size):
        for case, row in zip(idx, top_items(scores, k)):
            best[case] = [item for item, _ in row]
    return best


# ---------------------------------------------------------------- scorers
def model_scorer(model: SequenceEncoder) -> Scorer:
    """Scores of every item: the user's vector (last hidden state) against the item table."""
    device = next(model.parameters()).device
    table = model.item_table().float()
    max_len = model.config.max_len

    def score(inputs: Sequence[SeqArrays]) -> torch.Tensor:
        seqs = [s.window(-max_len, None) for s in inputs]
        batch = pad_batch(seqs, max(max(len(s) for s in seqs), 1))
        tensors = [torch.from_numpy(a).to(device) for a in (batch.items, batch.actions, batch.gaps)]
        lengths = torch.from_numpy(np.maximum(batch.lengths, 1)).to(device)
        context = None if batch.context is None else torch.from_numpy(batch.context).to(device)
        vectors = model.user_vectors(*tensors, lengths, context).float()
        return item_scores(vectors, table)  # the worker's scores (`InterestEncoder.top_k`), no bias

    return score


def _training_counts(split: Split, n_items: int) -> np.ndarray:
    counts = np.zeros(n_items, dtype=np.float32)
    for seq in split.train:
        np.add.at(counts, seq.items, 1.0)
    return counts


def popularity_scorer(split: Split, n_items: int) -> Scorer:
    """Every item scored by its count in the split's training sequences."""
    base = torch.from_numpy(_training_counts(split, n_items))
    return lambda inputs: base.expand(len(inputs), -1).clone()


def _pair_weights(train: Sequence[SeqArrays], n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR rows (indptr, cols, weights) of item a -> item b following within the steps."""
    codes, weights = [], []
    for seq in train:
        items = seq.items
        for d in range(1, min(COOCCURRENCE_STEPS, len(items) - 1) + 1):
            codes.append(items[:-d] * n_items + items[d:])
            weights.append(np.full(len(items) - d, 1.0 / d, dtype=np.float64))
    if not codes:
        return np.zeros(n_items + 1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    unique, inverse = np.unique(np.concatenate(codes), return_inverse=True)
    summed = np.bincount(inverse, weights=np.concatenate(weights)).astype(np.float32)
    rows, cols = unique // n_items, unique % n_items
    indptr = np.zeros(n_items + 1, dtype=np.int64)
    np.add.at(indptr, rows + 1, 1)
    return np.cumsum(indptr), cols, summed


def cooccurrence_scorer(split: Split, n_items: int) -> Scorer:
    """Item-to-item co-occurrence of the input's last item (sequential rules).

    An item b scores the sum over training sequences of 1/d for each time it
    followed the last input item a at distance d <= ``COOCCURRENCE_STEPS``;
    popularity (scaled far below one co-occurrence) breaks ties and covers
    items with no rules.
    """
    indptr, cols, weights = _pair_weights(split.train, n_items)
    popularity = popularity_scorer(split, n_items)

    def score(inputs: Sequence[SeqArrays]) -> torch.Tensor:
        scores = popularity(inputs)
        scores /= scores.max().clamp(min=1.0) * 1e3
        for row, seq in enumerate(inputs):
            if len(seq):
                a = int(seq.items[-1])
                lo, hi = indptr[a], indptr[a + 1]
                scores[row, torch.from_numpy(cols[lo:hi])] += torch.from_numpy(weights[lo:hi])
        return scores

    return score


def nearby_popularity_scorer(split: Split, places: np.ndarray, km: float = NEARBY_KM) -> Scorer:
    """Most popular near the last place: each item's training count times exp(-distance / ``km``)
    from the place of the input's last item; items without a place, and cases whose last item has
    none, fall back to popularity alone (scaled below any nearby item)."""
    counts = _training_counts(split, len(places))
    lat, lon = places[:, 0], places[:, 1]
    fallback = counts / max(float(counts.max()), 1.0) * 1e-6

    def score(inputs: Sequence[SeqArrays]) -> torch.Tensor:
        rows = []
        for seq in inputs:
            last = int(seq.items[-1]) if len(seq) else 0
            if np.isnan(lat[last]):
                rows.append(fallback)
                continue
            distance = haversine_km(lat[last], lon[last], lat, lon)
            rows.append(np.nan_to_num(counts * np.exp(-distance / km), nan=0.0) + fallback)
        return torch.from_numpy(np.stack(rows).astype(np.float32))

    return score


# ---------------------------------------------------------------- entry points
@torch.inference_mode()
def rank_metrics(
    model: SequenceEncoder, cases: EvalCases, *, exclude_history: bool = True, ks: Sequence[int] = KS
) -> dict[str, Any]:
    """Metrics of ``model`` on precomputed cases (used per epoch by train)."""
    was_training = model.training
    model.eval()
    try:
        return score_cases(model_scorer(model), cases, exclude_history=exclude_history, ks=ks)
    finally:
        model.train(was_training)


def baseline_metrics(dataset: Dataset, split: str = "test", protocol: str = "auto",
                     exclude_history: bool | None = None) -> dict[str, dict[str, Any]]:
    """Most-popular and co-occurrence baselines on the same cases as the model (and, where items
    have places, most popular near the last place).  ``exclude_history=None`` is the protocol's rule."""
    vocab = ItemVocab.from_items(e.item_id for e in dataset.clicks)
    parts = make_split(dataset, vocab, protocol, through_valid=split == "test")
    cases = parts.test if split == "test" else parts.valid
    scorers = {"most popular": popularity_scorer(parts, len(vocab)),
               "item-to-item co-occurrence": cooccurrence_scorer(parts, len(vocab))}
    places = item_places(dataset.clicks, vocab)
    if not np.isnan(places[:, 0]).all():
        scorers["most popular near the last place"] = nearby_popularity_scorer(parts, places)
    exclude = parts.exclude_history if exclude_history is None else exclude_history
    return {name: score_cases(scorer, cases, exclude_history=exclude) for name, scorer in scorers.items()}


def resolve_model(obj: Any, vocab: ItemVocab | None, device: str) -> tuple[SequenceEncoder, ItemVocab]:
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
    protocol: str = "auto",
    exclude_history: bool | None = None,
    device: str = "auto",
    vocab: ItemVocab | None = None,
) -> dict[str, Any]:
    """Full-ranking HR@k, NDCG@k and MRR@k (k in ``KS``) on ``split`` of ``protocol``.

    ``model_or_checkpoint`` is a checkpoint directory, an `InterestEncoder`,
    a ``(SequenceEncoder, ItemVocab)`` pair, or a `SequenceEncoder` with
    ``vocab=``.  ``exclude_history=None`` takes the protocol's default
    (excluded for leave-one-out, kept for sessions).

    >>> evaluate("/tmp/ckpt-ml1m", load_dataset("../shared/data/ml-1m"))  # doctest: +SKIP
    {'hr@10': 0.3, 'ndcg@10': 0.17, ..., 'cases': 6040}
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    model, vocab = resolve_model(model_or_checkpoint, vocab, device)
    parts = make_split(dataset, vocab, protocol)
    exclude = parts.exclude_history if exclude_history is None else exclude_history
    return rank_metrics(model, parts.test if split == "test" else parts.valid, exclude_history=exclude)
