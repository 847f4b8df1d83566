"""Capacity of one worker on production-shaped traffic: the rate it sustains in real time.

Drives the real pipeline (embedded Tansu + Valkey by default; Apache Kafka
started here in Tansu's place with --start-broker kafka; or --broker and
--redis for servers of your own; one worker process) with synthetic traffic
of the production shape, or with a replay of a dataset:

- synthetic (default): --users users with Zipf-distributed activity (a few
  users send most events, most send one or two), --items items with Zipf
  popularity, --categories categories and a title each, sessions cut by
  30 minutes of inactivity, --text-share of events are searches (Zipf over
  a million distinct queries, so the worker's text cache hits as often as
  it would on a search log, not always). The model
  has the production shape (d=64, 2 blocks, max_len 200, a text fusion) and
  UNTRAINED weights: it measures cost, not quality.
- --data D: the dataset's events in time order (cycled when a step needs more),
  with a trained --checkpoint (or a small model trained here first).

Steps: --rate R --seconds S holds one steady rate. --find-capacity measures
150 events/s, one burst (--burst events as fast as the producer sends) and
then ramps the rate (doubling, then bisecting) to the highest one at which p99
freshness stays under 500 ms and the worker keeps up (every event of the step
applied within a second of the last one sent). Each step prints rate sent,
events applied per second, freshness p50/p99 (event entering Kafka ->
recommendation published), consumer lag, worker CPU and RSS, Redis used
memory and bytes per active user. At the end, bytes per user at the default
bounds is measured with MEMORY USAGE on users who sent --max-history clicks
and --max-texts texts through the pipeline. The last line is:

RESULT capacity_events_per_s=N p99_ms_at_capacity=N p99_ms_at_150=N burst_events_per_s=N bytes_per_user=N users=N items=N

The producer (kafka-python, in this process) and the broker and Redis share
the machine's cores with the worker, as they do in `make demo`.

    python bench/load.py --find-capacity
    python bench/load.py --find-capacity --data ../shared/data/ml-latest-small
    python bench/load.py --rate 1000 --seconds 20 --items 100000
    python bench/load.py --rate 150 --seconds 30 --read-rate 1000    # the read API beside the replay

--read-rate N (with --rate): first a step of --read-users events as fast as
they go, so that many users have recommendations; then, during the --rate
step, wrk asks the worker's read API (GET /v1/users/{id}, on its metrics
port) for random ones of those users at about N requests/s
(`bench/read_api_bench.py`, `paced_wrk`), and one more line reports its
requests/s, p50 and p99 (wrk's and the server's own) beside the step's
freshness. --read-from process asks an `interest-updater read-api` process
instead (same Redis, its own port), so reads do not share the worker's
interpreter. --worker-nice N lowers the worker's CPU priority (its nice
value), as an operator sharing cores between the worker and the serving path
(Redis, the read API) would: the worker then waits for them, not they for it.
--serving-nice N sets the nice value of the embedded Redis and the read-api
process instead (below 0 it needs root or CAP_SYS_NICE): the serving path
first, before the worker, the producer, the broker and wrk, as cores of its
own would give it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.apache_kafka import start_kafka  # noqa: E402
from streams.clients.kafka import OutgoingEvent, Producer, ensure_topics  # noqa: E402
from streams.embedded import embedded_stack, free_port  # noqa: E402
from streams.harness import (  # noqa: E402
    cpu_seconds, histogram_quantile, rss_mib, scrape, since, total, wait_ready, wait_until_applied, wait_until_idle,
    worker_process)
from streams.settings import Settings  # noqa: E402

P99_LIMIT_MS = 500.0
KEEP_UP_SECONDS = 1.0  # the step's last event applied at most this long after it was sent
SESSION_GAP_MS = 30 * 60 * 1000
ACTIONS, ACTION_P = ("view", "click", "cart", "buy"), (0.55, 0.30, 0.10, 0.05)
QUERIES = 1_000_000  # distinct search queries, Zipf(1): the most common few make much of the traffic
QUERY_WORDS = ("cheap", "wireless", "vintage", "black", "kids", "organic", "pro", "mini", "large", "gift",
               "best", "used", "new", "red", "waterproof", "leather", "portable", "smart", "classic", "eco")


# ---------------------------------------------------------------- traffic
class SyntheticTraffic:
    """Production-shaped events: Zipf users and items, categories, sessions, a share of searches."""

    def __init__(self, users: int, items: int, categories: int, text_share: float, seed: int = 0) -> None:
        self.users, self.items, self.categories, self.text_share = users, items, categories, text_share
        self.rng = np.random.default_rng(seed)
        self._user_cdf = _zipf_cdf(users, 1.05)
        self._item_cdf = _zipf_cdf(items, 0.9)
        self._query_cdf = _zipf_cdf(QUERIES, 1.0)
        self._last_ts: dict[int, int] = {}
        self._sessions: dict[int, int] = {}
        self._sent = 0

    def events(self, n: int, click_topic: str, text_topic: str) -> list[OutgoingEvent]:
        users = np.searchsorted(self._user_cdf, self.rng.random(n))
        items = np.searchsorted(self._item_cdf, self.rng.random(n))
        queries = np.searchsorted(self._query_cdf, self.rng.random(n))
        is_text = self.rng.random(n) < self.text_share
        actions = self.rng.choice(len(ACTIONS), size=n, p=ACTION_P)
        now = int(time.time() * 1000)
        out = []
        for user, item, query, text, action in zip(users.tolist(), items.tolist(), queries.tolist(), is_text.tolist(),
                                                   actions.tolist()):
            self._sent += 1
            uid = f"u{user}"
            session = self._session(user, now)
            if text:
                body = {"event_id": f"t{self._sent}", "user_id": uid, "kind": "search", "ts": now,
                        "text": self.query(query)}
                out.append(OutgoingEvent(text_topic, uid, orjson.dumps(body)))
            else:
                body = {"event_id": f"c{self._sent}", "user_id": uid, "item_id": f"i{item}",
                        "action": ACTIONS[action], "ts": now, "session_id": session}
                out.append(OutgoingEvent(click_topic, uid, orjson.dumps(body)))
        return out

    def query(self, n: int) -> str:
        """Search query number n: Zipf-distributed over QUERIES distinct texts, as search logs are."""
        return f"{QUERY_WORDS[n % len(QUERY_WORDS)]} {category_name(n % self.categories)} {n // len(QUERY_WORDS)}"

    def _session(self, user: int, now: int) -> str:
        if now - self._last_ts.get(user, -SESSION_GAP_MS) >= SESSION_GAP_MS:
            self._sessions[user] = self._sessions.get(user, 0) + 1
        self._last_ts[user] = now
        return f"s{user}-{self._sessions[user]}"


class ReplayTraffic:
    """A dataset's events in time order, with fresh event ids and times on every pass."""

    def __init__(self, dataset) -> None:
        from streams.cli.replay import replay_events

        self._base = replay_events(dataset, "c", "t")
        self._next = 0
        self._pass = 0
        self.users = len({e.key for e in self._base})
        self.items = len({e.item_id for e in dataset.clicks})

    def events(self, n: int, click_topic: str, text_topic: str) -> list[OutgoingEvent]:
        out = []
        now = int(time.time() * 1000)
        for _ in range(n):
            if self._next == len(self._base):
                self._next, self._pass = 0, self._pass + 1
            event = self._base[self._next]
            self._next += 1
            body = orjson.loads(event.value)
            body["event_id"] = f"{body['event_id']}.p{self._pass}"
            body["ts"] = now  # the dataset's order, today's clock: nothing is late, nothing in the future
            out.append(OutgoingEvent(click_topic if event.topic == "c" else text_topic, event.key,
                                     orjson.dumps(body)))
        return out


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def category_name(index: int) -> str:
    return f"category-{index}"


