"""Continue training a checkpoint on a newer slice of the event log.

The worker's model ages: new items appear and tastes move. ``finetune`` loads
a checkpoint, keeps the events at or after ``since`` (all of them without it),
adds the slice's new items to the vocabulary (every known item keeps its
row, so stored histories stay valid; a new item with a title starts from it
through the parent's text projection, as the worker served it before, and
one without, or under a parent without a projection, starts like a fresh
model's), and trains on with a lower learning rate, early-stopped on the slice's
own validation split.  The result is a complete checkpoint with
``train_args.finetuned_from`` naming its parent; writing it to the directory a
worker watches (``--checkpoint``) swaps it in without a restart.

Each user active in the slice keeps up to ``context`` of their events from
before ``since`` (by default the model's ``max_len``): without them a
long-standing user would look new, and the model would be tuned on histories
the worker never sees.  Those events are trained on only where the slice is
shorter than a training window, which also guards against forgetting.
``context=0`` trains on the slice alone.  The text fusion and categories of
the parent are carried over unchanged (categories gain the slice catalogue's
new items).

The options are the parent's `TrainConfig` as its checkpoint records it
(`TrainConfig.from_record`: model shape, loss, negatives, windows, weight
decay, action weight, protocol) with a fine-tune's own schedule on top
(`finetune_config`); the epochs are the same `encoders.training.loop.fit` as
`train`'s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..checkpoint import load_categories, load_checkpoint, load_fusion
from ..data.records import Catalogue, Dataset
from ..evaluation.evaluate import rank_metrics
from ..nn.fusion import TextFusion
from ..nn.model import SequenceEncoder
from ..protocols import make_split
from ..vocab import FIRST_ITEM, ItemVocab, item_text
from .config import TrainConfig
from .loop import finish, fit, recorded_args, train_windows
from .text_init import projected_rows

__all__ = ["extend_vocab", "finetune", "finetune_config", "newer_slice", "start_new_items_from_text"]

log = logging.getLogger("interest_updater.train")


def newer_slice(dataset: Dataset, since_ms: int | None, context: int = 0) -> Dataset:
    """The events at or after ``since_ms`` (the whole log when None), with up to
    ``context`` earlier clicks of each user who has a click since then.

    A user's texts are kept from their first kept click on (from ``since_ms``
    for users without context).
    """
    if context < 0:
        raise ValueError(f"context must be 0 or more events, got {context}")
    if since_ms is None:
        return dataset
    clicks, starts = [], {}
    for user, events in dataset.sequences().items():  # each user's clicks, oldest first
        first_new = next((k for k, e in enumerate(events) if e.ts >= since_ms), None)
        if first_new is None:
            continue
        kept = events[max(0, first_new - context):]
        clicks.extend(kept)
        starts[user] = kept[0].ts
    if not clicks:
        raise ValueError(f"no click events at or after {since_ms} in {dataset.name}")
    name = f"{dataset.name} since {since_ms}" + (f" with {context} events of context" if context else "")
    return replace(dataset, name=name, clicks=clicks,
                   texts=[e for e in dataset.texts if e.ts >= starts.get(e.user_id, since_ms)])


def extend_vocab(model: SequenceEncoder, vocab: ItemVocab, items: list[str],
                 seed: int) -> tuple[SequenceEncoder, ItemVocab]:
    """Append unseen ``items`` to the vocabulary and the item table; known rows are unchanged."""
    new = sorted({i for i in items if i not in vocab})
    if not new:
        return model, vocab
    bigger = ItemVocab(vocab.item_ids + new)
    config = replace(model.config, n_items=len(bigger))
    torch.manual_seed(seed)
    grown = SequenceEncoder(config).to(next(model.parameters()).device)
    state = model.state_dict()
    table = grown.item_emb.weight.detach().clone()
    table[: len(vocab)] = state["item_emb.weight"]
    state["item_emb.weight"] = table
    if "item_cells" in state:  # new items have no place cell until a training gives them one
        cells = torch.zeros(len(bigger), dtype=torch.long, device=table.device)
        cells[: len(vocab)] = state["item_cells"]
        state["item_cells"] = cells
    grown.load_state_dict(state)
    return grown, bigger


def start_new_items_from_text(model: SequenceEncoder, known: int, vocab: ItemVocab, fusion: TextFusion | None,
                               catalogue: Catalogue) -> int:
    """Start the new items' rows (``known`` on) that have a title from their projected "title | categories".

    The worker scores an item it has never seen by that projection (README,
    "The items topic"), so the fine-tune begins from what serving knew of it
    (in direction: `projected_rows` gives it a learned row's length).
    Returns how many rows it set (0 without a projection).
    """
    titled = [row for row in range(known, len(vocab)) if catalogue.titles.get(vocab.item_id(row))]
    if fusion is None or not titled:
        return 0
    from ..nn.text import TextEncoder  # loads MiniLM: only when there is something to embed

    table = model.item_emb.weight
    texts = [item_text(catalogue.titles[i], catalogue.categories.get(i)) for i in map(vocab.item_id, titled)]
    embedded = torch.from_numpy(TextEncoder(device=str(table.device)).embed(texts)).to(table.device)
    with torch.no_grad():
        projected = fusion.to(table.device).project(embedded)
        table[torch.tensor(titled, device=table.device)] = projected_rows(projected, table[FIRST_ITEM:known])
    return len(titled)


def finetune_config(parent: TrainConfig, *, epochs: int, lr: float, batch_size: int, patience: int, device: str,
                    seed: int, max_seconds: float | None, progress: bool) -> TrainConfig:
    """The options of a fine-tune of a model trained with ``parent``: its way of learning, a schedule of its own.

    The schedule (`finetune`'s keywords, where its defaults are) replaces the
    parent's; the loss, negatives, windows, weight decay, action weight,
    protocol and model shape stay.  A fine-tune also validates every epoch
    and never refits (no epoch count is chosen for a second run), and trains
    no text fusion (the parent's is carried over).

    >>> parent = TrainConfig(lr=1e-3, loss="sampled", eval_every=5, refit=True)
    >>> child = finetune_config(parent, epochs=10, lr=3e-4, batch_size=128, patience=3, device="auto", seed=0,
    ...                         max_seconds=None, progress=False)
    >>> child.lr, child.loss, child.eval_every, child.refit
    (0.0003, 'sampled', 1, False)
    """
    return parent.replace(epochs=epochs, lr=lr, batch_size=batch_size, patience=patience, device=device, seed=seed,
                          max_seconds=max_seconds, progress=progress, eval_every=1, refit=False, text_fusion=False)


def finetune(
    checkpoint: str | Path,
    dataset: Dataset,
    out_dir: str | Path,
    *,
    since_ms: int | None = None,
    context: int | None = None,
    epochs: int = 10,
    lr: float = 3e-4,
    batch_size: int = 128,
    patience: int = 3,
    device: str = "auto",
    seed: int = 0,
    max_seconds: float | None = None,
    progress: bool = True,
    new_items_from_text: bool = True,
) -> Path:
    """Fine-tune ``checkpoint`` on ``dataset`` (from ``since_ms``) and write the result to ``out_dir``.

    ``context`` earlier events of each active user are kept (see the module
    docstring; None: the model's ``max_len``).  ``out_dir`` may be the
    checkpoint itself: it is read first and replaced atomically.
    ``new_items_from_text=False`` starts every new item at random (what
    `bench/finetune_slice.py` compares the text start with).  The other
    keywords are the fine-tune's schedule (`finetune_config`); a bad value
    raises `encoders.errors.ConfigError` naming it.

    >>> finetune("runs/ml1m", load_dataset("new-log.jsonl"), "runs/ml1m", since_ms=1_767_225_600_000)  # doctest: +SKIP
    """
    wall_start = time.perf_counter()
    model, vocab, meta = load_checkpoint(checkpoint, device)
    parent_args = meta.extra.get("train_args", {})
    parent = TrainConfig.from_record(model.config, parent_args, meta.extra.get("protocol", "auto"))
    config = finetune_config(parent, epochs=epochs, lr=lr, batch_size=batch_size, patience=patience, device=device,
                             seed=seed, max_seconds=max_seconds, progress=progress)
    fusion, categories = load_fusion(checkpoint), load_categories(checkpoint)
    context = model.config.max_len if context is None else context
    part = newer_slice(dataset, since_ms, context)
    known = len(vocab)
    model, vocab = extend_vocab(model, vocab, [e.item_id for e in part.clicks], seed)
    from_text = start_new_items_from_text(model, known, vocab, fusion, part.catalogue) if new_items_from_text else 0
    if len(vocab) > known:
        log.info("finetune: %d new items, %d of them start from their titles' text projection",
                 len(vocab) - known, from_text)
    split = make_split(part, vocab, config.protocol)
    before = rank_metrics(model, split.test, exclude_history=split.exclude_history)
    windows = train_windows(split.train, config.max_len, config.all_windows)
    selected = fit(model, windows, split, config, desc=f"finetune {part.name}")
    model.load_state_dict(selected.best_state)
    categories.update({i: c for i, c in part.catalogue.categories.items() if i in vocab})
    # The parent's record (keys it has and this one lacks stay), this run's options, and where it came from.
    train_args = {**parent_args, **recorded_args(config, model), "finetuned_from": meta.model_version,
                  "since_ms": since_ms, "context": context,
                  "new_items": {"added": len(vocab) - known, "from_text": from_text}}
    return finish(part, out_dir, model, vocab, split, {"select": selected}, config, wall_start=wall_start,
                  earlier={"test_before_finetune": before}, train_args=train_args, fusion=fusion,
                  categories=categories)
