"""The offline subcommands: ``train``, ``evaluate`` and ``finetune`` the encoders on an event log."""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from streams.cli.args import dataset_from_args
from streams.errors import InterestUpdaterError

if TYPE_CHECKING:  # the subcommands import encoders (torch) only when they run
    from encoders.training.config import TrainConfig

__all__ = ["train", "evaluate", "finetune", "evaluation_table", "fusion_summary", "train_config", "use_threads",
           "with_data_defaults"]

log = logging.getLogger("interest_updater.train")


def train(args: argparse.Namespace) -> int:
    from encoders.training.train import train as train_encoder

    use_threads(args.threads)
    config = train_config(args)  # before the data: a bad flag fails now, not after minutes of loading
    dataset = dataset_from_args(args.data, args)
    config = with_data_defaults(config.replace(text_fusion=_wants_text_fusion(args.text_fusion, dataset)), args,
                                dataset)
    started = time.monotonic()
    out = train_encoder(dataset, args.out, config)
    report = orjson.loads((out / "report.json").read_bytes())
    test, before = report["test"], report["test_before_refit"]
    refit = f" (before --refit: {before['hr@10']:.4f} / {before['ndcg@10']:.4f})" if before else ""
    print(f"checkpoint written to {out} in {time.monotonic() - started:.0f}s "
          f"(training {report['train_seconds']:.0f}s, best epoch {report['best_epoch']}); "
          f"test HR@10 {test['hr@10']:.4f}, NDCG@10 {test['ndcg@10']:.4f}{refit}; curve in {out / 'training.png'}")
    if report.get("next_action_test"):
        from encoders.evaluation.actions import action_table

        print(action_table(report["next_action_test"]))
    for line in fusion_summary(report.get("text_fusion") or {}):
        print(line)
    return 0