# ---------------------------------------------------------------- model
def untrained_checkpoint(out: Path, items: int, categories: int) -> Path:
    """A checkpoint of the production shape with untrained weights over ``items`` items."""
    import torch

    from encoders.checkpoint import CheckpointMetadata, save_checkpoint
    from encoders.config import EncoderConfig
    from encoders.nn.fusion import TextFusion
    from encoders.nn.model import SequenceEncoder
    from encoders.vocab import ItemVocab

    torch.manual_seed(0)
    vocab = ItemVocab(f"i{n}" for n in range(items))
    model = SequenceEncoder(EncoderConfig(n_items=len(vocab), d_model=64, n_layers=2, n_heads=2, max_len=200,
                                          action_head=True))
    cats = {f"i{n}": (category_name(n % categories),) for n in range(items)}
    meta = CheckpointMetadata("synthetic-load", extra={"untrained": True, "action_classes": list(ACTIONS)})
    return save_checkpoint(out, model, vocab, meta, fusion=TextFusion(384, 64), categories=cats)


# ---------------------------------------------------------------- one step
@dataclass
class Step:
    label: str
    rate_sent: float
    applied_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    lag: float
    drain_s: float
    cpu: float
    broker_cpu: float | None  # None: a broker of your own (--broker), not watched
    rss_mib: float
    redis_mib: float
    bytes_per_user: float
    text_hits: float | None  # share of texts found in the worker's embedding cache

    @property
    def keeps_up(self) -> bool:
        return (self.p99_ms is not None and self.p99_ms <= P99_LIMIT_MS and self.drain_s <= KEEP_UP_SECONDS)

    def line(self) -> str:
        p50 = f"{self.p50_ms:.0f}" if self.p50_ms is not None else "-"
        p99 = f"{self.p99_ms:.0f}" if self.p99_ms is not None else "-"
        verdict = "keeps up" if self.keeps_up else "falls behind"
        hits = f"{100 * self.text_hits:.0f}%" if self.text_hits is not None else "-"
        broker = f"{100 * self.broker_cpu:.0f}%" if self.broker_cpu is not None else "-"
        return (f"{self.label:<14} sent {self.rate_sent:>7.0f} ev/s  applied {self.applied_per_s:>7.0f} ev/s  "
                f"freshness p50 {p50:>5} ms p99 {p99:>5} ms  lag {self.lag:>6.0f}  drain {self.drain_s:>5.1f} s  "
                f"worker cpu {100 * self.cpu:>4.0f}% rss {self.rss_mib:>5.0f} MiB  broker cpu {broker:>4}  "
                f"redis {self.redis_mib:>6.1f} MiB "
                f"({self.bytes_per_user:>6.0f} B/active user)  text cache hits {hits:>4}  {verdict}")


