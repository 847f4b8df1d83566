"""The ranking rule, one for evaluation and serving alike.

Scores are [B, n_items] over the item table's rows.  Rows below `FIRST_ITEM`
(padding, unknown) never rank; with history excluded, each input's own items
never rank either; ranks count the items scoring strictly higher than the
target (ties in the target's favour).  `encoders.evaluation` accumulates
metrics with `add_rank_metrics`; the worker's `InterestEncoder.top_k` masks
with `mask_rows` and takes the top K.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .features import SeqArrays
from .vocab import FIRST_ITEM

__all__ = ["KS", "add_rank_metrics", "mask_rows", "mask_scores"]

KS = (10, 20)


def _history(inputs: Sequence[SeqArrays], device: torch.device) -> torch.Tensor:
    # Padded with 0 (the padding row), which is masked anyway.
    width = max(max(len(s) for s in inputs), 1)
    hist = np.zeros((len(inputs), width), dtype=np.int64)
    for row, seq in enumerate(inputs):
        hist[row, : len(seq)] = seq.items
    return torch.from_numpy(hist).to(device)


def mask_scores(scores: torch.Tensor, inputs: Sequence[SeqArrays], exclude_history: bool) -> torch.Tensor:
    """The evaluation's ranking rule, in place: padding, unknown and (optionally) each input's items score -inf."""
    scores[:, :FIRST_ITEM] = float("-inf")  # padding and unknown are never recommendations
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


def mask_rows(scores: torch.Tensor, exclude_rows: Sequence[Sequence[int]] | None) -> torch.Tensor:
    """Serving's form of the same rule, in place: padding, unknown and ``exclude_rows[i]`` of row i score -inf."""
    scores[:, :FIRST_ITEM] = float("-inf")
    if exclude_rows is not None:
        rows = [row for row, cols in enumerate(exclude_rows) for _ in cols]
        cols = [col for cols in exclude_rows for col in cols]
        if cols:
            scores[torch.tensor(rows, device=scores.device), torch.tensor(cols, device=scores.device)] = float("-inf")
    return scores
