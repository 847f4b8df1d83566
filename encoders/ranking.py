"""The ranking rule, one for evaluation and serving alike.

Scores are [B, n_items] over the item table's rows: a query vector's dot
product with each item's embedding, plus an optional per-item bias
(`item_scores`).  Rows below `FIRST_ITEM` (padding, unknown) never rank, nor
do the rows a caller excludes for each input (`mask_scores`: the user's
history, when history is excluded).  Serving takes the best K that are left
(`top_items`); evaluation counts, per case, the items scoring strictly
higher than the target (ties in the target's favour) and accumulates
metrics with `add_rank_metrics`.  The worker (`InterestEncoder.top_k`) and
`encoders.evaluation` call these same functions, so an offline figure and
an online list come from one rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .vocab import FIRST_ITEM

__all__ = ["KS", "add_rank_metrics", "item_scores", "mask_scores", "top_items"]

KS = (10, 20)


def item_scores(vectors: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """[B, n_items] scores: ``vectors`` [B, d] against the item table [n_items, d], plus ``bias``.

    >>> item_scores(torch.ones(1, 2), torch.eye(2), torch.tensor([[0.0, 0.5]])).tolist()
    [[1.0, 1.5]]
    """
    scores = vectors @ table.T
    if bias is not None:
        scores += bias  # in place: [B, n_items] is the largest tensor of a refresh
    return scores


def mask_scores(scores: torch.Tensor, exclude: Sequence[Sequence[int] | np.ndarray] | None) -> torch.Tensor:
    """The masking rule, in place: padding, unknown and ``exclude[i]`` (item rows) of row i score -inf.

    ``exclude`` is None to keep every real item (evaluation with history kept,
    serving with ``exclude_seen`` off); otherwise one sequence of row indices
    per score row, e.g. each input's ``SeqArrays.items``.

    >>> mask_scores(torch.zeros(2, 5), [[3], []]).tolist()[0]
    [-inf, -inf, 0.0, -inf, 0.0]
    """
    scores[:, :FIRST_ITEM] = float("-inf")  # padding and unknown are never recommendations
    if exclude is not None and len(exclude):
        # Right-padded with 0 (the padding row, masked anyway): one scatter for the batch.
        width = max(max(len(cols) for cols in exclude), 1)
        rows = np.zeros((len(exclude), width), dtype=np.int64)
        for row, cols in enumerate(exclude):
            rows[row, : len(cols)] = cols
        scores.scatter_(1, torch.from_numpy(rows).to(scores.device), float("-inf"))
    return scores


def top_items(scores: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """Per row, the best ``k`` ``(item row, score)``, best first; masked (-inf) items are left out.

    >>> top_items(mask_scores(torch.tensor([[9.0, 9.0, 1.0, 3.0]]), None), 3)
    [[(3, 3.0), (2, 1.0)]]
    """
    values, indices = (t.cpu().tolist() for t in scores.topk(min(k, scores.shape[1]), dim=1))
    return [[(i, v) for v, i in zip(vals, idx) if v != float("-inf")] for vals, idx in zip(values, indices)]


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
