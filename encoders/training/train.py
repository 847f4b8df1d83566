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
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import CheckpointMetadata, save_checkpoint
from ..config import EncoderConfig
from ..data.records import Dataset
from ..evaluation.actions import next_action_report, target_action_counts
from ..evaluation.evaluate import baseline_metrics, rank_metrics
from ..features import SeqArrays, pad_batch
from ..nn.model import SequenceEncoder, resolve_device
from ..protocols import Split, make_split
from ..vocab import FIRST_ITEM, ItemVocab
from .plots import plot_training

__all__ = ["LOSSES", "full_softmax_loss", "next_action_loss", "sampled_softmax_loss", "train"]

LOSSES = ("auto", "full", "sampled")
# Above this many items "auto" samples: a full softmax costs N x n_items x d per batch.
FULL_SOFTMAX_MAX_ITEMS = 50_000


@dataclass(frozen=True)
class _EpochLog:
    epoch: int
    loss: float
    seconds: float  # training only
    valid_seconds: float
    valid: dict[str, Any] | None


class _EarlyStopping:
    """Keeps the best weights by validation NDCG and counts evaluations since."""

    def __init__(self, patience: int, model: SequenceEncoder) -> None:
        self.patience = patience
        self.best_ndcg, self.best_epoch, self.stale = -1.0, 0, 0
        self.best_state = _snapshot(model)

    def update(self, epoch: int, ndcg: float, model: SequenceEncoder) -> bool:
        """Record an evaluation; True when patience is exhausted."""
        if ndcg > self.best_ndcg:
            self.best_ndcg, self.best_epoch, self.stale = ndcg, epoch, 0
            self.best_state = _snapshot(model)
        else:
            self.stale += 1
        return self.stale >= self.patience


def _train_windows(train: list[SeqArrays], max_len: int, all_windows: bool) -> list[SeqArrays]:
    """Training windows of max_len + 1 events (>= 2 events each), newest first per sequence.

    Windows of one sequence overlap by one event, so every transition is
    trained exactly once; without ``all_windows`` only the newest is kept.
    """
    windows = []
    for seq in train:
        stop = len(seq)
        while stop >= 2:
            windows.append(seq.window(max(0, stop - (max_len + 1)), stop))
            if not all_windows:
                break
            stop -= max_len
    return windows


def _batch_tensors(windows: list[SeqArrays], device: torch.device) -> tuple[torch.Tensor, ...]:
    # Inputs are events 0..n-2 and targets events 1..n-1 (item and action); all right-padded with 0.
    length = max(len(w) for w in windows) - 1
    inputs = pad_batch([w.window(None, -1) for w in windows], length)
    targets = pad_batch([w.window(1, None) for w in windows], length)
    arrays = (inputs.items, inputs.actions, inputs.gaps, targets.items, targets.actions)
    return tuple(torch.from_numpy(a).to(device) for a in arrays)


class _FullSoftmaxXent(torch.autograd.Function):
    """Mean cross-entropy of ``h @ w.T`` against ``targets``, chunk by chunk.

    Equal to ``F.cross_entropy(h @ w.T, targets)``, but the [N, n_items]
    logits never exist at once: each chunk's softmax is turned into its
    gradients right away (they are all the backward pass needs).  On CPU this
    is ~1.7x faster than the plain version, whose huge temporary tensors cost
    more in allocation and memory traffic than in arithmetic; on GPU it
    bounds memory by the chunk, not the catalogue.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        n = h.shape[0]
        grad_h, grad_w = torch.empty_like(h), torch.zeros_like(w)
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        for start in range(0, n, chunk):
            hc, tc = h[start : start + chunk], targets[start : start + chunk]
            rows = torch.arange(hc.shape[0], device=h.device)
            logits = hc @ w.T
            lse = torch.logsumexp(logits, 1)
            total += (lse - logits[rows, tc]).sum(dtype=torch.float64)
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            probs[rows, tc] -= 1.0
            probs.div_(n)
            grad_h[start : start + chunk] = probs @ w
            grad_w.addmm_(probs.T, hc)
        ctx.save_for_backward(grad_h, grad_w)
        return (total / n).to(h.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad, grad_w * grad, None, None


def full_softmax_loss(
    hidden: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, chunk: int = 2048
) -> torch.Tensor:
    """Full-catalogue softmax cross-entropy of ``hidden`` [N, d] over ``table`` [n, d]."""
    return _FullSoftmaxXent.apply(hidden, table, targets, chunk)


def sampled_softmax_loss(
    hidden: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, negatives: int
) -> torch.Tensor:
    """Cross-entropy of each target against ``negatives`` uniform items shared by the batch.

    A sampled item equal to a row's target is masked out of that row, so a
    target is never its own negative.  Uniform sampling needs no logQ
    correction.
    """
    negs = torch.randint(0, table.shape[0], (negatives,), device=hidden.device)
    pos = (hidden * table[targets]).sum(-1, keepdim=True)
    neg = (hidden @ table[negs].T).masked_fill(negs[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([pos, neg], 1)
    return torch.nn.functional.cross_entropy(logits, torch.zeros_like(targets))


def next_action_loss(model: SequenceEncoder, hidden: torch.Tensor, target_actions: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next event's action over the non-padding positions.

    ``hidden`` [B, L, d] are the model's hidden states and ``target_actions``
    [B, L] the action index of the event after each position, 0 (padding)
    where there is none; padded positions add nothing to the loss.
    """
    valid = target_actions > 0
    return torch.nn.functional.cross_entropy(model.next_action_logits(hidden[valid]), target_actions[valid])


