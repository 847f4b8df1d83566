"""The steps every training run takes, shared by `train` and `finetune`.

`train_windows` cuts the training sequences of a split into the windows the
model learns from; `fit` runs the epochs (shuffled batches, AdamW,
a full or sampled softmax over the catalogue plus the next-action loss) with
early stopping on validation NDCG@10; `finish` evaluates the final weights on
the test split and writes the checkpoint, report.json and training.png.
Every option comes from a `TrainConfig`::

    config = TrainConfig(epochs=10, progress=False)
    split = make_split(dataset, vocab)
    result = fit(model, train_windows(split.train, config.max_len, config.all_windows), split, config)
    model.load_state_dict(result.best_state)
    finish(dataset, "runs/model", model, vocab, split, {"select": result}, config)

`encoders.training.train.train` and `encoders.training.finetune.finetune` are
those three steps around a new model and around a loaded one.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import CheckpointMetadata, save_checkpoint
from ..data.records import Dataset
from ..evaluation.actions import next_action_report, target_action_counts
from ..evaluation.evaluate import baseline_metrics, rank_metrics
from ..features import SeqArrays, pad_batch
from ..nn.model import SequenceEncoder, resolve_device
from ..protocols import Split
from ..vocab import FIRST_ITEM, ItemVocab
from .config import TrainConfig
from .plots import plot_training

__all__ = ["EpochLog", "FitResult", "action_classes", "batch_tensors", "finish", "fit", "full_softmax_loss",
           "next_action_loss", "precision_dtype", "recorded_args", "sampled_softmax_loss", "train_windows",
           "training_action_counts"]


@dataclass(frozen=True)
class EpochLog:
    """One epoch of `fit`, as report.json lists them."""

    epoch: int
    loss: float
    seconds: float  # training only
    valid_seconds: float
    valid: dict[str, Any] | None  # the validation metrics, None where the epoch was not validated
    lr: float | None = None  # the learning rate of the epoch's last step


@dataclass(frozen=True)
class FitResult:
    """What one optimisation run (`fit`) produced."""

    logs: list[EpochLog]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    seconds: float


class _WeightAverage:
    """A moving average of the trained weights: what validation, early stopping and the checkpoint read.

    The mean of every step's weights until ``epochs`` epochs of steps have
    run, then an exponential moving average with that time constant (so the
    first epochs are not pulled toward the random start).  Training steps
    the trained weights; the average only follows them.  Averaging smooths
    the step-to-step noise of the last epochs: on ML-1M the average over 3
    epochs was 0.9% above the trained weights' validation NDCG@10 on average
    after epoch 30, in the same run, and +0.6% on test at the two's best
    epochs (README, "Quality on ML-1M").
    """

    def __init__(self, model: SequenceEncoder, epochs: float, steps_per_epoch: int) -> None:
        self.model = copy.deepcopy(model)
        self.span = max(1.0, epochs * steps_per_epoch)  # steps
        self.steps = 0

    def update(self, trained: SequenceEncoder) -> None:
        self.steps += 1
        rate = 1.0 / min(self.steps, self.span)
        with torch.no_grad():
            for mean, weight in zip(self.model.parameters(), trained.parameters()):
                mean.lerp_(weight, rate)


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


def train_windows(train: list[SeqArrays], max_len: int, all_windows: bool) -> list[SeqArrays]:
    """Training windows of max_len + 1 events (>= 2 events each), newest first per sequence.

    Windows of one sequence overlap by one event, so every transition is
    trained exactly once; without ``all_windows`` only the newest is kept.
    ``train`` is a split's training part (`encoders.protocols.Split.train`).
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


