"""``interest-updater demo``: the whole product on one machine, in one command.

Starts the embedded broker and Redis, trains a small model unless a checkpoint
is given, starts a worker process, replays the dataset in time order, prints
recommendations as they are published, waits until the worker has applied
every replayed event, prints a summary from the worker's own metrics, and
stops everything (also on Ctrl-C or an error).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from streams.cli.format import format_interests, format_recommendation
from streams.embedded import embedded_stack, free_port
from streams.harness import (histogram_quantile, scrape, since, total, wait_until_applied, wait_until_idle,
                             worker_process)
from streams.settings import Settings

__all__ = ["demo"]

FOLLOWED_USERS, FOLLOWED_EVENTS = 3, 6  # whose interests the demo prints as they change
DEMO_EPOCHS = 40  # small data: ~2 min on 2 cores, and well above popularity (ML-latest-small: HR@10 0.089 vs 0.043)
# Without --rate the replay is a burst (how fast a worker catches up), and then its last
# events go at a steady rate one worker sustains, whose freshness is the real-time figure:
# the burst's own freshness is mostly time spent queued behind the burst.
STEADY_RATE, STEADY_EVENTS = 100.0, 1000


def demo(args: argparse.Namespace, settings: Settings) -> int:
    from encoders.data import load_dataset

    dataset = load_dataset(args.data)
    print(f"dataset {dataset.name}: {len(dataset.clicks)} clicks, {len(dataset.texts)} texts")
    with tempfile.TemporaryDirectory(prefix="interest-updater-demo-") as tmp:
        checkpoint = settings.checkpoint or _train_small(dataset, Path(tmp) / "model", args.epochs)
        with embedded_stack() as stack:
            port = settings.metrics_port or free_port()
            settings = settings.with_overrides(broker=stack.broker_url, redis_url=stack.redis_url,
                                               checkpoint=str(checkpoint), metrics_port=port)
            print(f"broker {stack.broker_url}, redis {stack.redis_url}")
            print(f"metrics: http://127.0.0.1:{port}/metrics")
            with worker_process(settings, Path(tmp) / "worker.log") as worker:
                _replay_and_show(args, settings, dataset, worker)
    print("stopped: worker, broker and Redis are down")
    return 0


def _train_small(dataset, out: Path, epochs: int | None) -> Path:
    from encoders.training.train import train

    print("no --checkpoint given: training a small model on this data")
    return train(dataset, out, d_model=48, n_layers=2, n_heads=2, max_len=100,
                 epochs=epochs or DEMO_EPOCHS, patience=10, text_fusion=bool(dataset.texts or dataset.catalogue.titles))


def _replay_and_show(args, settings: Settings, dataset, worker: subprocess.Popen) -> None:
    from streams.cli.replay import replay_events
    from streams.clients.kafka import Producer, ensure_topics

    events = replay_events(dataset, settings.topic_clicks, settings.topic_texts, limit=args.limit)
    ensure_topics(settings.broker, [settings.topic_clicks, settings.topic_texts, settings.topic_recs,
                                    settings.topic_dead], settings.partitions)
    printer = _RecommendationPrinter(settings, dataset.catalogue.titles, args.show)
    printer.start()
    producer = Producer(settings.broker)
    try:
        # The first event waits for the worker to load its models and join its group,
        # so that the replay below measures the pipeline, not the start-up.
        wait_until_applied(settings, producer.send_all(events[:1]), worker)
        wait_until_idle(settings.metrics_port)
        print("worker ready; replaying", flush=True)
        steady = STEADY_EVENTS if not args.rate and len(events) > 2 * STEADY_EVENTS else 0
        bulk, tail = events[1:len(events) - steady], events[len(events) - steady:]
        phases = [_replay_phase(settings, worker, producer, bulk, args.rate, "replay")]
        if tail:
            phases.append(_replay_phase(settings, worker, producer, tail, STEADY_RATE,
                                        f"real time at {STEADY_RATE:.0f} events/s"))
    finally:
        producer.close()
    wait_until_idle(settings.metrics_port)  # the last batch's recommendations are published after its offsets
    printer.stop()
    _summary(settings, printer.seen, phases)
    if args.linger > 0:
        print(f"serving metrics for {args.linger:.0f}s more (Ctrl-C stops)")
        time.sleep(args.linger)


def _replay_phase(settings: Settings, worker, producer, events, rate: float, name: str) -> tuple[str, float, dict]:
    """Send ``events`` at ``rate`` (0: a burst) and wait until applied; return the phase's name, time and metrics."""
    from tqdm import tqdm

    before = scrape(_metrics_url(settings))
    started = time.monotonic()
    with tqdm(total=len(events), unit="ev", desc=name, file=sys.stderr) as bar:
        ends = producer.send_all(events, rate=rate, progress=bar)
    wait_until_applied(settings, ends, worker)
    elapsed = time.monotonic() - started
    wait_until_idle(settings.metrics_port)  # its last recommendations
    return name, elapsed, since(scrape(_metrics_url(settings)), before)