class Run:
    """The stack, the worker and the traffic of one benchmark run."""

    def __init__(self, settings: Settings, worker, traffic, broker_pid: int | None = None) -> None:
        self.settings, self.worker, self.traffic, self.broker_pid = settings, worker, traffic, broker_pid
        self.producer = Producer(settings.broker)
        self.metrics_url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        self.users: set[str] = set()  # every user sent an event so far

    def step(self, label: str, rate: float, n_events: int) -> Step:
        events = self.traffic.events(n_events, self.settings.topic_clicks, self.settings.topic_texts)
        self.users.update(e.key for e in events)
        before, cpu_before, broker_before = scrape(self.metrics_url), cpu_seconds(self.worker.pid), self._broker_cpu()
        started = time.monotonic()
        ends = self.producer.send_all(events, rate=rate)
        sent_at = time.monotonic()
        lag = total(scrape(self.metrics_url), "iu_consumer_lag")
        wait_until_applied(self.settings, ends, self.worker, timeout=3600, poll=0.1)
        done = time.monotonic()
        wait_until_idle(self.settings.metrics_port, timeout=60)  # the last batch's recommendations published
        samples = since(scrape(self.metrics_url), before)
        elapsed = max(done - started, 1e-9)
        cpu = (cpu_seconds(self.worker.pid) - cpu_before) / elapsed
        broker_cpu = None if self.broker_pid is None else (self._broker_cpu() - broker_before) / elapsed
        applied = total(samples, "iu_events_total", outcome="applied")
        quantile = (lambda q: None if (v := histogram_quantile(samples, "iu_freshness_seconds", q)) is None
                    else 1000 * v)
        memory, per_user = asyncio.run(_redis_memory(self.settings))
        texts = total(samples, "iu_text_cache_total")
        hits = total(samples, "iu_text_cache_total", outcome="hit") / texts if texts else None
        return Step(label, len(events) / max(sent_at - started, 1e-9), applied / elapsed,
                    quantile(0.5), quantile(0.99), lag, done - sent_at, cpu, broker_cpu, rss_mib(self.worker.pid),
                    memory / 2**20, per_user, hits)

    def _broker_cpu(self) -> float:
        return 0.0 if self.broker_pid is None else cpu_seconds(self.broker_pid)

    def close(self) -> None:
        self.producer.close()