def _step(model: SequenceEncoder, opt: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...],
          negatives: int | None, action_weight: float = 0.0) -> float:
    items, actions, gaps, targets, target_actions = batch
    hidden = model(items, actions, gaps)
    valid = targets > 0
    # Score only real items (rows 2..): padding/unknown are never targets.
    h, table, t = hidden[valid], model.item_table()[FIRST_ITEM:], targets[valid] - FIRST_ITEM
    loss = full_softmax_loss(h, table, t) if negatives is None else sampled_softmax_loss(h, table, t, negatives)
    if action_weight > 0 and model.has_action_head:
        loss = loss + action_weight * next_action_loss(model, hidden, target_actions)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


def _batches(windows: list[SeqArrays], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random batches of similar lengths, in random order.

    Shuffle, then sort by length within pools of 16 batches: batches stay
    random, but padding (wasted compute) drops from ~45% to a few percent on ML-1M.
    """
    order = rng.permutation(len(windows))
    lengths = np.array([len(w) for w in windows])
    pool = 16 * batch_size
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _epoch(
    model: SequenceEncoder,
    opt: torch.optim.Optimizer,
    windows: list[SeqArrays],
    batch_size: int,
    rng: np.random.Generator,
    bar: tqdm,
    postfix: dict[str, str],
    negatives: int | None,
    action_weight: float = 0.0,
) -> float:
    model.train()
    device = next(model.parameters()).device
    losses = []
    for batch_idx in _batches(windows, batch_size, rng):
        batch = [windows[i] for i in batch_idx]
        losses.append(_step(model, opt, _batch_tensors(batch, device), negatives, action_weight))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", **postfix, refresh=False)
    return float(np.mean(losses))


def _snapshot(model: SequenceEncoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass(frozen=True)
class _Fit:
    """What one optimisation run produced."""

    logs: list[_EpochLog]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    seconds: float


def _target_actions(train: list[SeqArrays], max_len: int, all_windows: bool) -> np.ndarray:
    """Count per action index of the training targets (events 1.. of each training window)."""
    return target_action_counts(_train_windows(train, max_len, all_windows))


def _action_classes(counts: np.ndarray) -> list[int]:
    """Action indices that occur as training targets, in `ACTIONS` order (never padding)."""
    return [int(c) for c in np.flatnonzero(counts) if c > 0]


def _new_model(config: EncoderConfig, seed: int, dev: torch.device) -> SequenceEncoder:
    torch.manual_seed(seed)
    return SequenceEncoder(config).to(dev)


def _fit(
    model: SequenceEncoder,
    windows: list[SeqArrays],
    split: Split | None,
    opts: dict[str, Any],
    epochs: int,
    desc: str,
) -> _Fit:
    """Train ``model`` for up to ``epochs``; with ``split`` validate and stop early.

    Without a split (the refit) every epoch runs and the last weights are kept.
    """
    rng = np.random.default_rng(opts["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=opts["lr"], betas=(0.9, 0.98), weight_decay=opts["weight_decay"])
    stopper, logs, postfix = _EarlyStopping(opts["patience"], model), [], {}  # postfix: tqdm's val metrics
    start = time.perf_counter()
    n_batches = -(-len(windows) // opts["batch_size"])
    with tqdm(total=epochs * n_batches, disable=not opts["progress"], desc=desc) as bar:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            loss = _epoch(model, opt, windows, opts["batch_size"], rng, bar, postfix, opts["negatives"],
                          opts.get("action_weight", 0.0))
            t1 = time.perf_counter()
            out_of_time = opts["max_seconds"] is not None and t1 - start > opts["max_seconds"]
            # Always validate before stopping, so the kept weights are validated ones.
            due = split is not None and (epoch % opts["eval_every"] == 0 or epoch == epochs or out_of_time)
            valid = rank_metrics(model, split.valid, exclude_history=split.exclude_history) if due else None
            logs.append(_EpochLog(epoch, loss, t1 - t0, time.perf_counter() - t1, valid))
            if split is None:
                if out_of_time:
                    break
                continue
            if valid is None:
                continue
            postfix.update(val_ndcg10=f"{valid['ndcg@10']:.4f}", val_hr10=f"{valid['hr@10']:.4f}")
            if stopper.update(epoch, valid["ndcg@10"], model) or out_of_time:
                break
    if split is None:
        return _Fit(logs, len(logs), _snapshot(model), time.perf_counter() - start)
    return _Fit(logs, stopper.best_epoch, stopper.best_state, time.perf_counter() - start)


def _negatives(loss: str, negatives: int, n_items: int) -> int | None:
    """None for a full softmax, else the number of sampled negatives."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss == "full" or (loss == "auto" and n_items <= FULL_SOFTMAX_MAX_ITEMS):
        return None
    if negatives < 1:
        raise ValueError(f"negatives must be >= 1 for a sampled softmax, got {negatives}")
    return negatives


def train(
    dataset: Dataset,
    out_dir: str | Path,
    *,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 2,
    max_len: int = 200,
    dropout: float = 0.2,
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    loss: str = "auto",
    negatives: int = 256,
    all_windows: bool = False,
    refit: bool = False,
    protocol: str = "auto",
    device: str = "auto",
    seed: int = 0,
    patience: int = 5,
    eval_every: int = 1,
    max_seconds: float | None = None,
    progress: bool = True,
    action_weight: float = 0.2,
    text_fusion: bool = False,
) -> Path:
    """Train a `SequenceEncoder` on ``dataset`` and write a checkpoint to ``out_dir``.

    Validation NDCG@10 is measured every ``eval_every`` epochs; training stops
    after ``patience`` evaluations without improvement and the best weights
    are saved (or, with ``refit``, a model retrained on training + validation
    targets for the best epoch count), with the test metrics in the metadata,
    a per-epoch ``report.json`` and a ``training.png`` curve beside them.
    ``max_seconds`` also stops training at the first epoch end past that
    wall-clock budget (the run is then only as reproducible as the machine's speed).
    ``action_weight`` weighs the next-action loss; 0 (or a dataset whose
    training targets have a single action) trains no next-action head.
    ``text_fusion`` then trains a text projection and gate on the frozen
    encoder (`encoders.fusion`; leave-one-out data with texts or titles) and
    saves it in the checkpoint, with the behaviour / text / fused test figures
    in the report.  The catalogue's categories are always saved.

    >>> from encoders.datasets import synthetic
    >>> train(synthetic(), "/tmp/ckpt-synth", epochs=3, progress=False)  # doctest: +SKIP
    PosixPath('/tmp/ckpt-synth')
    """
    wall_start = time.perf_counter()
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # ~fp32 quality, tensor-core speed
    if action_weight < 0:
        raise ValueError(f"action_weight must be >= 0, got {action_weight}")
    vocab = ItemVocab.from_items(e.item_id for e in dataset.clicks)
    split = make_split(dataset, vocab, protocol)
    # A head needs something to choose between: one action (ML-1M) keeps the plain model.
    head = action_weight > 0 and len(_action_classes(_target_actions(split.train, max_len, all_windows))) >= 2
    config = EncoderConfig(len(vocab), d_model, n_layers, n_heads, max_len, dropout, action_head=head)
    opts = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "loss": loss,
            "negatives": _negatives(loss, negatives, len(vocab)), "all_windows": all_windows, "refit": refit,
            "seed": seed, "patience": patience, "eval_every": eval_every, "max_seconds": max_seconds,
            "device": str(dev), "progress": progress, "action_weight": action_weight if head else 0.0}
    model = _new_model(config, seed, dev)
    fit = _fit(model, _train_windows(split.train, max_len, all_windows), split, opts, epochs,
               f"train {dataset.name}")
    model.load_state_dict(fit.best_state)
    fits = {"select": fit}
    selected_test = None
    if refit:
        # The strict figure (never trained on validation targets), kept for comparison.
        selected_test = rank_metrics(model, split.test, exclude_history=split.exclude_history)
        full = make_split(dataset, vocab, protocol, through_valid=True)
        model = _new_model(config, seed, dev)
        fits["refit"] = _fit(model, _train_windows(full.train, max_len, all_windows), None, opts, fit.best_epoch,
                             f"refit {dataset.name} (train + valid)")
    fusion, fusion_report = _text_fusion(model, vocab, dataset, split, dev, seed) if text_fusion else (None, None)
    return _finish(dataset, out_dir, model, vocab, split, fits, wall_start, opts,
                   {"test_before_refit": selected_test}, fusion=fusion, fusion_report=fusion_report,
                   categories=dataset.catalogue.categories)


