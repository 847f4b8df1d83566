"""How well the next-action head predicts the action of the target event.

The head (`SequenceEncoder.next_action_logits`) is scored on the same cases
as the ranking: the input history predicts the action of the target event.
Only the checkpoint's ``action_classes`` (the actions that were training
targets) compete; a target outside them is a miss.  Macro-F1 averages the
per-class F1 over the classes that occur among the targets or the
predictions (a class absent from both has no defined F1).  The majority
baseline predicts the most frequent training target for every case.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import read_metadata
from ..data.records import Dataset
from ..features import SeqArrays, pad_batch
from ..nn.model import SequenceEncoder
from ..protocols import EvalCases, make_split
from ..vocab import ACTIONS, ItemVocab
from .evaluate import resolve_model

__all__ = ["action_metrics", "action_table", "classification_metrics", "evaluate_actions", "next_action_report",
           "predict_actions", "target_action_counts"]


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
    model, vocab = resolve_model(model_or_checkpoint, vocab, device)
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
