"""What each CLI subcommand does, once its arguments are parsed."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Iterator

import orjson

from streams.errors import ConfigurationError
from streams.logs import redact_url
from streams.security import kafka_client_config
from streams.settings import Settings

__all__ = ["train", "evaluate", "worker", "produce", "tail", "load_encoders", "running_stack"]

log = logging.getLogger("interest_updater")


def _dataset(path: str, args: argparse.Namespace | None = None):
    """Load ``path``, read as the --format / --*-col / --test flags of ``args`` say (when present)."""
    from encoders.data import load_dataset
    from encoders.data import Columns

    if args is None or not hasattr(args, "format"):
        return load_dataset(path)
    columns = Columns(args.user_col, args.item_col, args.time_col, args.rating_col, args.action_col)
    return load_dataset(path, args.format, columns, args.test)


def train(args: argparse.Namespace) -> int:
    from encoders.training.train import train as train_encoder

    dataset = _dataset(args.data, args)
    started = time.monotonic()
    out = train_encoder(dataset, args.out, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                        max_len=args.max_len, dropout=args.dropout, epochs=args.epochs,
                        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, loss=args.loss,
                        negatives=args.negatives, all_windows=args.all_windows, refit=args.refit,
                        protocol=args.protocol, device=args.device, seed=args.seed, patience=args.patience,
                        eval_every=args.eval_every, max_seconds=args.max_seconds,
                        action_weight=args.action_weight, text_fusion=_wants_text_fusion(args.text_fusion, dataset))
    report = orjson.loads((out / "report.json").read_bytes())
    test, before = report["test"], report["test_before_refit"]
    refit = f" (before --refit: {before['hr@10']:.4f} / {before['ndcg@10']:.4f})" if before else ""
    print(f"checkpoint written to {out} in {time.monotonic() - started:.0f}s "
          f"(training {report['train_seconds']:.0f}s, best epoch {report['best_epoch']}); "
          f"test HR@10 {test['hr@10']:.4f}, NDCG@10 {test['ndcg@10']:.4f}{refit}; curve in {out / 'training.png'}")
    if report.get("next_action_test"):
        from encoders.evaluation.actions import action_table

        print(action_table(report["next_action_test"]))
    fusion = report.get("text_fusion") or {}
    if fusion.get("test"):
        from encoders.training.fusion import fusion_table

        print(fusion_table(fusion["test"]))
    elif fusion.get("skipped"):
        print(f"no text fusion: {fusion['skipped']}")
    return 0


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

    dataset = _dataset(args.data, args)
    protocol = default_protocol(dataset) if args.protocol == "auto" else args.protocol
    exclude = {"auto": None, "exclude": True, "keep": False}[args.history]
    ours = evaluate_encoder(args.checkpoint, dataset, split=args.split, protocol=protocol,
                            exclude_history=exclude, device=args.device)
    rows = [("sequence encoder", ours), *baseline_metrics(dataset, args.split, protocol).items()]
    print(evaluation_table(dataset.name, protocol, args.split, rows))
    actions = evaluate_actions(args.checkpoint, dataset, split=args.split, protocol=protocol, device=args.device)
    if actions is not None:  # the checkpoint has a next-action head
        print(action_table(actions))
    return 0


def finetune(args: argparse.Namespace) -> int:
    from encoders.training.finetune import finetune as finetune_encoder
    from encoders.data import parse_ts

    since = parse_ts(args.since, Path("--since"), 0) if args.since is not None else None
    started = time.monotonic()
    out = finetune_encoder(args.checkpoint, _dataset(args.data, args), args.out, since_ms=since,
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


def load_encoders(settings: Settings):
    """The sequence encoder from the checkpoint, and the text encoder unless disabled."""
    from streams.app import load_sequence_encoder

    if not settings.checkpoint:
        raise ConfigurationError("no checkpoint: pass --checkpoint DIR (IU_CHECKPOINT), made by `train`")
    encoder = load_sequence_encoder(settings)
    text_encoder = None
    if settings.text_encoder:
        from encoders.nn.text import TextEncoder
        text_encoder = TextEncoder(device=settings.device)
    return encoder, text_encoder


@contextlib.contextmanager
def running_stack(settings: Settings) -> Iterator[Settings]:
    """The settings, with an embedded broker and/or Redis started for what is unset."""
    if settings.broker and settings.redis_url:
        yield settings
        return
    from streams.embedded import embedded_stack

    with embedded_stack() as stack:
        log.info("embedded broker at %s, Redis at %s", stack.broker_url, stack.redis_url)
        yield settings.with_overrides(broker=settings.broker or stack.broker_url,
                                      redis_url=settings.redis_url or stack.redis_url)


def worker(settings: Settings) -> int:
    from streams.app import Worker
    from streams.replay import ensure_topics

    encoder, text_encoder = load_encoders(settings)
    with running_stack(settings) as settings:
        _check_redis(settings.redis_url, settings.redis_cluster)
        ensure_topics(settings.broker, _topics(settings), settings.partitions, **kafka_client_config(settings))
        service = Worker(settings, encoder, text_encoder)
        if settings.metrics_port:
            service.metrics.serve(settings.metrics_port, service.health)
            log.info("metrics on http://127.0.0.1:%d/metrics (also /healthz, /readyz)", settings.metrics_port)
        log.info("worker %s: broker %s, redis %s, model %s", settings.app_id, settings.broker,
                 redact_url(settings.redis_url), encoder.model_version)
        faust_worker = _faust_worker(service, settings)
        try:
            faust_worker.execute_from_commandline()
        except SystemExit as exit_:
            log.info("worker stopped (exit status %s)", exit_.code or 0)
            return int(exit_.code or 0)
        finally:
            service.pipeline.close()
    log.info("worker stopped")
    return 0


def _faust_worker(service, settings: Settings):
    """Faust's worker, telling ``service`` when a signal asks it to stop (Faust itself logs nothing)."""
    import faust

    class Worker(faust.Worker):
        def _on_sigterm(self) -> None:
            service.stopping("SIGTERM")
            super()._on_sigterm()

        def _on_sigint(self) -> None:
            service.stopping("SIGINT")
            super()._on_sigint()

    return Worker(service.app, loglevel=settings.log_level if settings.log_level != "warning" else "warn",
                  redirect_stdouts=False, override_logging=False)


