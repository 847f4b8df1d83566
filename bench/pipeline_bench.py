"""Micro-batched pipeline vs. the same pipeline one event at a time.

Replays the same events through the embedded stack (Tansu + Valkey + a worker
process) in both modes, in one run, and prints events/s and freshness p50/p99
(event entering Kafka -> its recommendation published) for each, as medians
over --repeats runs. The only difference between modes is --batch-max.
Throughput is measured with a burst (--rate 0); latency is fairest at a steady
rate both modes sustain (--rate 150).

    python bench/pipeline_bench.py --data ../shared/data/ml-latest-small --events 3000
    python bench/pipeline_bench.py --data ../shared/data/ml-latest-small --events 3000 --rate 150
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders.data import load_dataset  # noqa: E402
from streams.cli.replay import replay_events  # noqa: E402
from streams.clients.kafka import Producer, ensure_topics  # noqa: E402
from streams.embedded import embedded_stack, free_port  # noqa: E402
from streams.harness import (  # noqa: E402
    histogram_quantile, scrape, since, wait_until_applied, wait_until_idle, worker_process)
from streams.settings import Settings  # noqa: E402


def run_mode(stack, checkpoint: str, events_of, batch_max: int, run: int, workdir: Path, rate: float) -> dict:
    name = f"b{batch_max}-r{run}"
    settings = Settings(broker=stack.broker_url, redis_url=stack.redis_url, checkpoint=checkpoint,
                        topic_clicks=f"{name}-clicks", topic_texts=f"{name}-texts", topic_recs=f"{name}-recs",
                        topic_dead=f"{name}-dead", app_id=f"bench-{name}", key_prefix=name,
                        metrics_port=free_port(), batch_max=batch_max, batch_within=0.05, log_level="warn")
    ensure_topics(stack.broker_url, [settings.topic_clicks, settings.topic_texts, settings.topic_recs,
                                     settings.topic_dead], settings.partitions)
    events = events_of(settings)
    producer = Producer(stack.broker_url)
    with worker_process(settings, workdir / f"{name}.log") as worker:
        # Warm up: the worker has joined its group and loaded its models once this is applied.
        wait_until_applied(settings, producer.send_all(events[:1]), worker, timeout=180)
        wait_until_idle(settings.metrics_port)
        metrics_url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        before = scrape(metrics_url)  # the warm-up's freshness includes start-up: leave it out
        started = time.monotonic()
        ends = producer.send_all(events[1:], rate=rate)
        wait_until_applied(settings, ends, worker, timeout=1800)
        elapsed = time.monotonic() - started
        wait_until_idle(settings.metrics_port)  # the last batch's recommendations are published
        samples = since(scrape(metrics_url), before)
    producer.close()
    return {"events_per_s": (len(events) - 1) / elapsed,
            "p50_ms": 1000 * histogram_quantile(samples, "iu_freshness_seconds", 0.5),
            "p99_ms": 1000 * histogram_quantile(samples, "iu_freshness_seconds", 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--events", type=int, default=3000, help="events replayed per run")
    parser.add_argument("--batch-max", type=int, default=256, help="micro-batch size of the batched mode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="events/s to send (0: a burst, as fast as the producer can); freshness at a "
                             "steady rate both modes sustain is the fair comparison of latency")
    parser.add_argument("--checkpoint", default=None, help="model to use (default: train a small one)")
    args = parser.parse_args()

    dataset = load_dataset(args.data)
    with tempfile.TemporaryDirectory(prefix="iu-bench-") as tmp:
        workdir = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            from encoders.training.train import train
            checkpoint = str(train(dataset, workdir / "model", d_model=48, n_layers=2, n_heads=2, max_len=100,
                                   epochs=3, progress=False))

        def events_of(settings):
            return replay_events(dataset, settings.topic_clicks, settings.topic_texts, limit=args.events)

        results: dict[int, list[dict]] = {args.batch_max: [], 1: []}
        with embedded_stack() as stack:
            for run in range(args.repeats):
                for batch_max in results:  # alternate modes so drift on a shared machine hits both
                    result = run_mode(stack, checkpoint, events_of, batch_max, run, workdir, args.rate)
                    results[batch_max].append(result)
                    print(f"run {run} batch-max {batch_max}: {result['events_per_s']:.0f} ev/s, "
                          f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms", flush=True)
    sent = f"at {args.rate:.0f} events/s" if args.rate else "as one burst"
    print(f"\n{args.events} events of {dataset.name} sent {sent}, medians of {args.repeats} runs")
    print(f"{'mode':<22} {'events/s':>9} {'fresh p50':>10} {'fresh p99':>10}")
    for batch_max, runs in results.items():
        label = f"micro-batch {batch_max}" if batch_max > 1 else "one event at a time"
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{label:<22} {med['events_per_s']:>9.0f} {med['p50_ms']:>8.0f}ms {med['p99_ms']:>8.0f}ms")
    batched, single = (statistics.median(r["events_per_s"] for r in results[b]) for b in results)
    print(f"throughput ratio (batched / one at a time): {batched / single:.1f}x")


if __name__ == "__main__":
    main()