def fusion_summary(fusion: dict) -> list[str]:
    """What `train` says of the text fusion: what its projection stopped on, then its test table (or why none)."""
    if fusion.get("skipped"):
        return [f"no text fusion: {fusion['skipped']}"]
    lines = []
    if fusion.get("stage1"):
        stage1 = fusion["stage1"]
        lines.append(f"text projection: best epoch {stage1['best_epoch']}, stopped on {stage1['stopped_on']}")
    if fusion.get("test"):
        from encoders.training.fusion import fusion_table

        lines.append(fusion_table(fusion["test"]))
    return lines


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` of ``interest-updater train``'s flags (``text_fusion`` off: it depends on the data).

    >>> from streams.cli import _parser
    >>> train_config(_parser().parse_args(["train", "--data", "synthetic", "--out", "x"])).epochs
    200
    """
    from encoders.training.config import TrainConfig

    max_len = 200 if args.max_len == "auto" else args.max_len  # each auto is resolved once the data is read
    dropout = DENSE_DROPOUT if args.dropout == "auto" else args.dropout
    d_model = NARROW_D_MODEL if args.d_model == "auto" else args.d_model
    item_init = "random" if args.item_init == "auto" else args.item_init
    return TrainConfig(d_model=d_model, n_layers=args.layers, n_heads=args.heads, max_len=max_len,
                       dropout=dropout, attention_dropout=args.attention_dropout,
                       input_scale=_input_scale(args, d_model), block=args.block, item_init=item_init,
                       context=args.context_features, history=args.history, epochs=args.epochs,
                       batch_size=args.batch_size, batching=args.batching, lr=args.lr, lr_schedule=args.lr_schedule,
                       weight_decay=args.weight_decay, ema_epochs=args.ema_epochs, loss=args.loss,
                       negatives=args.negatives, loss_precision=args.loss_precision,
                       all_windows=args.all_windows, refit=args.refit, protocol=args.protocol, device=args.device,
                       seed=args.seed, patience=args.patience, eval_every=args.eval_every,
                       max_seconds=args.max_seconds, action_weight=args.action_weight)


def with_data_defaults(config: TrainConfig, args: argparse.Namespace, dataset) -> TrainConfig:
    """``config`` with the flags left at ``auto`` that depend on the data chosen from it.

    --d-model, --max-len, --dropout and --item-init.
    """
    if args.d_model == "auto":
        d_model = auto_d_model(dataset)
        config = config.replace(d_model=d_model, input_scale=_input_scale(args, d_model))
    if args.max_len == "auto":
        config = config.replace(max_len=auto_max_len(dataset))
    if args.dropout == "auto":
        config = config.replace(dropout=auto_dropout(dataset))
    if args.item_init == "auto":
        config = config.replace(item_init=auto_item_init(dataset, config.protocol))
    return config


def _input_scale(args: argparse.Namespace, d_model: int) -> float:
    """--input-scale: a number, or sqrt(d_model) for "sqrt" (so it follows --d-model auto)."""
    return math.sqrt(d_model) if args.input_scale == "sqrt" else args.input_scale


def auto_max_len(dataset, cap: int = 200) -> int:
    """--max-len auto: the 99th percentile of history lengths rounded up to 10, at most ``cap``.

    Longer windows than the histories only pad; shorter ones cut what the model reads.
    """
    import numpy as np

    lengths = [len(events) for events in dataset.sequences().values()]
    chosen = min(cap, max(10, 10 * math.ceil(float(np.percentile(lengths, 99)) / 10))) if lengths else cap
    log.info("--max-len auto: %d (99%% of %d histories have at most %d events)", chosen, len(lengths),
             int(np.percentile(lengths, 99)) if lengths else 0)
    return chosen


# --dropout auto (README, "Default flags on other data"): SASRec's rule (0.5 on its sparse sets), with SASRec+'s
# 0.1 on dense ones. Measured here, 0.5 against 0.1 over four and three seeds: +3.2% test NDCG@10 on Amazon Musical
# Instruments (median history 6 events), +0.7% MRR@20 on YOOCHOOSE sessions (3), validation higher in every seed.
DENSE_DROPOUT, SPARSE_DROPOUT, SPARSE_BELOW = 0.1, 0.5, 20


def auto_dropout(dataset) -> float:
    """--dropout auto: 0.5 when the median history is shorter than 20 events, else 0.1.

    Short histories give each user few transitions to learn from, and the
    model overfits them sooner: on Amazon the best epoch is about 16 at 0.1
    and about 30 at 0.5, which ends higher.
    """
    median = _median_history(dataset)
    chosen = SPARSE_DROPOUT if median < SPARSE_BELOW else DENSE_DROPOUT
    log.info("--dropout auto: %g (the median history has %g events; below %d gets %g)", chosen, median,
             SPARSE_BELOW, SPARSE_DROPOUT)
    return chosen


# --d-model auto (README, "Width from the data"): twice SASRec+'s width where histories are long, on the line
# --dropout auto draws. Test NDCG@10 of d=128 against 64: ML-1M (median history 96 events) +2.8% (two seeds against
# one), ml-latest-small (71) +11.7%, Foursquare NYC (93, history kept) +1.1% (one seed each, side by side); Amazon
# Musical Instruments (6) -2.0% and YOOCHOOSE (3) +0.2% MRR@20 (four and three seeds), where the wider model does not
# pay for its cost to train and to serve.
NARROW_D_MODEL, WIDE_D_MODEL = 64, 128


def auto_d_model(dataset) -> int:
    """--d-model auto: 128 where the median history has 20 events or more, else 64.

    A long history gives the model many transitions per user and a long
    context to sum up in one state; where histories are a few events the
    next item follows mostly from the last one, and the wider model gained
    nothing measurable.
    """
    median = _median_history(dataset)
    chosen = NARROW_D_MODEL if median < SPARSE_BELOW else WIDE_D_MODEL
    log.info("--d-model auto: %d (the median history has %g events; below %d gets %d)", chosen, median,
             SPARSE_BELOW, NARROW_D_MODEL)
    return chosen


def _median_history(dataset) -> float:
    """The median number of clicks per user (per session for session data): what --dropout and --d-model read."""
    import numpy as np

    lengths = [len(events) for events in dataset.sequences().values()]
    return float(np.median(lengths)) if lengths else 0.0


def auto_item_init(dataset, protocol: str) -> str:
    """--item-init auto: text where at least half of the items have a title or a text about them, else random.

    A leave-one-out split only (the text start reads the training part's
    texts by leaving out each user's last two clicks).  Measured on Amazon
    Musical Instruments, reviews as the items' texts: +11.6% test NDCG@10 over
    four seeds (README, "Default flags on other data").
    """
    from encoders.protocols import default_protocol
    from encoders.training.text_init import items_with_texts

    resolved = default_protocol(dataset) if protocol == "auto" else protocol
    described, items = items_with_texts(dataset)
    if resolved != "leave-one-out":
        chosen, why = "random", f"the split is {resolved}; text needs leave-one-out"
    else:
        chosen = "text" if items and 2 * described >= items else "random"
        why = f"{described} of {items} items have a title or a text about them; text needs half"
    log.info("--item-init auto: %s (%s)", chosen, why)
    return chosen


def use_threads(threads: int) -> None:
    """--threads: torch's CPU threads. Two runs that each take every core slow each other several times over."""
    if threads < 1:
        raise InterestUpdaterError(f"--threads {threads}: expected 1 or more")
    import torch

    torch.set_num_threads(threads)


def _wants_text_fusion(choice: str, dataset) -> bool:
    """--text-fusion: auto trains one when the data has texts or catalogue titles to pair with items."""
    if choice != "auto":
        return choice == "on"
    return bool(dataset.texts or dataset.catalogue.titles)


def evaluate(args: argparse.Namespace) -> int:
    from encoders.evaluation.actions import action_table, evaluate_actions
    from encoders.evaluation.evaluate import baseline_metrics
    from encoders.evaluation.evaluate import evaluate as evaluate_encoder
    from encoders.protocols import default_protocol

    use_threads(args.threads)
    dataset = dataset_from_args(args.data, args)
    protocol = default_protocol(dataset) if args.protocol == "auto" else args.protocol
    exclude = {"auto": None, "exclude": True, "keep": False}[args.history]
    ours = evaluate_encoder(args.checkpoint, dataset, split=args.split, protocol=protocol,
                            exclude_history=exclude, device=args.device)
    rows = [("sequence encoder", ours), *baseline_metrics(dataset, args.split, protocol, exclude).items()]
    print(evaluation_table(dataset.name, protocol, args.split, rows))
    actions = evaluate_actions(args.checkpoint, dataset, split=args.split, protocol=protocol, device=args.device)
    if actions is not None:  # the checkpoint has a next-action head
        print(action_table(actions))
    return 0


def finetune(args: argparse.Namespace) -> int:
    from encoders.training.finetune import finetune as finetune_encoder
    from encoders.data import parse_ts

    use_threads(args.threads)
    since = parse_ts(args.since, Path("--since"), 0) if args.since is not None else None
    started = time.monotonic()
    out = finetune_encoder(args.checkpoint, dataset_from_args(args.data, args), args.out, since_ms=since,
                           context=args.context, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                           patience=args.patience, device=args.device, seed=args.seed,
                           max_seconds=args.max_seconds)
    report = orjson.loads((out / "report.json").read_bytes())
    test, before = report["test"], report["test_before_finetune"]
    print(f"checkpoint written to {out} in {time.monotonic() - started:.0f}s (best epoch {report['best_epoch']}); "
          f"on the slice's test cases HR@10 {before['hr@10']:.4f} -> {test['hr@10']:.4f}, "
          f"NDCG@10 {before['ndcg@10']:.4f} -> {test['ndcg@10']:.4f}")
    return 0


def evaluation_table(dataset: str, protocol: str, split: str, rows: list[tuple[str, dict]]) -> str:
    """Our rows, then the published figures for ``dataset`` with the protocol notes."""
    from encoders.evaluation.published import PROTOCOL_NOTES, PUBLISHED

    cases = rows[0][1]["cases"]
    lines = [f"{dataset}: {protocol}, split={split}, full ranking, {cases} cases",
             f"{'model':<40} {'HR@10':>7} {'NDCG@10':>8} {'HR@20':>7} {'NDCG@20':>8} {'MRR@20':>7}"]
    for name, m in rows:
        lines.append(f"{name:<40} {m['hr@10']:>7.4f} {m['ndcg@10']:>8.4f} {m['hr@20']:>7.4f} "
                     f"{m['ndcg@20']:>8.4f} {m['mrr@20']:>7.4f}")
    published = PUBLISHED.get(dataset, ()) if protocol == "leave-one-out" and split == "test" else ()
    for p in published:
        lines.append(f"{'published: ' + p.model:<40} {p.hr10:>7.4f} {p.ndcg10:>8.4f} {'':>7} {'':>8} {'':>7}"
                     f"  ({p.source})")
    if published:
        lines.append(PROTOCOL_NOTES[dataset])
    return "\n".join(lines)
