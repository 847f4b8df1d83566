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

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_checkpoint, read_metadata
from .datasets import Dataset
from .features import SeqArrays, pad_batch
from .model import SequenceEncoder, resolve_device
from .protocols import EvalCases, Split, make_split
from .vocab import ACTIONS, ItemVocab

__all__ = [
    "KS",
    "Scorer",
    "action_metrics",
    "action_table",
    "add_rank_metrics",
    "baseline_metrics",
    "classification_metrics",
    "cooccurrence_scorer",
    "evaluate",
    "evaluate_actions",
    "mask_scores",
    "model_scorer",
    "next_action_report",
    "popularity_scorer",
    "predict_actions",
    "rank_metrics",
    "score_cases",
    "target_action_counts",
]

KS = (10, 20)
COOCCURRENCE_STEPS = 10  # pairs up to this many events apart, weighted 1/distance

Scorer = Callable[[Sequence[SeqArrays]], torch.Tensor]


def _history(inputs: Sequence[SeqArrays], device: torch.device) -> torch.Tensor:
    # Padded with 0 (the padding row), which is masked anyway.
    width = max(max(len(s) for s in inputs), 1)
    hist = np.zeros((len(inputs), width), dtype=np.int64)
    for row, seq in enumerate(inputs):
        hist[row, : len(seq)] = seq.items
    return torch.from_numpy(hist).to(device)


def mask_scores(scores: torch.Tensor, inputs: Sequence[SeqArrays], exclude_history: bool) -> torch.Tensor:
    """The evaluation's ranking rule, in place: padding, unknown and (optionally) each input's items score -inf."""
    scores[:, :2] = float("-inf")  # padding and unknown are never recommendations
    if exclude_history:
        scores.scatter_(1, _history(inputs, scores.device), float("-inf"))
    return scores


def add_rank_metrics(
    sums: dict[str, float], scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]
) -> None:
    """Add a batch's hits, NDCG and reciprocal ranks, per k, to ``sums``."""
    target_scores = scores.gather(1, targets[:, None])[:, 0]
    ranks = (scores > target_scores[:, None]).sum(1).to(torch.float64)
    found = torch.isfinite(target_scores)
    for k in ks:
        hit = found & (ranks < k)
        sums[f"hr@{k}"] += float(hit.sum())
        sums[f"ndcg@{k}"] += float(torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0).sum())
        sums[f"mrr@{k}"] += float(torch.where(hit, 1.0 / (ranks + 1.0), 0.0).sum())