def batch_tensors(windows: list[SeqArrays], device: torch.device) -> tuple[torch.Tensor | None, ...]:
    """A training batch: input items, actions and gaps [B, L], target items and actions [B, L],
    and the inputs' context features [B, L, C] (None when no window has any).

    Inputs are events 0..n-2 of each window and targets events 1..n-1; all
    right-padded with 0 to the longest window.
    """
    length = max(len(w) for w in windows) - 1
    inputs = pad_batch([w.window(None, -1) for w in windows], length)
    targets = pad_batch([w.window(1, None) for w in windows], length)
    arrays = (inputs.items, inputs.actions, inputs.gaps, targets.items, targets.actions, inputs.context)
    return tuple(None if a is None else torch.from_numpy(a).to(device) for a in arrays)


def training_action_counts(train: list[SeqArrays], max_len: int, all_windows: bool) -> np.ndarray:
    """Count per action index of the training targets (events 1.. of each training window)."""
    return target_action_counts(train_windows(train, max_len, all_windows))


def action_classes(counts: np.ndarray) -> list[int]:
    """Action indices that occur as training targets, in `ACTIONS` order (never padding)."""
    return [int(c) for c in np.flatnonzero(counts) if c > 0]


class _FullSoftmaxXent(torch.autograd.Function):
    """Mean cross-entropy of ``h @ w.T`` against ``targets``, chunk by chunk.

    Equal to ``F.cross_entropy(h @ w.T, targets)``, but the [N, n_items]
    logits never exist at once: each chunk's softmax is turned into its
    gradients right away (they are all the backward pass needs).  On CPU this
    is ~1.7x faster than the plain version, whose huge temporary tensors cost
    more in allocation and memory traffic than in arithmetic; on GPU it
    bounds memory by the chunk, not the catalogue.  The softmax takes one
    ``exp`` per logit (``logsumexp`` and then ``exp`` took two), and chunks of
    1,024 rows keep a chunk's logits (14 MB at 3,416 items) nearer the cache:
    together 1.3-1.6x faster than 2,048-row chunks with two ``exp`` on this
    CPU (README, "Quality on ML-1M"; `bench/loss_bench.py` times chunk sizes).

    The three matrix products take their inputs in ``matmul_dtype``; the
    softmax and every sum stay in float32.  With bfloat16 products (which
    accumulate in float32) the loss runs 1.66x faster on a CPU with
    AVX512-BF16 (`bench/loss_bench.py`), and the gradients move by ~0.3%
    (`precision_dtype`).
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int,
                matmul_dtype: torch.dtype) -> torch.Tensor:
        n = h.shape[0]
        grad_h, grad_w = torch.empty_like(h), torch.zeros_like(w)
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        h_mm, w_mm = h.to(matmul_dtype), w.to(matmul_dtype)  # no copies when already float32
        for start in range(0, n, chunk):
            hc, tc = h_mm[start : start + chunk], targets[start : start + chunk]
            rows = torch.arange(hc.shape[0], device=h.device)
            logits = (hc @ w_mm.T).float()
            target_logits = logits[rows, tc]
            peak = logits.amax(1, keepdim=True)
            probs = logits.sub_(peak).exp_()  # unnormalised softmax, in place
            norm = probs.sum(1)
            total += (peak.squeeze(1) + norm.log() - target_logits).sum(dtype=torch.float64)
            probs.div_((norm * n)[:, None])  # softmax / n: the mean's gradient
            probs[rows, tc] -= 1.0 / n
            probs = probs.to(matmul_dtype)
            grad_h[start : start + chunk] = probs @ w_mm
            grad_w += (probs.T @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        return (total / n).to(h.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad, grad_w * grad, None, None, None


def full_softmax_loss(
    hidden: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, chunk: int = 1024,
    matmul_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Full-catalogue softmax cross-entropy of ``hidden`` [N, d] over ``table`` [n, d].

    ``matmul_dtype`` is the inputs' dtype in its matrix products (`precision_dtype`).
    """
    return _FullSoftmaxXent.apply(hidden, table, targets, chunk, matmul_dtype)