class _RecommendationPrinter(threading.Thread):
    """Prints the first recommendation events in full, then a count every few seconds."""

    def __init__(self, settings: Settings, titles: dict[str, str], show: int) -> None:
        super().__init__(daemon=True, name="recommendation-printer")
        self.settings, self.titles, self.show = settings, titles, show
        self.seen = 0
        self._followed: dict[str, int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        from streams.clients.kafka import recommendation_consumer

        consumer = recommendation_consumer(self.settings.broker, self.settings.topic_recs)
        last_report = time.monotonic()
        try:
            while not self._halt.is_set():
                for message in consumer:
                    self.seen += 1
                    event = orjson.loads(message.value)
                    if self.seen <= self.show or self._follows(event["user_id"]):
                        print(format_recommendation(event, self.titles), flush=True)
                        print(format_interests(event), flush=True)
                    if self._halt.is_set():
                        break
                if time.monotonic() - last_report > 5 and self.seen > self.show:
                    print(f"... {self.seen} recommendation events so far{self._online()}", flush=True)
                    last_report = time.monotonic()
        finally:
            consumer.close()

    def _follows(self, user_id: str) -> bool:
        """True for the first events of the first few users: their interests are shown as they change."""
        if user_id not in self._followed and len(self._followed) < FOLLOWED_USERS:
            self._followed[user_id] = 0
        if user_id not in self._followed or self._followed[user_id] >= FOLLOWED_EVENTS:
            return False
        self._followed[user_id] += 1
        return True

    def _online(self) -> str:
        try:
            samples = scrape(_metrics_url(self.settings), timeout=1.0)
        except OSError:
            return ""
        scored = total(samples, "iu_online_clicks_total")
        if not scored:
            return ""
        return f"; online HR@{self.settings.top_k} {total(samples, 'iu_online_hits_total') / scored:.3f}"

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def _metrics_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.metrics_port}/metrics"


def _summary(settings: Settings, received: int, phases: list[tuple[str, float, dict]]) -> None:
    """Counts from the worker's metrics; speed and freshness per replay phase (the warm-up event left out)."""
    samples = scrape(_metrics_url(settings))
    applied = total(samples, "iu_events_total", outcome="applied")
    dead = total(samples, "iu_dead_letters_total")
    published = total(samples, "iu_recommendations_published_total")
    batches = total(samples, "iu_batch_size_count")
    print(f"applied {applied:.0f} events in {batches:.0f} micro-batches, dead-lettered {dead:.0f}; "
          f"published {published:.0f} recommendation events (printer saw {received})")
    scored = sum(total(phase, "iu_online_clicks_total") for _, _, phase in phases)
    if scored:
        hr = sum(total(phase, "iu_online_hits_total") for _, _, phase in phases) / scored
        ndcg = sum(total(phase, "iu_online_ndcg_gain_total") for _, _, phase in phases) / scored
        print(f"online quality over {scored:.0f} clicks of users who had a list: "
              f"HR@{settings.top_k} {hr:.4f}, NDCG@{settings.top_k} {ndcg:.4f}")
    for name, elapsed, phase in phases:
        events = total(phase, "iu_events_total")
        p50 = histogram_quantile(phase, "iu_freshness_seconds", 0.5)
        p99 = histogram_quantile(phase, "iu_freshness_seconds", 0.99)
        if p50 is None:
            continue
        queued = " (mostly time queued behind the burst)" if name == "replay" and len(phases) > 1 else ""
        print(f"{name}: {events:.0f} events in {elapsed:.1f} s ({events / max(elapsed, 1e-9):.0f} events/s); "
              f"freshness (event in Kafka -> recommendation published) p50 {p50 * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms{queued}")
