"""The ``interest-updater`` command line.

Subcommands: ``demo`` (everything on one machine), ``worker`` (the stream
processor), ``train``, ``finetune`` and ``evaluate`` (the encoders, offline), ``produce``
(replay a dataset into the topics) and ``tail`` (print recommendation events).
Errors the operator can fix print one line and exit with status 2 (``--debug``, or
``IU_DEBUG=1``, prints the traceback too).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Sequence

from encoders.config import BLOCKS
from encoders.errors import EncoderError
from encoders.features import CONTEXT_FEATURES, CONTEXT_SWITCHES, named_context_features
from state.errors import StateError
from streams.cli.args import DATA_HELP, add_data_arguments
from streams.errors import InterestUpdaterError
from streams.settings import TRUE_WORDS, add_arguments, settings_from_args

__all__ = ["main"]

log = logging.getLogger("interest_updater")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interest-updater",
        description="Keep users' interest vectors fresh from Kafka click and text events, "
                    "and publish recommendations as behaviour changes.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="start an embedded broker, Redis and worker; replay a dataset; "
                                            "print recommendations", description=_demo_doc())
    demo.add_argument("--data", default="synthetic", help=DATA_HELP + " [default: synthetic]")
    demo.add_argument("--limit", type=int, default=None, help="replay only the first N events (in time order)")
    demo.add_argument("--rate", type=float, default=0.0,
                      help="events per second to replay [default: 0: a burst, then the last 1,000 events at "
                           "100 events/s, whose freshness is printed apart as the real-time figure]")
    demo.add_argument("--epochs", type=int, default=None, help="epochs for the model trained when no --checkpoint")
    demo.add_argument("--show", type=int, default=12, help="recommendation events to print in full")
    demo.add_argument("--linger", type=float, default=0.0, help="seconds to keep serving metrics after the replay")
    add_arguments(demo)

    worker = commands.add_parser("worker", help="run a stream-processing worker",
                                 description="Consume click and text events, refresh interests, publish "
                                             "recommendations. Without --broker and --redis an embedded "
                                             "broker and Redis are started for this worker.")
    add_arguments(worker)

    read_api = commands.add_parser(
        "read-api", help="serve the read API (GET /v1/users/ID) in a process of its own",
        description="Serve GET /v1/users/{id}, /metrics, /healthz and /readyz on --metrics-port, read from "
                    "--redis-url, apart from any worker: reads then share neither a worker's CPU nor its "
                    "interpreter with its batches. Run as many as the read traffic needs; a worker's own "
                    "--metrics-port serves the same API. Only the Redis, key-prefix, port, token and log "
                    "options matter here.")
    add_arguments(read_api)

    train = commands.add_parser("train", help="train the sequence encoder on an event log",
                                description="Train the sequence encoder (causal Transformer, softmax over "
                                            "the catalogue) with early stopping on validation NDCG@10; write "
                                            "a checkpoint with report.json and training.png.")
    add_data_arguments(train)
    train.add_argument("--out", required=True, help="checkpoint directory to write")
    train.add_argument("--epochs", type=int, default=200,
                       help="most epochs; early stopping on validation NDCG@10 usually ends sooner [default: 200]")
    train.add_argument("--patience", type=int, default=10,
                       help="validations without improvement before stopping [default: 10]")
    train.add_argument("--eval-every", type=int, default=1, help="validate every N epochs [default: 1]")
    train.add_argument("--d-model", type=_number_or("auto", int, "a width"), default="auto",
                       help="width of item embeddings and Transformer states: a number, or auto: 128 where the "
                            "median history has 20 events or more (ML-1M, MovieLens, check-ins), else 64, SASRec+'s, "
                            "as for short reviews and sessions (logged); a wider model takes longer per epoch (1.7x "
                            "on ML-1M) and per encode [default: auto]")
    train.add_argument("--layers", type=int, default=2, help="Transformer blocks [default: 2]")
    train.add_argument("--heads", type=int, default=1, help="attention heads per block [default: 1]")
    train.add_argument("--max-len", type=_number_or("auto", int, "a number of events"), default="auto",
                       help="most recent events per user the model reads: a number, or auto: enough for 99%% of "
                            "the histories whole, rounded up to 10, at most 200 (logged; ML-1M gets 200, "
                            "short sessions 20) [default: auto]")
    train.add_argument("--dropout", type=_number_or("auto", float, "a rate"), default="auto",
                       help="dropout on embeddings, attention and feed-forward layers: a rate, or auto: 0.5 where "
                            "the median history is shorter than 20 events (sparse data: reviews, sessions), "
                            "else 0.1, SASRec+'s (logged) [default: auto]")
    train.add_argument("--attention-dropout", type=float, default=None,
                       help="dropout on the attention weights, if other than --dropout; 0 lets torch take its "
                            "fused attention kernel: faster epochs on the CPU [default: --dropout]")
    train.add_argument("--input-scale", type=_number_or("sqrt", float, "a number"), default="sqrt",
                       help="multiply each input's item embedding by this before positions are added: a number, "
                            "or sqrt: sqrt(d-model), as SASRec does (8 at d=64) [default: sqrt]")
    train.add_argument("--block", choices=BLOCKS, default="sasrec",
                       help="Transformer block: gpt2 (GPT-2's pre-norm block, 4x-wide GELU feed-forward), sasrec "
                            "(SASRec's: residual from the normalised query, d-wide ReLU feed-forward, as SASRec+ "
                            "trains it) or gated (pre-norm, sigmoid-gated residuals, 4x-wide SwiGLU feed-forward, "
                            "as eSASRec trains it) [default: sasrec]")
    train.add_argument("--item-init", choices=("auto", "text", "random"), default="auto",
                       help="how the item embeddings start: text: from the items' titles and the text events about "
                            "them in the training part (all-MiniLM-L6-v2, reduced by PCA), so that items that read "
                            "alike start alike; random: at random. Needs a leave-one-out split; embedding many "
                            "texts takes minutes and is not cut by --max-seconds [default: auto: text where at "
                            "least half of the items have a title or a text about them, logged]")
    train.add_argument("--batch-size", type=int, default=128, help="users per training step [default: 128]")
    train.add_argument("--history", choices=("auto", "exclude", "keep"), default="auto",
                       help="rank items the user already has when validating and testing? keep for data where "
                            "people return (places, repeat purchases) [default: auto: excluded for leave-one-out, "
                            "kept within sessions]")
    train.add_argument("--context-features", type=_context_features, default="auto", metavar="auto|on|off|NAMES",
                       help="embed each event's context (local hour of the week, device, region, place cell, "
                            "distance from the previous place) and each item's place cell; a model with context "
                            "still serves events without it. NAMES turns on only those, comma-separated, of "
                            f"{','.join(CONTEXT_FEATURES)} (cell includes the items' cells) [default: auto: all "
                            "of them when the log's clicks have context columns such as latitude/longitude, "
                            "timezone_offset, device, region]")
    train.add_argument("--batching", choices=("random", "length"), default="random",
                       help="random: shuffled batches, as SASRec trains; length: batches of similar lengths, less "
                            "padding and faster epochs, but less learnt per epoch [default: random]")
    train.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate [default: 0.001]")
    train.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                       help="constant: --lr throughout; cosine: from --lr down to 0 along a half cosine over "
                            "--epochs or --max-seconds, whichever ends first, so a run cut by its time budget "
                            "ends annealed; the refit replays the rates of the epochs it retrains [default: constant]")
    train.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay [default: 0]")
    train.add_argument("--ema-epochs", type=float, default=3.0,
                       help="validate, stop on and save a moving average of the trained weights over about this "
                            "many epochs, not the trained weights themselves: it smooths the last epochs' noise "
                            "(0: no average) [default: 3]")
    train.add_argument("--loss", choices=("auto", "full", "sampled"), default="auto",
                       help="softmax over the whole catalogue, or over sampled negatives [default: auto, "
                            "full up to 50,000 items]")
    train.add_argument("--negatives", type=int, default=256,
                       help="negatives per batch for --loss sampled [default: 256]")
    train.add_argument("--loss-precision", choices=("auto", "fp32", "bf16"), default="auto",
                       help="number format of the full softmax's matrix products (the softmax and sums stay "
                            "fp32): bf16 is several times faster where the hardware has it (a CPU with "
                            "AVX512-BF16 or AMX, a recent GPU) and slower where it is emulated [default: auto: "
                            "bf16 where native, else fp32]")
    train.add_argument("--all-windows", action=argparse.BooleanOptionalAction, default=True,
                       help="train on every max-len window of long histories, so that every transition is "
                            "learned, not only the newest window's (SASRec's); epochs take longer where "
                            "histories outrun --max-len (1.43x on ML-1M) and the model learns more per epoch "
                            "[default: on; --no-all-windows trains the newest window only]")
    train.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True,
                       help="after choosing the epoch count on validation, retrain on training + validation "
                            "targets (HSTU's ML-1M protocol; evaluate's co-occurrence and popularity baselines "
                            "count those targets too) and save that model; skipped when --max-seconds would cut "
                            "it short [default: on; --no-refit saves the model chosen on validation]")
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda [default: auto]")
    train.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling and dropout [default: 0]")
    train.add_argument("--max-seconds", type=float, default=None,
                       help="bound the whole run: every training stage (encoder, refit, fusion projection, "
                            "fusion gate) stops at its first epoch end past this many seconds from the start, "
                            "keeping its best weights; embedding texts is not cut short [default: no limit]")
    train.add_argument("--text-fusion", choices=("auto", "on", "off"), default="auto",
                       help="after the encoder, train the text projection and gate (all-MiniLM-L6-v2 texts into "
                            "the item space) on texts about items and catalogue titles, and save it in the "
                            "checkpoint [default: auto: when the data has either]")
    train.add_argument("--action-weight", type=float, default=0.2,
                       help="weight of the next-action loss (predicting the next event's action type: view, "
                            "click, cart, buy...) beside the item loss; the head is trained only when this is "
                            "> 0 and the training events have at least two action types; 0 disables it "
                            "[default: 0.2]")

    evaluate = commands.add_parser("evaluate", help="HR, NDCG and MRR at 10 and 20, full ranking, "
                                                    "beside baselines and published figures")
    add_data_arguments(evaluate)
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint directory from `train`")
    evaluate.add_argument("--split", choices=("test", "valid"), default="test",
                          help="which held-out item to rank [default: test]")
    evaluate.add_argument("--history", choices=("auto", "exclude", "keep"), default="auto",
                          help="rank items the user already has? [default: auto: excluded for "
                               "leave-one-out, kept within sessions]")
    evaluate.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda "
                                                           "[default: auto]")

    finetune = commands.add_parser(
        "finetune", help="continue training a checkpoint on a newer slice of the event log",
        description="Load --checkpoint, keep the events of --data at or after --since (with --context earlier "
                    "events of each user active since then), add their new items "
                    "to the vocabulary and train on with early stopping on the slice's validation split. "
                    "Write the result to --out; when --out is the directory a worker watches "
                    "(its --checkpoint), the worker switches to it without a restart.")
    add_data_arguments(finetune)
    finetune.add_argument("--checkpoint", required=True, help="checkpoint directory to start from")
    finetune.add_argument("--out", required=True, help="checkpoint directory to write (may be --checkpoint)")
    finetune.add_argument("--since", default=None,
                          help="first event time to train on: seconds or ms since the epoch, or ISO 8601 "
                               "[default: the whole log]")
    finetune.add_argument("--context", type=int, default=None,
                          help="earlier events kept for each user active since --since, as the history "
                               "the slice's events follow (0: the slice alone) [default: the model's max_len]")
    finetune.add_argument("--epochs", type=int, default=10,
                          help="most epochs (early stopping on validation) [default: 10]")
    finetune.add_argument("--patience", type=int, default=3,
                          help="validations without improvement before stopping [default: 3]")
    finetune.add_argument("--lr", type=float, default=3e-4, help="learning rate, lower than train's: the "
                                                                 "model is already trained [default: 0.0003]")
    finetune.add_argument("--batch-size", type=int, default=128, help="users per training step [default: 128]")
    finetune.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda [default: auto]")
    finetune.add_argument("--seed", type=int, default=0, help="seed of shuffling and dropout [default: 0]")
    finetune.add_argument("--max-seconds", type=float, default=None,
                          help="stop after this much training time [default: no limit]")

    produce = commands.add_parser("produce", help="replay a dataset into the click and text topics")
    produce.add_argument("--data", required=True, help=DATA_HELP)
    produce.add_argument("--limit", type=int, default=None, help="send only the first N events")
    produce.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
    add_arguments(produce)

    tail = commands.add_parser("tail", help="print recommendation events as they arrive")
    tail.add_argument("--data", default=None, help="dataset to take item titles from")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest event, not the newest")
    tail.add_argument("--max", type=int, default=0, help="stop after N events (0: never)")
    add_arguments(tail)
    for sub in (train, evaluate, finetune):
        sub.add_argument("--threads", type=int, default=_cores(),
                         help="CPU threads for torch; give each of two runs side by side half the cores, or "
                              "they slow each other down several times over [default: the cores this process "
                              f"may use, here {_cores()}]")
    for sub in commands.choices.values():
        sub.add_argument("--debug", action="store_true", default=_env_flag("IU_DEBUG"),
                         help="on an error, print the traceback as well as the one-line message "
                              "[env: IU_DEBUG; default: off]")
    return parser


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUE_WORDS


def _demo_doc() -> str:
    return ("Start a local Kafka-compatible broker (Tansu) and a Redis-compatible server (Valkey) on free "
            "loopback ports, train a small model on the data unless --checkpoint is given, start a worker, "
            "replay the data in time order, print recommendations as they are published, serve metrics, "
            "and stop everything cleanly.")


def _run(args: argparse.Namespace) -> int:
    # Each subcommand's module is imported only when it runs: `tail` need not load torch.
    if args.command == "train":
        from streams.cli.offline import train
        return train(args)
    if args.command == "evaluate":
        from streams.cli.offline import evaluate
        return evaluate(args)
    if args.command == "finetune":
        from streams.cli.offline import finetune
        return finetune(args)
    settings = settings_from_args(args)
    if args.command == "worker":
        from streams.cli.worker import worker
        return worker(settings)
    if args.command == "read-api":
        from streams.cli.worker import read_api
        return read_api(settings)
    if args.command == "produce":
        from streams.cli.topics import produce
        return produce(args, settings)
    if args.command == "tail":
        from streams.cli.topics import tail
        return tail(args, settings)
    from streams.cli.demo import demo
    return demo(args, settings)


def _context_features(value: str) -> str:
    """An argparse type: auto, on, off, or context feature names, comma-separated."""
    if value in CONTEXT_SWITCHES or named_context_features(value):
        return value
    raise argparse.ArgumentTypeError(f"expected auto, on, off or some of {','.join(CONTEXT_FEATURES)}, "
                                     f"comma-separated; got {value!r}")


def _number_or(word: str, kind: type, what: str):
    """An argparse type: ``word`` itself, or a number of ``kind`` (a bad value names what was expected)."""
    def parse(value: str):
        if value == word:
            return value
        try:
            return kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} or {word}, got {value!r}") from None
    return parse


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from streams.logs import setup_logging
    setup_logging(getattr(args, "log_level", "info"), json=getattr(args, "log_format", "plain") == "json")
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interest-updater: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _is_operator_error(exc):
            raise  # a bug: the whole traceback
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"interest-updater: error: {message}", file=sys.stderr)
        return 2


# Failures an operator fixes (a path, a flag, an unreachable server) get one line, not a
# traceback: our three packages' own errors, the clients' errors, and the OS's.
_OPERATOR_ERRORS = (InterestUpdaterError, EncoderError, StateError, ValueError, OSError, TimeoutError)
_CLIENT_MODULES = ("kafka", "aiokafka", "redis")


def _is_operator_error(exc: Exception) -> bool:
    return isinstance(exc, _OPERATOR_ERRORS) or type(exc).__module__.split(".")[0] in _CLIENT_MODULES


if __name__ == "__main__":
    sys.exit(main())