async def _redis_memory(settings: Settings, sample: int = 200) -> tuple[float, float]:
    """Redis used memory, and the mean MEMORY USAGE of a sample of users' keys."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(settings.redis_url)
    try:
        used = float((await client.info("memory"))["used_memory"])
        keys = []
        async for key in client.scan_iter(match=f"{settings.key_prefix}:{{u:*}}:meta", count=1000):
            keys.append(key)
            if len(keys) >= sample:
                break
        return used, await _bytes_per_user(client, [k.decode().split("{u:", 1)[1].split("}", 1)[0] for k in keys],
                                           settings)
    finally:
        await client.aclose()


async def _bytes_per_user(client, users: list[str], settings: Settings) -> float:
    from state.keys import KeySpace

    if not users:
        return 0.0
    space = KeySpace(settings.key_prefix)
    sizes = []
    for user in users:
        usage = [await client.memory_usage(k) for k in space.user(user).script_keys()]
        sizes.append(sum(u or 0 for u in usage))
    return float(np.mean(sizes))


def bytes_at_bounds(run: Run, probe_users: int = 20) -> float:
    """MEMORY USAGE per user of users who sent --max-history clicks and --max-texts texts through the pipeline."""
    s = run.settings
    events = []
    for u in range(probe_users):
        uid = f"probe{u}"
        base = int(time.time() * 1000) - 10_000
        for n in range(s.max_history):
            body = {"event_id": f"pc{u}.{n}", "user_id": uid, "item_id": f"i{n % 1000}", "action": "view",
                    "ts": base + n, "session_id": f"ps{u}"}
            events.append(OutgoingEvent(s.topic_clicks, uid, orjson.dumps(body)))
        for n in range(s.max_texts):
            body = {"event_id": f"pt{u}.{n}", "user_id": uid, "kind": "review", "ts": base + n,
                    "text": f"probe review {n} of a fine item, with some words about it"}
            events.append(OutgoingEvent(s.topic_texts, uid, orjson.dumps(body)))
    wait_until_applied(s, run.producer.send_all(events), run.worker, timeout=3600)
    wait_until_idle(s.metrics_port, timeout=60)  # profiles are written after the offsets

    async def measure() -> float:
        import redis.asyncio as redis

        client = redis.Redis.from_url(s.redis_url)
        try:
            return await _bytes_per_user(client, [f"probe{u}" for u in range(probe_users)], s)
        finally:
            await client.aclose()

    return asyncio.run(measure())


# ---------------------------------------------------------------- the run
def find_capacity(run: Run, seconds: float, start_rate: float, max_rate: float) -> tuple[Step | None, list[Step]]:
    """Double the rate until a step falls behind, then bisect twice between the last pass and that step."""
    steps: list[Step] = []
    best: Step | None = None
    low, high, rate = 0.0, None, start_rate
    while rate <= max_rate:
        step = run.step(f"ramp {rate:.0f}", rate, int(rate * seconds))
        steps.append(step)
        print(step.line(), flush=True)
        if step.keeps_up:
            best, low = step, rate
            rate *= 2
        else:
            high = rate
            break
    for _ in range(2 if high is not None else 0):
        rate = (low + high) / 2 if low else high / 2
        step = run.step(f"bisect {rate:.0f}", rate, int(rate * seconds))
        steps.append(step)
        print(step.line(), flush=True)
        if step.keeps_up:
            best, low = step, rate
        else:
            high = rate
    return best, steps


@contextlib.contextmanager
def servers(args) -> Iterator[tuple[str, str, int | None]]:
    """(bootstrap servers, Redis URL, the pid of the broker started here or None)."""
    if args.broker and args.redis:
        yield args.broker, args.redis, None
        return
    with embedded_stack(start_kafka if args.start_broker == "kafka" else None) as stack:
        if not args.redis:
            _renice(stack.redis.process.pid, args.serving_nice)
        yield (args.broker or stack.broker_url, args.redis or stack.redis_url,
               None if args.broker else stack.broker.process.pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000, help="synthetic users [default: 1,000,000]")
    parser.add_argument("--items", type=int, default=1_000_000, help="synthetic catalogue size [default: 1,000,000]")
    parser.add_argument("--categories", type=int, default=20, help="synthetic categories [default: 20]")
    parser.add_argument("--text-share", type=float, default=0.05, help="share of text events [default: 0.05]")
    parser.add_argument("--data", default=None, help="replay this dataset instead of synthetic traffic")
    parser.add_argument("--checkpoint", default=None,
                        help="model for --data [default: a small one trained here on it]")
    parser.add_argument("--broker", default=None,
                        help="Kafka bootstrap servers of your own [default: start one, see --start-broker]")
    parser.add_argument("--redis", default=None, help="Redis URL [default: embedded Valkey]")
    parser.add_argument("--start-broker", choices=("tansu", "kafka"), default="tansu",
                        help="the broker started here when --broker is not given: tansu (embedded) or kafka "
                             "(Apache Kafka from Maven Central; needs java and mvn) [default: tansu]")
    parser.add_argument("--rate", type=float, default=None, help="hold this many events/s (with --seconds)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each step [default: 10]")
    parser.add_argument("--find-capacity", action="store_true", help="150 ev/s, a burst, then ramp (see above)")
    parser.add_argument("--burst", type=int, default=20_000, help="events of the burst step [default: 20,000]")
    parser.add_argument("--start-rate", type=float, default=250.0, help="first rate of the ramp [default: 250]")
    parser.add_argument("--max-rate", type=float, default=64_000.0, help="stop the ramp here [default: 64,000]")
    parser.add_argument("--read-rate", type=float, default=None,
                        help="with --rate: read API requests/s during the step (wrk; see above) [default: none]")
    parser.add_argument("--read-from", choices=("worker", "process"), default="worker",
                        help="with --read-rate: the worker's port, or a read-api process of its own "
                             "[default: worker]")
    parser.add_argument("--worker-nice", type=int, default=0, choices=range(0, 20), metavar="N",
                        help="the worker's nice value, 0-19: a lower CPU priority than Redis and the read API "
                             "[default: 0, as started]")
    parser.add_argument("--serving-nice", type=int, default=0, choices=range(-20, 20), metavar="N",
                        help="the nice value of the embedded Redis and the read-api process, -20-19 (below 0: "
                             "root or CAP_SYS_NICE) [default: 0, as started]")
    parser.add_argument("--read-users", type=int, default=5000,
                        help="with --read-rate: events sent first, whose users are read [default: 5000]")
    parser.add_argument("--batch-max", type=int, default=None, help="worker --batch-max [default: the worker's]")
    parser.add_argument("--batch-within", type=float, default=None,
                        help="worker --batch-within [default: the worker's]")
    parser.add_argument("--fetch-max-wait", type=float, default=None,
                        help="worker --fetch-max-wait [default: the worker's]")
    parser.add_argument("--fetch-min-bytes", type=int, default=None,
                        help="worker --fetch-min-bytes [default: the worker's]")
    args = parser.parse_args(argv)
    if not args.find_capacity and args.rate is None:
        parser.error("give --rate R (with --seconds S) or --find-capacity")
    if args.broker and args.start_broker == "kafka":
        parser.error("--start-broker kafka starts a broker here; leave it out with --broker")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive (--find-capacity includes a burst)")
    if args.read_rate is not None and (args.rate is None or args.find_capacity or args.read_rate <= 0):
        parser.error("--read-rate takes a positive rate, with --rate (not --find-capacity)")
    if args.serving_nice and (args.redis or args.read_from != "process"):
        parser.error("--serving-nice takes the embedded Redis (no --redis) and --read-from process")
    if args.serving_nice < 0 and not _may_raise_priority():
        parser.error(f"--serving-nice {args.serving_nice}: a nice value below 0 needs root or CAP_SYS_NICE")

    with tempfile.TemporaryDirectory(prefix="iu-load-") as tmp, servers(args) as (broker, redis_url, broker_pid):
        workdir = Path(tmp)
        traffic, checkpoint = _traffic_and_model(args, workdir)
        name = f"load{os.getpid()}"
        overrides = {name: getattr(args, name) for name in ("batch_max", "batch_within", "fetch_max_wait",
                                                                 "fetch_min_bytes")
                     if getattr(args, name) is not None}
        settings = Settings(broker=broker, redis_url=redis_url, checkpoint=str(checkpoint), app_id=f"{name}-group",
                            topic_clicks=f"{name}-clicks", topic_texts=f"{name}-texts", topic_recs=f"{name}-recs",
                            topic_dead=f"{name}-dead", key_prefix=name, metrics_port=free_port(), log_level="warn",
                            checkpoint_poll=0, **overrides)
        ensure_topics(broker, [settings.topic_clicks, settings.topic_texts, settings.topic_recs, settings.topic_dead],
                      settings.partitions)
        with worker_process(settings, workdir / "worker.log") as worker:
            _renice(worker.pid, args.worker_nice)  # before its threads start: they inherit it
            wait_ready(settings.metrics_port, timeout=600)
            _renice(worker.pid, args.worker_nice)  # and any a thread started before the first call
            run = Run(settings, worker, traffic, broker_pid)
            try:
                warm = run.step("warm-up", 200, 200)  # models loaded, group joined, first shapes compiled
                print(warm.line(), flush=True)
                result = _measure(run, args)
                result["bytes_per_user"] = bytes_at_bounds(run)
                print(f"bytes per user at the default bounds ({settings.max_history} clicks, "
                      f"{settings.max_texts} texts; MEMORY USAGE of every key): {result['bytes_per_user']:.0f}")
            finally:
                run.close()
    print("RESULT " + " ".join(f"{key}={_fmt(result.get(key))}" for key in (
        "capacity_events_per_s", "p99_ms_at_capacity", "p99_ms_at_150", "burst_events_per_s", "bytes_per_user"))
          + f" users={traffic.users} items={traffic.items}")
    return 0


def _may_raise_priority() -> bool:
    """Whether this process may lower a nice value (try it on itself, then put it back)."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, current - 1)
    except PermissionError:
        return False
    os.setpriority(os.PRIO_PROCESS, 0, current)
    return True