def _check_redis(url: str, cluster: bool) -> None:
    import redis
    from redis.cluster import RedisCluster

    client_class = RedisCluster if cluster else redis.Redis
    try:
        client = client_class.from_url(url, socket_connect_timeout=5, socket_timeout=5)  # a cluster connects here
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        raise ConfigurationError(f"cannot reach Redis at {redact_url(url)}: {exc}") from None


def _topics(settings: Settings) -> list[str]:
    return [settings.topic_clicks, settings.topic_texts, settings.topic_recs, settings.topic_dead]


def _require_broker(settings: Settings) -> str:
    if not settings.broker:
        raise ConfigurationError("no broker: pass --broker HOST:PORT (IU_BROKER)")
    return settings.broker


def produce(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from streams.replay import Producer, ensure_topics, replay_events

    broker = _require_broker(settings)
    events = replay_events(_dataset(args.data), settings.topic_clicks, settings.topic_texts, limit=args.limit)
    ensure_topics(broker, _topics(settings), settings.partitions, **kafka_client_config(settings))
    producer = Producer(broker, **kafka_client_config(settings))
    with tqdm(total=len(events), unit="ev", desc="replay", file=sys.stderr) as bar:
        producer.send_all(events, rate=args.rate, progress=bar)
    producer.close()
    print(f"sent {len(events)} events to {settings.topic_clicks} and {settings.topic_texts}")
    return 0


def tail(args: argparse.Namespace, settings: Settings) -> int:
    from streams.replay import recommendation_consumer

    titles = _dataset(args.data).catalogue.titles if args.data else {}
    consumer = recommendation_consumer(_require_broker(settings), settings.topic_recs, args.from_beginning,
                                       **kafka_client_config(settings))
    shown = 0
    try:
        while not args.max or shown < args.max:
            for message in consumer:
                print(format_recommendation(orjson.loads(message.value), titles), flush=True)
                shown += 1
                if args.max and shown >= args.max:
                    break
    finally:
        consumer.close()
    return 0


def format_recommendation(event: dict, titles: dict[str, str], items: int = 3) -> str:
    """One readable line for a recommendation event."""
    names = [titles.get(i["item_id"], i["item_id"]) for i in event["items"][:items]]
    interests = ",".join(event["interests"]) or "-"
    return (f"user {event['user_id']:>6} v{event['version']:<3} [{interests}] -> "
            + "; ".join(_clip(name) for name in names))


def format_interests(event: dict) -> str:
    """One readable line of a recommendation event's interests: drift, session, categories, next action."""
    profile = event.get("interest_profile") or {}
    parts = []
    long_term = profile.get("long_term") or {}
    if "long_term" in (event.get("interests") or ()):
        shift = long_term.get("drift")
        parts.append("long-term " + ("new" if shift is None else f"drift {shift:.3f}"))
    elif long_term.get("version") is not None:
        parts.append(f"long-term as of v{long_term['version']}")
    session = profile.get("session") or {}
    if session.get("events"):
        parts.append(f"session {session['events']} events")
    top = (profile.get("categories") or {}).get("top") or []
    if top:
        parts.append("categories " + ", ".join(f"{name} {share:.2f}" for name, share in top[:3]))
    if (profile.get("text") or {}).get("texts"):
        parts.append(f"texts {profile['text']['texts']}")
    if event.get("next_action"):
        best = sorted(event["next_action"].items(), key=lambda kv: -kv[1])[:2]
        parts.append("next " + " ".join(f"{name} {p:.2f}" for name, p in best))
    return "      interests: " + (" | ".join(parts) or "-")


def _clip(text: str, width: int = 34) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