def _text_fusion(model: SequenceEncoder, vocab: ItemVocab, dataset: Dataset, split: Split, dev: torch.device,
                 seed: int) -> tuple[Any, dict[str, Any] | None]:
    """A `TextFusion` trained on the frozen encoder, and its report with the test figures."""
    from .fusion import evaluate_fusion, prepare, train_fusion
    from ..nn.text import TextEncoder

    if split.protocol != "leave-one-out":
        return None, {"skipped": f"text fusion is trained on leave-one-out splits, not {split.protocol}"}
    data = prepare(dataset, vocab, TextEncoder(device=str(dev)))
    if len(data.pair_rows) == 0:
        return None, {"skipped": "no text events about items and no catalogue titles to pair texts with"}
    model = model.eval().to("cpu")
    fusion, report = train_fusion(model, vocab, dataset, data=data, seed=seed)
    report["test"] = evaluate_fusion(fusion, model, data, "test")
    model.to(dev)
    return fusion, report


def _next_action_report(model: SequenceEncoder, split: Split, opts: dict[str, Any]) -> dict[str, Any] | None:
    """The head vs the majority class on the test cases; None without a head.

    Classes and majority come from the training targets of ``split``'s windows
    (those of the selection run when a refit followed).
    """
    if not model.has_action_head:
        return None
    counts = _target_actions(split.train, model.config.max_len, bool(opts.get("all_windows", False)))
    return next_action_report(model, split.test, _action_classes(counts), int(np.argmax(counts)))


