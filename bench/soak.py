"""Soak: the real pipeline at a steady rate for a long time; does memory level off?

Starts the embedded stack (Tansu + Valkey, or Apache Kafka + Valkey with
--start-broker kafka) and one worker process, then sends a dataset's clicks
and texts round and round at --rate events/s for --minutes. Each lap
re-sends the same users' events with new event ids and the current time.
Only users with at least --max-history clicks are sent, so every history
reaches its bound within the first lap and the number of users stays fixed:
after that, a steady state in which nothing should grow. Every --every
seconds it records the worker's and the broker's RSS, Redis's used memory,
the memory of each kind of per-user key (MEMORY USAGE over every user:
click histories, text histories, profiles, meta), the texts kept per user,
the consumer lag, the freshness p50/p99 of that interval and the share of a
core that the worker and the broker used in it, and at the end writes a
CSV, a PNG with five panels and a one-line verdict comparing the memory of
the last third of the run with the middle third.

    python bench/soak.py --data ../shared/data/ml-latest-small --rate 100 --minutes 30 --start-broker kafka
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean, median

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders.data import Dataset, load_dataset  # noqa: E402
from state.layout import decode_texts  # noqa: E402
from streams.cli.replay import replay_events  # noqa: E402
from streams.apache_kafka import start_kafka  # noqa: E402
from streams.clients.kafka import OutgoingEvent, Producer, ensure_topics  # noqa: E402
from streams.embedded import embedded_stack, free_port  # noqa: E402
from streams.harness import cpu_seconds, histogram_quantile, rss_mib, scrape, since, total  # noqa: E402
from streams.harness import wait_ready, wait_until_applied, worker_process  # noqa: E402
from streams.settings import Settings  # noqa: E402

KINDS = ("clicks", "texts", "profile", "meta")  # per-user key groups whose memory is accounted
FIELDS = ("minute", "worker_rss_mb", "redis_used_mb", *(f"{k}_mb" for k in KINDS), "texts_per_user",
          "lag", "fresh_p50_ms", "fresh_p99_ms", "applied", "worker_cpu_pct", "broker_cpu_pct", "broker_rss_mb")


def lap_events(base: list[OutgoingEvent], lap: int) -> list[OutgoingEvent]:
    """``base`` with lap-unique event ids; ``ts`` is set when each slice is sent."""
    out = []
    for event in base:
        body = orjson.loads(event.value)
        body["event_id"] = f"{body['event_id']}.lap{lap}"
        out.append(OutgoingEvent(event.topic, event.key, orjson.dumps(body)))
    return out


def stamp_now(events: list[OutgoingEvent]) -> list[OutgoingEvent]:
    now = int(time.time() * 1000)
    stamped = []
    for event in events:
        body = orjson.loads(event.value)
        body["ts"] = now
        stamped.append(OutgoingEvent(event.topic, event.key, orjson.dumps(body)))
    return stamped


class Cpu:
    """Share of one core that the worker and the broker each used since the previous sample, in %."""

    def __init__(self, worker_pid: int, broker_pid: int) -> None:
        self.pids = {"worker_cpu_pct": worker_pid, "broker_cpu_pct": broker_pid}
        self.at, self.used = time.monotonic(), {k: cpu_seconds(pid) for k, pid in self.pids.items()}

    def shares(self) -> dict[str, float]:
        at, used = time.monotonic(), {k: cpu_seconds(pid) for k, pid in self.pids.items()}
        out = {k: round(100 * (used[k] - self.used[k]) / max(at - self.at, 1e-9), 1) for k in self.pids}
        self.at, self.used = at, used
        return out


def redis_used_mb(url: str) -> float:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return client.info("memory")["used_memory"] / 2**20
    finally:
        client.close()


def key_memory(url: str, prefix: str) -> dict[str, float]:
    """MiB held by each kind of per-user key (MEMORY USAGE summed over every user), and the text event ids
    kept per user (the ring of a ``texts`` value, bounded by --max-texts; `state.layout`)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:{{u:*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        sizes = pipe.execute()
        texts = [k for k in keys if k.endswith(b":texts")]
        counts = [decode_texts(blob).ids_kept for blob in (client.mget(texts) if texts else []) if blob]
    finally:
        client.close()
    out = {f"{kind}_mb": 0.0 for kind in KINDS}
    for key, size in zip(keys, sizes):
        kind = key.decode().rsplit("}:", 1)[1].split(":")[0]  # clicks:data counts with clicks
        if f"{kind}_mb" in out:
            out[f"{kind}_mb"] += (size or 0) / 2**20
    users = len({k.split(b"}:")[0] for k in keys}) or 1
    return {**{k: round(v, 3) for k, v in out.items()}, "texts_per_user": round(sum(counts) / users, 2)}


def full_users_only(dataset: Dataset, min_clicks: int) -> Dataset:
    """The events of users with at least ``min_clicks`` clicks."""
    keep = {user for user, events in dataset.sequences().items() if len(events) >= min_clicks}
    return Dataset(dataset.name, [e for e in dataset.clicks if e.user_id in keep],
                   [e for e in dataset.texts if e.user_id in keep], dataset.catalogue)


def train_small(dataset: Dataset, out: Path) -> str:
    from encoders.training.train import train

    return str(train(dataset, out, d_model=48, n_layers=2, n_heads=2, max_len=100, epochs=3, progress=False))


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 6), dpi=100, sharex=True)
    minutes = [r["minute"] for r in rows]
    panels = (  # (y label, [(column, legend)]), placed so that the bottom row keeps the x axis labels
        ("RSS (MiB)", [("worker_rss_mb", "worker"), ("broker_rss_mb", "broker")]),
        ("Redis used memory (MiB)", [("redis_used_mb", "used"), *((f"{k}_mb", f"{k} keys") for k in KINDS)]),
        ("CPU (% of one core)", [("worker_cpu_pct", "worker"), ("broker_cpu_pct", "broker")]),
        ("consumer lag (messages)", [("lag", None)]),
        ("freshness (ms)", [("fresh_p99_ms", "p99"), ("fresh_p50_ms", "p50")]),
    )
    axes[0][2].axis("off")
    for ax, (ylabel, lines) in zip((axes[0][0], axes[0][1], *axes[1]), panels):
        for key, legend in lines:
            ax.plot(minutes, [r[key] for r in rows], label=legend)
        if len(lines) > 1:
            ax.legend(fontsize="small")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
    for ax in axes[1]:
        ax.set_xlabel("minutes")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def verdict(rows: list[dict], key: str) -> str:
    n = len(rows)
    middle, last = rows[n // 3 : 2 * n // 3], rows[2 * n // 3 :]
    if not middle or not last:
        return f"{key}: too few samples"
    a, b = mean(r[key] for r in middle), mean(r[key] for r in last)
    change = f" ({100 * (b - a) / a:+.1f}%)" if a else ""
    return f"{key}: middle third {a:.2f}, last third {b:.2f}{change}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ml-latest-small",
                        help="event log replayed in laps [default: ../shared/data/ml-latest-small]")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second [default: 100]")
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the soak [default: 30]")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between samples [default: 15]")
    parser.add_argument("--max-history", type=int, default=100,
                        help="the worker's --max-history; only users with this many clicks are sent [default: 100]")
    parser.add_argument("--max-texts", type=int, default=32,
                        help="the worker's --max-texts: text events kept per user (the data's tags fill it "
                             "about 1.5 per user a lap, so a small value shows the text lists at their bound) "
                             "[default: 32]")
    parser.add_argument("--checkpoint", default=None, help="model to use [default: train a small one]")
    parser.add_argument("--start-broker", choices=("tansu", "kafka"), default="tansu",
                        help="the broker this soak starts: tansu (embedded) or kafka (Apache Kafka from Maven "
                             "Central; needs java and mvn, see streams/apache_kafka.py) [default: tansu]")
    parser.add_argument("--out", default="runs/soak", help="folder for soak.csv and soak.png [default: runs/soak]")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = full_users_only(load_dataset(args.data), args.max_history)
    print(f"{len(dataset.sequences())} users with >= {args.max_history} clicks: "
          f"{len(dataset.clicks) + len(dataset.texts)} events a lap", flush=True)
    rows: list[dict] = []
    broker_starter = start_kafka if args.start_broker == "kafka" else None
    with tempfile.TemporaryDirectory(prefix="iu-soak-") as tmp, embedded_stack(broker_starter) as stack:
        checkpoint = args.checkpoint or train_small(dataset, Path(tmp) / "model")
        settings = Settings(broker=stack.broker_url, redis_url=stack.redis_url, checkpoint=checkpoint,
                            metrics_port=free_port(), log_level="warn", max_history=args.max_history,
                            max_texts=args.max_texts)
        ensure_topics(stack.broker_url, [settings.topic_clicks, settings.topic_texts, settings.topic_recs,
                                         settings.topic_dead], settings.partitions)
        base = replay_events(dataset, settings.topic_clicks, settings.topic_texts)
        producer = Producer(stack.broker_url)
        url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        with worker_process(settings, out / "worker.log") as worker:
            wait_ready(settings.metrics_port, timeout=180)
            started = time.monotonic()
            slice_size = max(1, int(args.rate * args.every))
            lap, position, events = 0, 0, lap_events(base, 0)
            previous = scrape(url)
            cpu = Cpu(worker.pid, stack.broker.process.pid)
            ends: dict = {}
            while time.monotonic() - started < args.minutes * 60:
                chunk = events[position : position + slice_size]
                position += len(chunk)
                if position >= len(events):
                    lap, position = lap + 1, 0
                    events = lap_events(base, lap)
                ends.update(producer.send_all(stamp_now(chunk), rate=args.rate))
                now = scrape(url)
                interval = since(now, previous)
                previous = now
                rows.append({
                    "minute": round((time.monotonic() - started) / 60, 2),
                    "worker_rss_mb": round(rss_mib(worker.pid), 1),
                    "broker_rss_mb": round(rss_mib(stack.broker.process.pid), 1),
                    "redis_used_mb": round(redis_used_mb(stack.redis_url), 2),
                    **key_memory(stack.redis_url, settings.key_prefix),
                    "lag": total(now, "iu_consumer_lag"),
                    "fresh_p50_ms": round(1000 * (histogram_quantile(interval, "iu_freshness_seconds", 0.5) or 0)),
                    "fresh_p99_ms": round(1000 * (histogram_quantile(interval, "iu_freshness_seconds", 0.99) or 0)),
                    "applied": total(now, "iu_events_total", outcome="applied"),
                    **cpu.shares(),
                })
                print(" ".join(f"{k}={rows[-1][k]}" for k in FIELDS), flush=True)
            wait_until_applied(settings, ends, worker, timeout=600)
        producer.close()
    with (out / "soak.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    title = (f"soak: {dataset.name} at {args.rate:.0f} events/s for {args.minutes:.0f} min, "
             f"max history {args.max_history}, max texts {args.max_texts}, broker {args.start_broker}")
    plot(rows, out / "soak.png", title)
    print(title)
    for key in ("worker_rss_mb", "redis_used_mb", *(f"{k}_mb" for k in KINDS), "texts_per_user", "worker_cpu_pct",
                "broker_cpu_pct", "broker_rss_mb"):
        print(verdict(rows, key))
    users = len(dataset.sequences())
    last = rows[-1]
    print("per user at the end: " + ", ".join(f"{k} {1024 * last[f'{k}_mb'] / users:.1f} KiB" for k in KINDS)
          + f"; {last['texts_per_user']} texts kept per user")
    print(f"lag: max {max(r['lag'] for r in rows):.0f}; freshness p50 median "
          f"{median(r['fresh_p50_ms'] for r in rows)} ms, p99 median {median(r['fresh_p99_ms'] for r in rows)} ms; "
          f"laps {lap}; plot {out / 'soak.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