def score_cases(
    scorer: Scorer, cases: EvalCases, *, exclude_history: bool, ks: Sequence[int] = KS, batch_size: int = 256
) -> dict[str, Any]:
    """HR@k, NDCG@k and MRR@k of ``scorer`` over ``cases``, plus the case count."""
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("hr", "ndcg", "mrr")}
    # Sorting by length keeps padding small; results do not depend on it (right padding).
    order = np.argsort([len(s) for s in cases.inputs], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        inputs = [cases.inputs[i] for i in idx]
        scores = mask_scores(scorer(inputs), inputs, exclude_history)
        add_rank_metrics(sums, scores, torch.from_numpy(cases.targets[idx]).to(scores.device), ks)
    n = len(order)
    return {**{key: value / max(n, 1) for key, value in sums.items()}, "cases": n}


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
        vectors = model.user_vectors(*tensors, lengths).float()
        return vectors @ table.T

    return score


def popularity_scorer(split: Split, n_items: int) -> Scorer:
    """Every item scored by its count in the split's training sequences."""
    counts = np.zeros(n_items, dtype=np.float32)
    for seq in split.train:
        np.add.at(counts, seq.items, 1.0)
    base = torch.from_numpy(counts)
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


def baseline_metrics(dataset: Dataset, split: str = "test", protocol: str = "auto") -> dict[str, dict[str, Any]]:
    """Most-popular and co-occurrence baselines on the same cases as the model."""
    vocab = ItemVocab.from_items(e.item_id for e in dataset.clicks)
    parts = make_split(dataset, vocab, protocol, through_valid=split == "test")
    cases = parts.test if split == "test" else parts.valid
    scorers = {"most popular": popularity_scorer(parts, len(vocab)),
               "item-to-item co-occurrence": cooccurrence_scorer(parts, len(vocab))}
    return {name: score_cases(scorer, cases, exclude_history=parts.exclude_history)
            for name, scorer in scorers.items()}


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
    model, vocab = _model_and_vocab(model_or_checkpoint, vocab, device)
    parts = make_split(dataset, vocab, protocol)
    exclude = parts.exclude_history if exclude_history is None else exclude_history
    return rank_metrics(model, parts.test if split == "test" else parts.valid, exclude_history=exclude)


# ---------------------------------------------------------------- next action
# The head (`SequenceEncoder.next_action_logits`) is scored on the same cases
# as the ranking: the input history predicts the action of the target event.
# Only the checkpoint's ``action_classes`` (the actions that were training
# targets) compete; a target outside them is a miss.  Macro-F1 averages the
# per-class F1 over the classes that occur among the targets or the
# predictions (a class absent from both has no defined F1).  The majority
# baseline predicts the most frequent training target for every case.
def target_action_counts(seqs: Sequence[SeqArrays], n_actions: int = len(ACTIONS)) -> np.ndarray:
    """How often each action index is a training target (the actions of events 1..n-1)."""
    counts = np.zeros(n_actions, dtype=np.int64)
    for seq in seqs:
        counts += np.bincount(seq.actions[1:], minlength=n_actions)[:n_actions]
    return counts


def classification_metrics(predicted: np.ndarray, targets: np.ndarray, classes: Sequence[int]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class F1 (keyed by action name) of predicted action indices."""
    per_class = {}
    for c in classes:
        tp = int(np.sum((predicted == c) & (targets == c)))
        fp, fn = int(np.sum((predicted == c) & (targets != c))), int(np.sum((predicted != c) & (targets == c)))
        if tp + fp + fn:
            per_class[ACTIONS[c]] = 2 * tp / (2 * tp + fp + fn)
    return {"accuracy": float(np.mean(predicted == targets)) if len(targets) else 0.0,
            "macro_f1": float(np.mean(list(per_class.values()))) if per_class else 0.0,
            "f1": per_class, "cases": len(targets)}


@torch.inference_mode()
def predict_actions(
    model: SequenceEncoder, inputs: Sequence[SeqArrays], classes: Sequence[int], batch_size: int = 256
) -> np.ndarray:
    """The most likely next action (index) among ``classes`` after each input history."""
    was_training = model.training
    model.eval()
    device, max_len = next(model.parameters()).device, model.config.max_len
    rows = torch.tensor(list(classes), dtype=torch.long, device=device)
    predicted = np.zeros(len(inputs), dtype=np.int64)
    try:
        for start in range(0, len(inputs), batch_size):
            seqs = [s.window(-max_len, None) for s in inputs[start : start + batch_size]]
            batch = pad_batch(seqs, max(max(len(s) for s in seqs), 1))
            tensors = [torch.from_numpy(a).to(device) for a in (batch.items, batch.actions, batch.gaps)]
            lengths = torch.from_numpy(np.maximum(batch.lengths, 1)).to(device)
            logits = model.next_action_logits(model.user_vectors(*tensors, lengths))[:, rows]
            predicted[start : start + len(seqs)] = rows[logits.argmax(1)].cpu().numpy()
    finally:
        model.train(was_training)
    return predicted


def action_metrics(
    model: SequenceEncoder, inputs: Sequence[SeqArrays], target_actions: np.ndarray, classes: Sequence[int]
) -> dict[str, Any]:
    """Accuracy and macro-F1 of the head's argmax over ``classes`` (action indices)."""
    return classification_metrics(predict_actions(model, inputs, classes), np.asarray(target_actions), classes)


def next_action_report(
    model: SequenceEncoder, cases: EvalCases, classes: Sequence[int], majority: int
) -> dict[str, Any]:
    """The head beside two baselines on ``cases`` (which must carry ``actions``):
    the majority class, and repeating the user's last action (the majority
    class for an empty history), which is hard to beat where actions persist.

    >>> next_action_report(model, split.test, [2, 3, 5], majority=5)  # doctest: +SKIP
    {'classes': ['view', 'click', 'buy'], 'majority_class': 'buy', 'model': {...}, 'majority': {...},
     'last_action': {...}}
    """
    if cases.actions is None:
        raise ValueError("these evaluation cases carry no target actions")
    majority_guess = np.full(len(cases), majority, dtype=np.int64)
    last_action = np.array([seq.actions[-1] if len(seq) else majority for seq in cases.inputs], dtype=np.int64)
    return {"classes": [ACTIONS[c] for c in classes], "majority_class": ACTIONS[majority],
            "model": action_metrics(model, cases.inputs, cases.actions, classes),
            "majority": classification_metrics(majority_guess, cases.actions, classes),
            "last_action": classification_metrics(last_action, cases.actions, classes)}


def evaluate_actions(
    model_or_checkpoint: Any,
    dataset: Dataset,
    *,
    split: str = "test",
    protocol: str = "auto",
    device: str = "auto",
    vocab: ItemVocab | None = None,
) -> dict[str, Any] | None:
    """`next_action_report` on ``split`` of ``protocol``; None when the model has no head.

    The classes and the majority class come from a checkpoint's metadata
    (``action_classes``, ``action_majority``: the training targets); for a
    model given directly they are counted on the split's training sequences.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    model, vocab = _model_and_vocab(model_or_checkpoint, vocab, device)
    if not model.has_action_head:
        return None
    parts = make_split(dataset, vocab, protocol)
    extra = read_metadata(model_or_checkpoint).extra if isinstance(model_or_checkpoint, (str, Path)) else {}
    counts = target_action_counts(parts.train, model.config.n_actions)
    classes = [ACTIONS.index(a) for a in extra.get("action_classes", ())] or [int(c) for c in np.flatnonzero(counts)]
    majority = ACTIONS.index(extra["action_majority"]) if "action_majority" in extra else int(np.argmax(counts))
    return next_action_report(model, parts.test if split == "test" else parts.valid, classes, majority)


def action_table(report: dict[str, Any]) -> str:
    """A `next_action_report` as a small text table (model vs the baselines)."""
    lines = [f"next action over {report['classes']} (majority class: {report['majority_class']})",
             f"{'model':<40} {'accuracy':>8} {'macro-F1':>8} {'cases':>7}"]
    rows = (("next-action head", "model"), (f"majority ({report['majority_class']})", "majority"),
            ("repeat the last action", "last_action"))
    for name, key in rows:
        if key not in report:  # reports saved before the last-action baseline existed
            continue
        m = report[key]
        lines.append(f"{name:<40} {m['accuracy']:>8.4f} {m['macro_f1']:>8.4f} {m['cases']:>7}")
    return "\n".join(lines)
