"""``interest-updater produce`` and ``tail``: replay a dataset into the topics, print recommendations."""

from __future__ import annotations

import argparse
import sys

import orjson

from streams.cli.args import dataset_from_args
from streams.cli.format import format_recommendation
from streams.cli.worker import topics
from streams.errors import ConfigurationError
from streams.security import check_kafka, kafka_client_config
from streams.settings import Settings

__all__ = ["produce", "tail"]


def _require_broker(settings: Settings) -> str:
    """``--broker``, once a connection to it has passed the security settings' checks."""
    if not settings.broker:
        raise ConfigurationError("no broker: pass --broker HOST:PORT (IU_BROKER)")
    check_kafka(settings)
    return settings.broker


def produce(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from streams.cli.replay import replay_events
    from streams.clients.kafka import Producer, ensure_topics

    broker = _require_broker(settings)
    events = replay_events(dataset_from_args(args.data), settings.topic_clicks, settings.topic_texts, limit=args.limit)
    ensure_topics(broker, topics(settings), settings.partitions, **kafka_client_config(settings))
    producer = Producer(broker, **kafka_client_config(settings))
    with tqdm(total=len(events), unit="ev", desc="replay", file=sys.stderr) as bar:
        producer.send_all(events, rate=args.rate, progress=bar)
    producer.close()
    print(f"sent {len(events)} events to {settings.topic_clicks} and {settings.topic_texts}")
    return 0


def tail(args: argparse.Namespace, settings: Settings) -> int:
    from streams.clients.kafka import recommendation_consumer

    titles = dataset_from_args(args.data).catalogue.titles if args.data else {}
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