def _renice(pid: int, nice: int) -> None:
    """Set the nice value of every thread of ``pid`` (Linux keeps one a thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def _traffic_and_model(args, workdir: Path):
    if args.data:
        from encoders.data import load_dataset

        dataset = load_dataset(args.data)
        checkpoint = args.checkpoint
        if checkpoint is None:
            from encoders.training.train import train

            print(f"training a small model on {dataset.name} (pass --checkpoint to use yours)", flush=True)
            checkpoint = train(dataset, workdir / "model", d_model=48, n_layers=2, n_heads=2, max_len=100, epochs=5,
                               progress=False)
        print(f"traffic: replay of {dataset.name} ({len(dataset.clicks)} clicks, {len(dataset.texts)} texts), "
              f"trained model {checkpoint}", flush=True)
        return ReplayTraffic(dataset), checkpoint
    started = time.monotonic()
    checkpoint = untrained_checkpoint(workdir / "model", args.items, args.categories)
    print(f"traffic: synthetic, {args.users} users (Zipf), {args.items} items (Zipf), {args.categories} categories, "
          f"{100 * args.text_share:.0f}% searches; model: production shape with UNTRAINED weights (this measures "
          f"cost, not quality), written in {time.monotonic() - started:.0f}s", flush=True)
    return SyntheticTraffic(args.users, args.items, args.categories, args.text_share), checkpoint


def _measure(run: Run, args) -> dict:
    if args.read_rate:
        print(run.step("read users", 0, args.read_users).line(), flush=True)
        step = _step_with_reads(run, args)
        print(step.line(), flush=True)
    elif not args.find_capacity:
        step = run.step(f"rate {args.rate:.0f}", args.rate, int(args.rate * args.seconds))
        print(step.line(), flush=True)
    if not args.find_capacity:
        return {"capacity_events_per_s": step.applied_per_s if step.keeps_up else None,
                "p99_ms_at_capacity": step.p99_ms if step.keeps_up else None,
                "p99_ms_at_150": step.p99_ms if args.rate == 150 else None}
    at_150 = run.step("steady 150", 150, int(150 * args.seconds))
    print(at_150.line(), flush=True)
    burst = run.step("burst", 0, args.burst)
    print(burst.line(), flush=True)
    best, _ = find_capacity(run, args.seconds, args.start_rate, args.max_rate)
    if best is None:
        print(f"no rate from {args.start_rate:.0f} events/s up keeps p99 under {P99_LIMIT_MS:.0f} ms", flush=True)
    return {"capacity_events_per_s": best.rate_sent if best else 0, "p99_ms_at_capacity": best.p99_ms if best else None,
            "p99_ms_at_150": at_150.p99_ms, "burst_events_per_s": burst.applied_per_s}


def _step_with_reads(run: Run, args) -> Step:
    """The --rate step with wrk reading the worker's read API at --read-rate meanwhile; prints the reads' line."""
    import shutil

    from read_api_bench import paced_wrk, summary

    if not shutil.which("wrk"):
        sys.exit("load.py: --read-rate needs wrk (apt-get install -y wrk)")
    users = sorted(run.users)
    with tempfile.TemporaryDirectory(prefix="iu-wrk-") as folder, _read_server(run, args, Path(folder)) as base:
        before = scrape(f"{base}/metrics")
        wrk = paced_wrk(base, users, args.read_rate, int(args.seconds), Path(folder))
        step = run.step(f"rate {args.rate:.0f}", args.rate, int(args.rate * args.seconds))
        out, _ = wrk.communicate(timeout=args.seconds + 120)
        served = since(scrape(f"{base}/metrics"), before)
    reads = summary(out)
    server = {q: 1000 * (histogram_quantile(served, "iu_api_seconds", q) or float("nan")) for q in (0.5, 0.99)}
    print(f"read API ({args.read_from}) beside it: {reads['rps']:.0f} requests/s over {len(users)} users, p50 {reads['p50']:.2f} ms, "
          f"p99 {reads['p99']:.2f} ms (wrk); server side p50 {server[0.5]:.2f} ms, p99 {server[0.99]:.2f} ms; "
          f"{reads['requests']} requests, {reads['failed']} failed", flush=True)
    return step


@contextlib.contextmanager
def _read_server(run: Run, args, folder: Path) -> Iterator[str]:
    """The base URL to read from: the worker's port, or a read-api process started for the step."""
    from read_api_bench import read_api_process

    if args.read_from == "worker":
        yield f"http://127.0.0.1:{run.settings.metrics_port}"
        return
    with read_api_process(run.settings.redis_url, run.settings.key_prefix, folder / "read-api.log",
                          nice=args.serving_nice) as base:
        yield base


def _fmt(value) -> str:
    return "NA" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    sys.exit(main())