def precision_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The full softmax's matrix-product dtype for ``--loss-precision``.

    ``auto`` is bfloat16 where the hardware computes it natively (a CPU with
    AVX512-BF16 or AMX, a CUDA device with bfloat16), float32 elsewhere: on
    other CPUs bfloat16 products are emulated and slower than float32.

    >>> precision_dtype("fp32", torch.device("cpu"))
    torch.float32
    """
    if precision != "auto":
        return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:  # private probes of torch's CPU dispatch; absent ones read as "no"
        native = any(getattr(torch.cpu, probe, lambda: False)()
                     for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return torch.bfloat16 if native else torch.float32


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
          negatives: int | None, action_weight: float = 0.0, matmul_dtype: torch.dtype = torch.float32) -> float:
    items, actions, gaps, targets, target_actions, context = batch
    hidden = model(items, actions, gaps, context)
    valid = targets > 0
    # Score only real items (rows 2..): padding/unknown are never targets.
    h, table, t = hidden[valid], model.item_table()[FIRST_ITEM:], targets[valid] - FIRST_ITEM
    loss = (full_softmax_loss(h, table, t, matmul_dtype=matmul_dtype) if negatives is None
            else sampled_softmax_loss(h, table, t, negatives))
    if action_weight > 0 and model.has_action_head:
        loss = loss + action_weight * next_action_loss(model, hidden, target_actions)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _batches(windows: list[SeqArrays], batch_size: int, rng: np.random.Generator,
             batching: str = "random") -> list[np.ndarray]:
    """The epoch's batches of window indices, in random order.

    ``random``: a shuffle cut into batches, as SASRec trains.  ``length``:
    shuffle, then sort by length within pools of 16 batches, so that a batch
    holds windows of similar lengths: padding (wasted compute) drops from
    ~45% to a few percent on ML-1M, but each step then sees only short or only
    long histories, and the model learns less per epoch (README, "Toward
    SASRec+": validation NDCG@10 0.1318 against 0.1405 after 10 epochs).
    """
    order = rng.permutation(len(windows))
    if batching == "random":
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    lengths = np.array([len(w) for w in windows])
    pool = 16 * batch_size
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


class _LrSchedule:
    """Sets the learning rate before each step: ``constant``, ``cosine``, or a replay of another run's.

    ``cosine`` goes from ``lr`` down to 0 along a half cosine.  Its progress
    is the larger of the steps done out of ``total_steps`` and the seconds
    spent out of ``max_seconds``, so a run cut by its time budget still ends
    annealed, at whatever epoch the budget allows; early stopping ends a run
    wherever the curve then is.  ``replay`` (each epoch's last rate, from
    `EpochLog.lr`) makes a refit follow its selection run's rates epoch by
    epoch, linearly within an epoch, so that it retrains the epochs it was
    chosen for the same way rather than annealing over fewer.
    """

    def __init__(self, kind: str, opt: torch.optim.Optimizer, lr: float, total_steps: int, steps_per_epoch: int,
                 max_seconds: float | None, start: float, replay: list[float] | None = None) -> None:
        self.kind, self.opt, self.base, self.replay = kind, opt, lr, replay
        self.total_steps, self.steps_per_epoch = max(1, total_steps), max(1, steps_per_epoch)
        self.max_seconds, self.start = max_seconds, start
        self.steps = 0
        self.lr = lr

    def before_step(self) -> None:
        if self.replay:
            epoch, step = divmod(self.steps, self.steps_per_epoch)
            before = self.replay[min(epoch, len(self.replay)) - 1] if epoch else self.base
            after = self.replay[min(epoch, len(self.replay) - 1)]
            self._set(before + (after - before) * (step + 1) / self.steps_per_epoch)
        elif self.kind == "cosine":
            progress = self.steps / self.total_steps
            if self.max_seconds is not None:
                progress = max(progress, (time.perf_counter() - self.start) / self.max_seconds)
            self._set(self.base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
        self.steps += 1

    def _set(self, lr: float) -> None:
        self.lr = lr
        for group in self.opt.param_groups:
            group["lr"] = lr


def _epoch(
    model: SequenceEncoder,
    opt: torch.optim.Optimizer,
    windows: list[SeqArrays],
    batch_size: int,
    batching: str,
    rng: np.random.Generator,
    bar: tqdm,
    postfix: dict[str, str],
    negatives: int | None,
    schedule: _LrSchedule,
    action_weight: float = 0.0,
    matmul_dtype: torch.dtype = torch.float32,
    average: _WeightAverage | None = None,
) -> float:
    model.train()
    device = next(model.parameters()).device
    losses = []
    for batch_idx in _batches(windows, batch_size, rng, batching):
        batch = [windows[i] for i in batch_idx]
        schedule.before_step()
        losses.append(_step(model, opt, batch_tensors(batch, device), negatives, action_weight, matmul_dtype))
        if average is not None:
            average.update(model)
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", **postfix, refresh=False)
    return float(np.mean(losses))


def _snapshot(model: SequenceEncoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit(model: SequenceEncoder, windows: list[SeqArrays], split: Split | None, config: TrainConfig, *,
        epochs: int | None = None, desc: str = "fit", lr_replay: list[float] | None = None) -> FitResult:
    """Train ``model`` on ``windows`` for up to ``epochs`` (default ``config.epochs``).

    With ``split``, validation NDCG@10 every ``config.eval_every`` epochs
    (and at the last) keeps the best weights and stops after
    ``config.patience`` evaluations without improvement.  Without a split (a
    refit) every epoch runs and the last weights are kept.  With
    ``config.ema_epochs`` the weights validated and kept are the moving
    average of the trained ones (`_WeightAverage`).  Either way
    ``config.max_seconds`` also stops at the first epoch end past that wall
    time.  The model is left with its last weights; load ``best_state``.
    Seeded by ``config.seed`` (the batch order; the weights are the caller's).
    The learning rate follows ``config.lr_schedule``, or with ``lr_replay``
    another run's rates epoch by epoch (`EpochLog.lr`: a refit replays its
    selection run's).

    >>> result = fit(model, train_windows(split.train, 200, False), split, TrainConfig(epochs=3))  # doctest: +SKIP
    >>> model.load_state_dict(result.best_state)  # doctest: +SKIP
    """
    epochs = config.epochs if epochs is None else epochs
    negatives = config.negatives_for(model.config.n_items)
    matmul_dtype = precision_dtype(config.loss_precision, next(model.parameters()).device)
    rng = np.random.default_rng(config.seed)
    # SASRec+'s optimiser: Adam's own betas, no gradient clipping. Against betas (0.9, 0.98) with the norm
    # clipped at 1, it reached each validation NDCG@10 on ML-1M about a quarter fewer epochs sooner
    # (README, "Toward SASRec+").
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n_batches = -(-len(windows) // config.batch_size)
    average = _WeightAverage(model, config.ema_epochs, n_batches) if config.ema_epochs > 0 else None
    kept = model if average is None else average.model  # the weights validated, stopped on and returned
    stopper, logs, postfix = _EarlyStopping(config.patience, kept), [], {}  # postfix: tqdm's val metrics
    start = time.perf_counter()
    schedule = _LrSchedule(config.lr_schedule, opt, config.lr, epochs * n_batches, n_batches, config.max_seconds,
                           start, lr_replay)
    with tqdm(total=epochs * n_batches, disable=not config.progress, desc=desc) as bar:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            loss = _epoch(model, opt, windows, config.batch_size, config.batching, rng, bar, postfix, negatives,
                          schedule, config.action_weight, matmul_dtype, average)
            t1 = time.perf_counter()
            out_of_time = config.max_seconds is not None and t1 - start > config.max_seconds
            # Always validate before stopping, so the kept weights are validated ones.
            due = split is not None and (epoch % config.eval_every == 0 or epoch == epochs or out_of_time)
            valid = rank_metrics(kept, split.valid, exclude_history=split.exclude_history) if due else None
            logs.append(EpochLog(epoch, loss, t1 - t0, time.perf_counter() - t1, valid, schedule.lr))
            if split is None:
                if out_of_time:
                    break
                continue
            if valid is None:
                continue
            postfix.update(val_ndcg10=f"{valid['ndcg@10']:.4f}", val_hr10=f"{valid['hr@10']:.4f}")
            if stopper.update(epoch, valid["ndcg@10"], kept) or out_of_time:
                break
    if split is None:
        return FitResult(logs, len(logs), _snapshot(kept), time.perf_counter() - start)
    return FitResult(logs, stopper.best_epoch, stopper.best_state, time.perf_counter() - start)


def recorded_args(config: TrainConfig, model: SequenceEncoder) -> dict[str, Any]:
    """``config`` as the checkpoint of ``model`` records it (`TrainConfig.record`: the values in effect)."""
    device = resolve_device(config.device)
    precision = "bf16" if precision_dtype(config.loss_precision, device) == torch.bfloat16 else "fp32"
    return config.record(n_items=model.config.n_items, device=str(device), action_head=model.has_action_head,
                         loss_precision=precision)


def _next_action_report(model: SequenceEncoder, split: Split, all_windows: bool) -> dict[str, Any] | None:
    """The head vs the majority class on the test cases; None without a head.

    Classes and majority come from the training targets of ``split``'s windows
    (those of the selection run when a refit followed).
    """
    if not model.has_action_head:
        return None
    counts = training_action_counts(split.train, model.config.max_len, all_windows)
    return next_action_report(model, split.test, action_classes(counts), int(np.argmax(counts)))


def finish(
    dataset: Dataset,
    out_dir: str | Path,
    model: SequenceEncoder,
    vocab: ItemVocab,
    split: Split,
    fits: Mapping[str, FitResult],
    config: TrainConfig,
    *,
    wall_start: float | None = None,
    earlier: Mapping[str, dict[str, Any] | None] | None = None,
    train_args: Mapping[str, Any] | None = None,
    fusion: Any = None,
    fusion_report: dict[str, Any] | None = None,
    categories: dict[str, tuple[str, ...]] | None = None,
) -> Path:
    """Evaluate the final weights on the test split, save checkpoint, report and curve; returns the checkpoint.

    ``fits`` are the runs by report key: ``"select"`` (the validated run
    whose epochs and best epoch are reported), and ``"refit"`` when one
    followed.  ``earlier`` holds test figures of other weights kept for
    comparison, by report key (``test_before_refit``, ``test_before_finetune``).
    ``train_args`` is what the checkpoint records of the options (default:
    `recorded_args` of ``config``); ``wall_start`` (a `time.perf_counter`
    reading) when the run began, for report.json's ``wall_seconds``.
    """
    wall_start = time.perf_counter() if wall_start is None else wall_start
    select = fits["select"]
    test = rank_metrics(model, split.test, exclude_history=split.exclude_history)
    valid = next((log.valid for log in select.logs if log.epoch == select.best_epoch), None) or {}
    metrics = {f"test_{k}": v for k, v in test.items() if k != "cases"}
    metrics.update({f"valid_{k}": v for k, v in valid.items() if k != "cases"})
    train_seconds = sum(f.seconds for f in fits.values())
    args = dict(recorded_args(config, model) if train_args is None else train_args)
    actions = _next_action_report(model, split, config.all_windows)
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
        **(earlier or {}),
        "refit_seconds": round(fits["refit"].seconds, 2) if "refit" in fits else None,
        "baselines_test": baseline_metrics(dataset, "test", split.protocol, split.exclude_history),
        "next_action_test": actions,
        "text_fusion": fusion_report,
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - wall_start, 2),
    }
    (path / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    plot_training(report, path / "training.png")
    return path