def _finish(
    dataset: Dataset,
    out_dir: str | Path,
    model: SequenceEncoder,
    vocab: ItemVocab,
    split: Split,
    fits: dict[str, _Fit],
    wall_start: float,
    opts: dict[str, Any],
    earlier: dict[str, dict[str, Any] | None],
    *,
    fusion: Any = None,
    fusion_report: dict[str, Any] | None = None,
    categories: dict[str, tuple[str, ...]] | None = None,
) -> Path:
    """Evaluate the final weights on the test split, save checkpoint, report and curve.

    ``earlier`` holds test figures of other weights kept for comparison, by
    report key (``test_before_refit``, ``test_before_finetune``).
    """
    select = fits["select"]
    test = rank_metrics(model, split.test, exclude_history=split.exclude_history)
    valid = next((log.valid for log in select.logs if log.epoch == select.best_epoch), None) or {}
    metrics = {f"test_{k}": v for k, v in test.items() if k != "cases"}
    metrics.update({f"valid_{k}": v for k, v in valid.items() if k != "cases"})
    train_seconds = sum(f.seconds for f in fits.values())
    args = {k: v for k, v in opts.items() if k != "progress"}
    actions = _next_action_report(model, split, opts)
    if actions is not None:
        metrics.update(test_action_accuracy=actions["model"]["accuracy"],
                       test_action_macro_f1=actions["model"]["macro_f1"])
    meta = CheckpointMetadata(
        dataset=dataset.name,
        epochs=sum(len(f.logs) for f in fits.values()),
        train_seconds=round(train_seconds, 2),
        metrics=metrics,
        extra={"best_epoch": select.best_epoch, "cases": test["cases"], "protocol": split.protocol,
               "train_args": args,
               **({"action_classes": actions["classes"], "action_majority": actions["majority_class"]}
                  if actions is not None else {})},
    )
    path = save_checkpoint(out_dir, model, vocab, meta, fusion=fusion, categories=categories)
    report = {
        "dataset": dataset.name,
        "protocol": split.protocol,
        "config": model.config.to_dict(),
        "train_args": args,
        "epochs": [asdict(log) for log in select.logs],
        "refit_epochs": [asdict(log) for log in fits["refit"].logs] if "refit" in fits else None,
        "best_epoch": select.best_epoch,
        "test": test,
        **earlier,
        "refit_seconds": round(fits["refit"].seconds, 2) if "refit" in fits else None,
        "baselines_test": baseline_metrics(dataset, "test", split.protocol),
        "next_action_test": actions,
        "text_fusion": fusion_report,
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - wall_start, 2),
    }
    (path / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    plot_training(report, path / "training.png")
    return path
