"""Offline training of the sequence encoder (SASRec-style, softmax over the catalogue).

The split comes from `encoders.protocols` (leave-one-out per user, or next
item within held-out sessions).  Each training sequence is cut to windows of
``max_len + 1`` events (the last one only, or with ``all_windows`` every
non-overlapping window back to the start of long histories); the model reads
events 0..n-2 of a window and at every position predicts the next item with
a cross-entropy over the whole catalogue (``loss="full"``, scored against the
tied item table) or over the target and ``negatives`` uniformly sampled items
shared by the batch (``loss="sampled"``, for catalogues too large for a full
softmax).  Validation NDCG@10 drives early stopping and the best weights are
kept.  With ``refit`` a second run from the same seed trains for the chosen
number of epochs on the training part plus the validation targets, the way
HSTU's published ML-1M figures were trained; it is the model saved.  Runs are
seeded: the same data, seed, device and thread count give the same checkpoint.

With ``action_weight > 0`` and at least two distinct actions among the
training targets, the model gets a next-action head
(`SequenceEncoder.next_action_logits`) and the loss adds ``action_weight``
times the cross-entropy of the next event's action at every position.  The
actions seen as targets are saved as ``action_classes`` in the metadata (the
classes the online path softmaxes over).  A dataset with one action (ML-1M:
all "click") trains exactly the model it trained before the head existed.

Every option is a field of `encoders.training.config.TrainConfig`; the
epochs themselves are `encoders.training.loop.fit`, shared with `finetune`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import EncoderConfig
from ..data.records import Dataset
from ..errors import ConfigError
from ..evaluation.evaluate import rank_metrics
from ..features import cell_of, item_places
from ..nn.model import SequenceEncoder, resolve_device
from ..protocols import Split, make_split
from ..vocab import ItemVocab
from .config import LOSSES, TrainConfig
from .loop import action_classes, finish, fit, train_windows, training_action_counts
from .text_init import item_text_rows

# train and its options (LOSSES and TrainConfig live in .config; importable from here as before).
__all__ = ["LOSSES", "TrainConfig", "train"]

log = logging.getLogger("interest_updater.train")


def train(dataset: Dataset, out_dir: str | Path, config: TrainConfig | None = None, **options: Any) -> Path:
    """Train a `SequenceEncoder` on ``dataset`` and write a checkpoint to ``out_dir``.

    The options are ``config`` (default: `TrainConfig()`) with any
    ``options`` given as keywords on top (``epochs=3`` is
    ``config.replace(epochs=3)``); an unknown keyword or a bad value raises
    `encoders.errors.ConfigError` naming it, before any work is done.

    Validation NDCG@10 is measured every ``eval_every`` epochs; training stops
    after ``patience`` evaluations without improvement and the best weights
    are saved (or, with ``refit``, a model retrained on training + validation
    targets for the best epoch count), with the test metrics in the metadata,
    a per-epoch ``report.json`` and a ``training.png`` curve beside them.
    ``max_seconds`` bounds the whole run: every training stage (encoder,
    refit, fusion projection, fusion gate) stops at its first epoch end past
    that wall-clock budget, counted from the start, keeping its best weights
    (the run is then only as reproducible as the machine's speed); embedding
    the texts for the fusion is not cut short.
    ``action_weight`` weighs the next-action loss; 0 (or a dataset whose
    training targets have a single action) trains no next-action head.
    ``text_fusion`` then trains a text projection and gate on the frozen
    encoder (`encoders.training.fusion`; leave-one-out data with texts or
    titles) and saves it in the checkpoint, with the behaviour / text / fused
    test figures in the report.  The catalogue's categories are always saved.

    >>> from encoders.data import synthetic
    >>> train(synthetic(), "/tmp/ckpt-synth", epochs=3, progress=False)  # doctest: +SKIP
    PosixPath('/tmp/ckpt-synth')
    >>> from encoders.training.config import TrainConfig
    >>> config = TrainConfig(d_model=32, epochs=3, progress=False)
    >>> train(synthetic(), "/tmp/ckpt-synth", config, seed=1)  # doctest: +SKIP
    PosixPath('/tmp/ckpt-synth')
    """
    wall_start = time.perf_counter()
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, not {type(config).__name__} (from_dict reads a dict)")
    config = TrainConfig.from_dict(options, "train() keywords", base=config or TrainConfig())
    dev = resolve_device(config.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # ~fp32 quality, tensor-core speed
    vocab = ItemVocab.from_items(e.item_id for e in dataset.clicks)
    split = _with_history(make_split(dataset, vocab, config.protocol), config.history)
    # A head needs something to choose between: one action (ML-1M) keeps the plain model.
    counts = training_action_counts(split.train, config.max_len, config.all_windows)
    head = config.action_weight > 0 and len(action_classes(counts)) >= 2
    context = config.context != "off" and (config.context != "auto" or any(e.context for e in dataset.clicks))
    encoder = config.encoder_config(len(vocab), action_head=head, context=context)
    cells = _item_cells(dataset, vocab) if context else None
    # Embedded before the model only when they start it; for the fusion alone, after the encoder as before.
    texts, text_rows = (_text_start(dataset, vocab, split, dev, encoder.d_model) if config.item_init == "text"
                        else (None, None))
    model = _new_model(encoder, config.seed, dev, cells, text_rows)
    selected = fit(model, train_windows(split.train, config.max_len, config.all_windows), split, config,
                   desc=f"train {dataset.name}")
    model.load_state_dict(selected.best_state)
    fits = {"select": selected}
    selected_test, refit_skipped = None, _refit_overrun(selected, config, wall_start) if config.refit else None
    if refit_skipped:
        log.warning("%s", refit_skipped["reason"])
    elif config.refit:
        # The strict figure (never trained on validation targets), kept for comparison.
        selected_test = rank_metrics(model, split.test, exclude_history=split.exclude_history)
        full = _with_history(make_split(dataset, vocab, config.protocol, through_valid=True), config.history)
        model = _new_model(encoder, config.seed, dev, cells, text_rows)
        fits["refit"] = fit(model, train_windows(full.train, config.max_len, config.all_windows), None,
                            config.replace(max_seconds=_seconds_left(config, wall_start)),
                            epochs=selected.best_epoch, desc=f"refit {dataset.name} (train + valid)",
                            lr_replay=[log.lr for log in selected.logs[:selected.best_epoch]])
        model.load_state_dict(fits["refit"].best_state)  # its last weights, or their average (--ema-epochs)
    deadline = None if config.max_seconds is None else wall_start + config.max_seconds
    fusion, fusion_report = (_text_fusion(model, vocab, dataset, split, texts, dev, config.seed, deadline)
                             if config.text_fusion else (None, None))
    return finish(dataset, out_dir, model, vocab, split, fits, config, wall_start=wall_start,
                  earlier={"test_before_refit": selected_test, "refit_skipped": refit_skipped}, fusion=fusion, fusion_report=fusion_report,
                  categories=dataset.catalogue.categories)


def _refit_overrun(selected, config: TrainConfig, wall_start: float) -> dict[str, str] | None:
    """Why the refit is skipped (it would run past --max-seconds), or None.

    A refit cut short by the time limit would be saved in place of a better,
    fully trained selection run; its time is estimated from the selection
    run's seconds per epoch (training only: a refit does not validate).
    """
    left = _seconds_left(config, wall_start)
    if left is None or not selected.logs:
        return None
    needed = selected.best_epoch * sum(e.seconds for e in selected.logs) / len(selected.logs)
    if needed <= left:
        return None
    return {"reason": f"refit skipped: its {selected.best_epoch} epochs need about {needed:.0f} s and "
                      f"{left:.0f} s of --max-seconds are left; the model chosen on validation is saved"}


def _seconds_left(config: TrainConfig, wall_start: float) -> float | None:
    """What is left of --max-seconds (at least one second: a stage always runs one epoch)."""
    if config.max_seconds is None:
        return None
    return max(1.0, wall_start + config.max_seconds - time.perf_counter())


def _with_history(split: Split, history: str) -> Split:
    """``history`` "keep" or "exclude" overrides the protocol's rule for validation and test."""
    return split if history == "auto" else replace(split, exclude_history=history == "exclude")


def _new_model(config: EncoderConfig, seed: int, dev: torch.device, item_cells: torch.Tensor | None = None,
               text_rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> SequenceEncoder:
    """A freshly initialised model; ``text_rows`` (item indices, rows) replace those items' random start."""
    torch.manual_seed(seed)
    model = SequenceEncoder(config).to(dev)
    if item_cells is not None:
        model.set_item_cells(item_cells)
    if text_rows is not None:
        items, rows = text_rows
        with torch.no_grad():
            model.item_emb.weight[items.to(dev)] = rows.to(dev)
    return model


def _item_cells(dataset: Dataset, vocab: ItemVocab) -> torch.Tensor:
    """Each item's place cell, from its place (`item_places`; 0: none; a place does not move)."""
    return torch.tensor([0 if np.isnan(lat) else cell_of(lat, lon)
                         for lat, lon in item_places(dataset.clicks, vocab)], dtype=torch.long)


def _embedded_texts(dataset: Dataset, vocab: ItemVocab, dev: torch.device) -> Any:
    """Every text and catalogue string embedded once (`fusion.FusionData`: for the text start and the fusion)."""
    from ..nn.text import TextEncoder
    from .fusion import prepare

    return prepare(dataset, vocab, TextEncoder(device=str(dev)))


def _text_start(dataset: Dataset, vocab: ItemVocab, split: Split, dev: torch.device,
                d_model: int) -> tuple[Any, tuple[torch.Tensor, torch.Tensor]]:
    """--item-init text: the embedded texts, and the items that have some with their starting rows.

    The (text, item) pairs keep the training part's texts by leaving out each
    user's last two clicks, so only a leave-one-out split can use them.
    """
    if split.protocol != "leave-one-out":
        raise ConfigError("values", f"item_init='text' needs a leave-one-out split, not {split.protocol}",
                          what="training config")
    texts = _embedded_texts(dataset, vocab, dev)
    items, rows = item_text_rows(texts.emb, texts.pair_rows, texts.pair_items, d_model)
    if len(items) == 0:
        raise ConfigError("values", "item_init='text' needs items with titles or text events about them in the "
                                    "training part; this data has none", what="training config")
    return texts, (items, rows)


def _text_fusion(model: SequenceEncoder, vocab: ItemVocab, dataset: Dataset, split: Split, data: Any,
                 dev: torch.device, seed: int, deadline: float | None) -> tuple[Any, dict[str, Any] | None]:
    """A `TextFusion` trained on the frozen encoder, and its report with the test figures.

    ``data``: the texts already embedded for --item-init text, or None (embedded here).
    """
    from .fusion import evaluate_fusion, train_fusion

    if split.protocol != "leave-one-out":
        return None, {"skipped": f"text fusion is trained on leave-one-out splits, not {split.protocol}"}
    data = _embedded_texts(dataset, vocab, dev) if data is None else data
    if len(data.pair_rows) == 0:
        return None, {"skipped": "no text events about items and no catalogue titles to pair texts with"}
    model = model.eval().to("cpu")
    fusion, report = train_fusion(model, vocab, dataset, data=data, seed=seed, deadline=deadline)
    report["test"] = evaluate_fusion(fusion, model, data, "test")
    model.to(dev)
    return fusion, report
