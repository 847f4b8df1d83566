"""Item embeddings that start from what the items' texts say (``train --item-init text``).

Before training, each item's row of the (tied) item table is set from its
texts: the mean all-MiniLM-L6-v2 embedding of its catalogue string ("title |
categories") and of the text events about it in the training part (an Amazon
review; never a validation or test click's), reduced to ``d_model``
dimensions by PCA over the items that have any, and scaled to a standard
deviation of `TEXT_INIT_STD`.  Items without texts keep the random start.

Items that read alike then start near each other, so an item with few clicks
begins where the items it resembles are, and its clicks move it from there
(the idea of Harte et al., "Leveraging Large Language Models for Sequential
Recommendation", RecSys 2023, with the text encoder the worker already
ships).  It changes only the start: the checkpoint, the worker and the
scoring are the same as with a random start.  Measured on Amazon Musical
Instruments (README, "Default flags on other data").

A fine-tune's new items start from their text too, through the parent's
trained text projection (`projected_rows`): where the worker already served
them from (README, "The items topic").
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..data.records import Dataset

__all__ = ["TEXT_INIT_STD", "item_text_rows", "items_with_texts", "projected_rows"]

# The rows' standard deviation after the PCA. The random start is 0.02; on Amazon Musical Instruments
# (four seeds each) 0.01 / 0.02 / 0.05 / 0.1 gave validation NDCG@10 0.0832 / 0.0840 / 0.0857 / 0.0834.
TEXT_INIT_STD = 0.05

log = logging.getLogger("interest_updater.train")


def items_with_texts(dataset: Dataset) -> tuple[int, int]:
    """How many of the clicked items have a title or a text event about them, and how many there are.

    What ``--item-init auto`` counts.  Categories alone do not count: items
    that share one would all start from the same row.
    """
    clicked = {e.item_id for e in dataset.clicks}
    described = set(dataset.catalogue.titles) | {e.item_id for e in dataset.texts if e.item_id and e.text}
    return len(clicked & described), len(clicked)


def item_text_rows(embeddings: torch.Tensor, pair_rows: np.ndarray, pair_items: np.ndarray, d_model: int,
                   std: float = TEXT_INIT_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """The item indices that have texts and their starting rows [n, d_model].

    ``embeddings`` [n_strings, dim] are the embedded strings; text ``pair_rows[j]``
    is about item ``pair_items[j]`` (`encoders.training.fusion.FusionData`:
    training-part texts and catalogue strings only).  Each item's mean
    embedding is centred over the items, projected on its first ``d_model``
    principal axes (fewer when the items span fewer; the rest are 0) and
    scaled to standard deviation ``std`` over all the rows' values.
    """
    none = torch.zeros(0, dtype=torch.long), torch.zeros(0, d_model)
    items, inverse = np.unique(np.asarray(pair_items, np.int64), return_inverse=True)
    if len(items) < 2:
        return none
    owner = torch.from_numpy(inverse.reshape(-1))
    sums = torch.zeros(len(items), embeddings.shape[1]).index_add_(
        0, owner, embeddings[torch.from_numpy(np.asarray(pair_rows, np.int64))].float())
    means = sums / torch.bincount(owner, minlength=len(items)).float()[:, None]
    centred = means - means.mean(0)
    _, singular, axes = torch.linalg.svd(centred, full_matrices=False)
    k = min(d_model, int((singular > 1e-5 * singular[0]).sum()))  # axes the items actually spread along
    if k == 0:  # every item reads the same: nothing to tell them apart by
        return none
    rows = torch.zeros(len(items), d_model)
    rows[:, :k] = centred @ axes[:k].T
    rows *= std / rows.std()  # k > 0: the rows spread
    explained = float((singular[:k] ** 2).sum() / (singular ** 2).sum())
    log.info("--item-init text: %d items start from their texts (%d principal axes keep %.0f%% of the variance)",
             len(items), k, 100 * explained)
    return torch.from_numpy(items), rows


def projected_rows(projected: torch.Tensor, known_rows: torch.Tensor) -> torch.Tensor:
    """New items' starting rows: their projected texts [n, d], each scaled to the known rows' median norm.

    The projection is trained to score an item's row highest, not to equal
    it, and its vectors' lengths differ from the rows'; the row is the item's
    input embedding too (the table is tied), so a new item keeps the
    direction its text gives and the length a learned item has.
    """
    norms = projected.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return projected / norms * known_rows.norm(dim=1).median()
