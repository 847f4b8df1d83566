"""End to end on real servers: Tansu, Valkey and a worker process.

A slice of MovieLens latest-small (ratings as clicks, tags as texts) is replayed
with planted bad events, duplicates and a replay of already-sent events. Then:
every valid event is in Redis exactly once, every bad one is in the dead-letter
topic with a reason, every touched user got recommendation events with versions
1..n, and the worker's metrics agree with those counts.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from collections import Counter, defaultdict
from urllib.request import urlopen

import orjson
import pytest

from encoders.data import load_movielens_small
from state import Store
from state.layout import event_hash
from streams.harness import (wait_for_fault, wait_for_metric, wait_not_ready, wait_ready, wait_until_applied,
                             wait_until_idle, worker_process)
from streams.embedded import free_port
from streams.harness import scrape, total
from streams.cli.replay import replay_events
from streams.clients.kafka import OutgoingEvent, Producer, ensure_topics
from streams.settings import Settings

pytestmark = pytest.mark.integration

SLICE = 1500
NOW = int(time.time() * 1000)


def bad_events(click_topic: str, text_topic: str) -> list[tuple[str, bytes | None, bytes, str]]:
    """(topic, key, value, expected reason) of each planted bad event."""
    good = {"event_id": "bad-0", "user_id": "1", "item_id": "31", "action": "view", "ts": NOW - 1000}

    def with_(**changes) -> bytes:
        return orjson.dumps({**good, **changes})

    return [
        (click_topic, b"1", b"{broken json", "bad_json"),
        (click_topic, b"1", b"\xff\xfe\x00", "bad_json"),
        (click_topic, b"1", b"[1,2,3]", "not_object"),
        (click_topic, b"1", with_(ts="noon"), "wrong_type"),
        (click_topic, b"1", with_(item_id=None), "missing_field"),
        (click_topic, b"1", with_(user_id="1 OR 1=1"), "bad_id"),
        (click_topic, b"1", with_(ts=NOW + 86_400_000 * 365), "ts_out_of_range"),
        (click_topic, b"2", with_(user_id="1"), "key_mismatch"),
        (text_topic, b"1", orjson.dumps({"event_id": "bad-t", "user_id": "1", "kind": "review",
                                         "text": "x" * 5000, "ts": NOW - 1000}), "text_too_long"),
        (text_topic, b"1", orjson.dumps({"event_id": "bad-t2", "user_id": "1", "kind": "poem",
                                         "text": "hi", "ts": NOW - 1000}), "bad_kind"),
    ]


@pytest.fixture(scope="module")
def movielens_checkpoint(data_dir, tmp_path_factory):
    from encoders.training.train import train

    dataset = load_movielens_small(data_dir / "ml-latest-small")
    return train(dataset, tmp_path_factory.mktemp("ml") / "ckpt", d_model=32, n_layers=1, n_heads=2,
                 max_len=50, epochs=1, progress=False)


def consume_all(broker: str, topic: str, expected: int, timeout: float = 60.0) -> list[dict]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=broker, group_id=None, auto_offset_reset="earliest",
                             consumer_timeout_ms=1000)
    found: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < expected and time.monotonic() < deadline:
            found += [orjson.loads(m.value) for m in consumer]
        time.sleep(1.0)  # anything beyond the expected count would show up now
        found += [orjson.loads(m.value) for m in consumer]
    finally:
        consumer.close()
    return found


def test_replay_with_bad_events_lands_exactly_once(broker, broker_url, redis_url, data_dir, movielens_checkpoint,
                                                   tmp_path):
    settings = Settings(broker=broker_url, redis_url=redis_url, checkpoint=str(movielens_checkpoint),
                        topic_clicks="it-clicks", topic_texts="it-texts", topic_recs="it-recs",
                        topic_dead="it-dead", app_id="it-worker", key_prefix="it", metrics_port=free_port(),
                        max_history=5000, batch_max=128, batch_within=0.1,
                        overlap=False)  # online metrics recomputed exactly below need one batch at a time
    dataset = load_movielens_small(data_dir / "ml-latest-small")
    good = replay_events(dataset, settings.topic_clicks, settings.topic_texts, limit=SLICE)
    bad = bad_events(settings.topic_clicks, settings.topic_texts)
    ensure_topics(broker_url, ["it-clicks", "it-texts", "it-recs", "it-dead"], settings.partitions)

    producer = Producer(broker_url)
    with worker_process(settings, tmp_path / "worker.log") as worker:
        ends = producer.send_all(good[: SLICE // 2])
        for topic, key, value, _ in bad:
            producer.send_raw(topic, key, value)
        # The second half, then the first 100 again: a producer retry storm.
        ends2 = producer.send_all(good[SLICE // 2:] + good[:100])
        producer.close()
        ends = {tp: max(ends.get(tp, -1), ends2.get(tp, -1)) for tp in ends | ends2}
        wait_until_applied(settings, ends, worker, timeout=240)
        wait_until_idle(settings.metrics_port)  # every batch taken is published
        metrics = scrape(f"http://127.0.0.1:{settings.metrics_port}/metrics")
        assert worker.poll() is None, "the worker must not exit on bad input"

    expected_clicks, expected_texts = defaultdict(set), defaultdict(set)
    for event in good:
        body = orjson.loads(event.value)
        (expected_clicks if event.topic == "it-clicks" else expected_texts)[body["user_id"]].add(body["event_id"])

    # Every valid event is in Redis exactly once.
    store = Store.from_url(redis_url, keys=__import__("state").KeySpace("it"))

    async def read_all():
        users = sorted(set(expected_clicks) | set(expected_texts))
        return {u: (await store.history(u), await store.meta(u)) for u in users}

    stored = asyncio.run(read_all())
    for user, (history, meta) in stored.items():
        assert sorted(history.clicks.events.tolist()) == sorted(event_hash(e) for e in expected_clicks[user])
        assert (history.texts.count if history.texts else 0) == len(expected_texts[user])
        assert meta.get("applied:c", 0) == len(expected_clicks[user])
        assert meta.get("applied:t", 0) == len(expected_texts[user])
        assert history.clicks.ts.tolist() == sorted(history.clicks.ts.tolist())
        assert history.texts is None or len(history.texts.mean) == 384  # the text encoder was on

    # Every bad event is dead-lettered once, with its reason.
    letters = consume_all(broker_url, "it-dead", len(bad))
    assert sorted(letter["reason"] for letter in letters) == sorted(reason for *_, reason in bad)
    assert all(letter["topic"] in {"it-clicks", "it-texts"} and letter["error"] for letter in letters)

    # Every touched user got recommendation events, versions 1..n without gaps or repeats.
    recs = consume_all(broker_url, "it-recs", len(stored))
    versions = defaultdict(list)
    for rec in recs:
        versions[rec["user_id"]].append(rec["version"])
        assert len(rec["items"]) == settings.top_k
    assert set(versions) == set(stored)
    for user, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), user

    # The metrics agree.
    n_valid = sum(map(len, expected_clicks.values())) + sum(map(len, expected_texts.values()))
    assert total(metrics, "iu_events_total", outcome="applied") == n_valid
    assert total(metrics, "iu_events_total", outcome="duplicate") + total(
        metrics, "iu_events_total", outcome="replay") == 100
    assert total(metrics, "iu_dead_letters_total") == len(bad)
    reasons = Counter(reason for *_, reason in bad)
    for reason, count in reasons.items():
        assert total(metrics, "iu_dead_letters_total", reason=reason) == count
    assert total(metrics, "iu_recommendations_published_total") == len(recs)
    assert total(metrics, "iu_freshness_seconds_count") == len(recs)

    # Online HR@10 / NDCG@10 agree with an offline computation over the same replay:
    # the k-th click of a user is scored against the newest list that reflected
    # fewer than k of that user's clicks.
    clicks_by_user = defaultdict(list)
    for event in good:
        if event.topic == "it-clicks":
            body = orjson.loads(event.value)
            clicks_by_user[body["user_id"]].append(body["item_id"])
    lists = defaultdict(list)
    for rec in sorted(recs, key=lambda r: r["version"]):
        lists[rec["user_id"]].append((rec["clicks_applied"], [i["item_id"] for i in rec["items"]]))
    scored = hits = gain = 0
    for user, items in clicks_by_user.items():
        for k, item in enumerate(items, 1):
            shown = [ranked for applied, ranked in lists[user] if applied <= k - 1]
            if not shown:
                continue
            scored += 1
            if item in shown[-1]:
                hits += 1
                gain += 1 / math.log2(shown[-1].index(item) + 2)
    assert scored > 100
    assert total(metrics, "iu_online_clicks_total") == scored
    assert total(metrics, "iu_online_hits_total") == hits
    assert total(metrics, "iu_online_ndcg_gain_total") == pytest.approx(gain)
    assert total(metrics, "iu_errors_total") == 0
    # --idempotent-producer auto: Apache Kafka grants producer ids, the embedded broker refuses them.
    assert total(metrics, "iu_producer_idempotent") == (1 if broker.name == "kafka" else 0)


def test_a_new_consumer_group_resumes_from_the_offsets_in_redis(broker_url, redis_url, data_dir,
                                                                movielens_checkpoint, tmp_path):
    """Kafka knows nothing of a new group's position; Redis does, and the worker must use it."""
    settings = Settings(broker=broker_url, redis_url=redis_url, checkpoint=str(movielens_checkpoint),
                        topic_clicks="rs-clicks", topic_texts="rs-texts", topic_recs="rs-recs",
                        topic_dead="rs-dead", app_id="rs-first", key_prefix="rs", metrics_port=free_port(),
                        text_encoder=False, batch_within=0.1)
    dataset = load_movielens_small(data_dir / "ml-latest-small")
    events = replay_events(dataset, settings.topic_clicks, settings.topic_texts, limit=600)
    ensure_topics(broker_url, ["rs-clicks", "rs-texts", "rs-recs", "rs-dead"], settings.partitions)
    producer = Producer(broker_url)
    with worker_process(settings, tmp_path / "first.log") as worker:
        wait_until_applied(settings, producer.send_all(events[:500]), worker, timeout=180)

    second = settings.with_overrides(app_id="rs-second", metrics_port=free_port())
    with worker_process(second, tmp_path / "second.log") as worker:
        wait_until_applied(second, producer.send_all(events[500:]), worker, timeout=180)
        wait_until_idle(second.metrics_port)  # Redis has the offsets a moment before the worker counts them
        metrics = scrape(f"http://127.0.0.1:{second.metrics_port}/metrics")
        for path in ("healthz", "readyz"):
            with urlopen(f"http://127.0.0.1:{second.metrics_port}/{path}", timeout=5) as reply:
                assert reply.status == 200
    producer.close()
    # Without the seek to Redis's offsets the new group would start at the beginning
    # and see the first 500 events again (as fenced replays).
    assert total(metrics, "iu_events_total", outcome="replay") == 0
    assert total(metrics, "iu_events_total", outcome="applied") == 100


def test_users_applied_but_never_published_are_recovered(broker_url, redis_url, movielens_checkpoint, tmp_path):
    """A worker that died between the Redis step and publishing leaves its users pending;
    the next owner of the partition publishes them without any new event."""
    from state import Entry, KeySpace, StoredClick

    settings = Settings(broker=broker_url, redis_url=redis_url, checkpoint=str(movielens_checkpoint),
                        topic_clicks="rc-clicks", topic_texts="rc-texts", topic_recs="rc-recs",
                        topic_dead="rc-dead", app_id="rc-worker", key_prefix="rc", metrics_port=free_port(),
                        text_encoder=False)
    ensure_topics(broker_url, ["rc-clicks", "rc-texts", "rc-recs", "rc-dead"], settings.partitions)
    store = Store.from_url(redis_url, keys=KeySpace("rc"))
    crashed_batch = [Entry(user, "rc-clicks", partition, 0, StoredClick(f"{user}-e", "31", 3, NOW - 5000))
                     for partition, user in enumerate(["7", "8", "9"])]
    asyncio.run(store.apply(crashed_batch))

    with worker_process(settings, tmp_path / "worker.log"):
        recs = consume_all(broker_url, "rc-recs", 3, timeout=90)

    assert sorted(r["user_id"] for r in recs) == ["7", "8", "9"]
    assert all(r["version"] == 1 for r in recs)

    async def still_pending():
        fresh = Store.from_url(redis_url, keys=KeySpace("rc"))  # a new loop needs a new client
        return await fresh.pending_users("rc-clicks", range(settings.partitions))

    assert asyncio.run(still_pending()) == {}


def test_two_workers_on_a_redis_cluster_split_the_partitions_and_apply_each_event_once(
        broker_url, redis_cluster_url, data_dir, movielens_checkpoint, tmp_path):
    base = Settings(broker=broker_url, redis_url=redis_cluster_url, redis_cluster=True,
                    checkpoint=str(movielens_checkpoint),
                    topic_clicks="so-clicks", topic_texts="so-texts", topic_recs="so-recs", topic_dead="so-dead",
                    app_id="so-group", key_prefix="so", text_encoder=False, batch_within=0.1)
    first, second = (base.with_overrides(metrics_port=free_port()) for _ in range(2))
    events = replay_events(load_movielens_small(data_dir / "ml-latest-small"), "so-clicks", "so-texts", limit=1200)
    ensure_topics(broker_url, ["so-clicks", "so-texts", "so-recs", "so-dead"], base.partitions)
    producer = Producer(broker_url)
    with worker_process(first, tmp_path / "a.log") as a, worker_process(second, tmp_path / "b.log") as b:
        wait_ready(first.metrics_port)
        wait_ready(second.metrics_port)
        ends = producer.send_all(events)
        wait_until_applied(base, ends, a, timeout=240)
        wait_until_idle(first.metrics_port)
        wait_until_idle(second.metrics_port)
        assert b.poll() is None
        samples = [scrape(f"http://127.0.0.1:{s.metrics_port}/metrics") for s in (first, second)]
    producer.close()
    applied = [total(m, "iu_events_total", outcome="applied") for m in samples]
    assert all(count > 0 for count in applied), applied
    assert sum(applied) == len(events)


@pytest.mark.brokers("tansu")  # the broker that refuses producer ids
def test_an_idempotent_producer_the_broker_refuses_is_one_line_naming_the_flag(broker_url, redis_url,
                                                                             synthetic_checkpoint):
    result = subprocess.run([sys.executable, "-m", "streams", "worker", "--broker", broker_url, "--redis", redis_url,
                             "--checkpoint", str(synthetic_checkpoint), "--text-encoder", "false",
                             "--metrics-port", "0", "--idempotent-producer", "on", "--app-id", "idem-on"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("interest-updater: error: --idempotent-producer on:") and "Traceback" not in result.stderr


def test_sigterm_finishes_the_micro_batch_in_flight(broker_url, redis_url, movielens_checkpoint, tmp_path):
    """SIGTERM arrives while a batch of texts is held right after embedding (a test fault
    point): the worker finishes, applies and publishes that batch before it leaves, so no
    user is left pending, and it exits 0."""
    from state import KeySpace
    from streams.clients.kafka import OutgoingEvent

    settings = Settings(broker=broker_url, redis_url=redis_url, checkpoint=str(movielens_checkpoint),
                        topic_clicks="gs-clicks", topic_texts="gs-texts", topic_recs="gs-recs",
                        topic_dead="gs-dead", app_id="gs-worker", key_prefix="gs", metrics_port=free_port(),
                        batch_max=1000, batch_within=0.5)
    review = "a long review of the film, its actors, its music and its ending; " * 20
    texts = [OutgoingEvent("gs-texts", f"u{i % 50}", orjson.dumps(
        {"event_id": f"r{i}", "user_id": f"u{i % 50}", "kind": "review", "text": f"{i} {review}", "ts": NOW}))
        for i in range(200)]
    ensure_topics(broker_url, ["gs-clicks", "gs-texts", "gs-recs", "gs-dead"], settings.partitions)
    producer = Producer(broker_url)
    fault = {"IU_TEST_FAULT": "after_embed:hold", "IU_TEST_FAULT_DIR": str(tmp_path)}
    with worker_process(settings, tmp_path / "worker.log", extra_env=fault) as worker:
        wait_ready(settings.metrics_port)
        producer.send_all(texts)
        held = wait_for_fault(tmp_path, "after_embed", worker)  # the batch is in flight, not yet applied
        worker.terminate()
        wait_not_ready(settings.metrics_port)  # the worker has seen SIGTERM
        (tmp_path / "after_embed.release").touch()
        assert worker.wait(60) == 0
    producer.close()
    assert "SIGTERM received" in (tmp_path / "worker.log").read_text()

    async def check():
        store = Store.from_url(redis_url, keys=KeySpace("gs"))
        try:
            applied = await store.resume_offsets("gs-texts")
            pending = await store.pending_users("gs-texts", range(settings.partitions))
        finally:
            await store.close()
        return applied, pending

    applied, pending = asyncio.run(check())
    for where, last in held["last_offsets"].items():  # the held batch is applied whole
        assert applied[int(where.rsplit(":", 1)[1])] >= last, where
    assert held["records"] > 0 and pending == {}


def test_a_redis_outage_of_ten_seconds_loses_nothing(broker_url, movielens_checkpoint, data_dir, tmp_path):
    """Redis (with an append-only file) is stopped for 10 s mid-stream and restarted on the
    same port: the worker retries with backoff, reports the outage, and applies every event once."""
    import threading

    from state import KeySpace
    from streams.embedded import start_redis

    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server = start_redis(redis_dir, persistent=True)
    url = f"redis://127.0.0.1:{server.port}/0"
    settings = Settings(broker=broker_url, redis_url=url, checkpoint=str(movielens_checkpoint),
                        topic_clicks="ro-clicks", topic_texts="ro-texts", topic_recs="ro-recs", topic_dead="ro-dead",
                        app_id="ro-worker", key_prefix="ro", metrics_port=free_port(), text_encoder=False,
                        batch_within=0.1)
    events = replay_events(load_movielens_small(data_dir / "ml-latest-small"), "ro-clicks", "ro-texts", limit=1500)
    ensure_topics(broker_url, ["ro-clicks", "ro-texts", "ro-recs", "ro-dead"], settings.partitions)
    producer = Producer(broker_url)
    ends: dict = {}
    try:
        with worker_process(settings, tmp_path / "worker.log") as worker:
            wait_ready(settings.metrics_port)
            sender = threading.Thread(target=lambda: ends.update(producer.send_all(events, rate=150)))
            sender.start()
            wait_for_metric(settings.metrics_port, "iu_events_total", 200)  # mid-stream: 200 events applied
            server.stop()
            # Not a wait for a condition: the outage is the scenario, 10 s of Redis down while events flow.
            time.sleep(10.0)
            server = start_redis(redis_dir, port=server.port, persistent=True)
            sender.join()
            wait_until_applied(settings, ends, worker, timeout=240)
            wait_until_idle(settings.metrics_port)
            metrics = scrape(f"http://127.0.0.1:{settings.metrics_port}/metrics")
            assert worker.poll() is None
        producer.close()

        async def counts():
            store = Store.from_url(url, keys=KeySpace("ro"))
            users = {orjson.loads(e.value)["user_id"] for e in events}
            return {u: (await store.meta(u)).get("applied:c", 0) for u in users}

        expected = Counter(orjson.loads(e.value)["user_id"] for e in events)
        assert asyncio.run(counts()) == dict(expected)
        assert total(metrics, "iu_errors_total") > 0  # the outage was reported
        assert total(metrics, "iu_events_total", outcome="applied") == len(events)
    finally:
        server.stop()


def without(body: dict, field: str) -> dict:
    return {k: v for k, v in body.items() if k != field}


def malformed_events(n: int, topic_clicks: str, topic_texts: str, seed: int = 7):
    """(topic, key, value, expected reason) for n bad events of every kind, seeded."""
    import random

    rng = random.Random(seed)
    good = {"event_id": "x", "user_id": "u1", "item_id": "31", "action": "view", "ts": NOW - 1000}
    makers = [
        lambda i: (b"{\"event_id\": \"b%d\", \"user_id\": " % i, "bad_json"),
        lambda i: (orjson.dumps({**good, "event_id": f"b{i}"})[: rng.randint(1, 40)], "bad_json"),
        lambda i: (b"\xff\xfe" + bytes(rng.randrange(256) for _ in range(20)), "bad_json"),
        lambda i: (orjson.dumps([i, "list"]), "not_object"),
        lambda i: (orjson.dumps({**good, "event_id": f"b{i}", "ts": str(NOW)}), "wrong_type"),
        lambda i: (orjson.dumps({**good, "event_id": f"b{i}", "item_id": i}), "wrong_type"),
        lambda i: (orjson.dumps(without({**good, "event_id": f"b{i}"}, rng.choice(["item_id", "action", "ts"]))),
                   "missing_field"),
        lambda i: (orjson.dumps({**good, "event_id": f"b{i}", "item_id": "x" * 500}), "bad_id"),
        lambda i: (orjson.dumps({**good, "event_id": f"b{i}", "item_id": rng.choice(["a b", "{u}", "*", "a\nb",
                                                                                   "\x00", "é"])}), "bad_id"),
        lambda i: (orjson.dumps({**good, "event_id": f"b{i}", "action": "DROP TABLE"}), "bad_action"),
        lambda i: (orjson.dumps({**good, "event_id": f"b{i}", "ts": rng.choice([1, NOW * 1000])}), "ts_out_of_range"),
        lambda i: (b" " * 70_000, "too_large"),
    ]
    texts = [
        lambda i: (orjson.dumps({"event_id": f"t{i}", "user_id": "u1", "kind": "review", "text": "y" * 3000,
                                 "ts": NOW}), "text_too_long"),
        lambda i: (orjson.dumps({"event_id": f"t{i}", "user_id": "u1", "kind": "review", "text": "\t\n ",
                                 "ts": NOW}), "empty_text"),
    ]
    out = []
    for i in range(n):
        if i % 10 == 0:
            value, reason = rng.choice(texts)(i)
            out.append((topic_texts, b"u1", value, reason))
        else:
            value, reason = rng.choice(makers)(i)
            out.append((topic_clicks, b"u1", value, reason))
    return out


def test_ten_thousand_malformed_events_are_dead_lettered_and_good_ones_all_applied(
        broker_url, redis_url, data_dir, movielens_checkpoint, tmp_path):
    from state import KeySpace
    from streams.clients.kafka import OutgoingEvent

    settings = Settings(broker=broker_url, redis_url=redis_url, checkpoint=str(movielens_checkpoint),
                        topic_clicks="fz-clicks", topic_texts="fz-texts", topic_recs="fz-recs", topic_dead="fz-dead",
                        app_id="fz-worker", key_prefix="fz", metrics_port=free_port(), text_encoder=False,
                        max_history=5000)
    good = replay_events(load_movielens_small(data_dir / "ml-latest-small"), "fz-clicks", "fz-texts", limit=2000)
    bad = malformed_events(10_000, "fz-clicks", "fz-texts")
    ensure_topics(broker_url, ["fz-clicks", "fz-texts", "fz-recs", "fz-dead"], settings.partitions)
    producer = Producer(broker_url)
    stream = []
    for i, (topic, key, value, _) in enumerate(bad):
        stream.append(OutgoingEvent(topic, key.decode(), value))
        if i % 5 == 0:  # good events interleaved with the bad ones
            stream.append(good[i // 5])
    stream += good[len(bad) // 5:] + good[:200]  # the rest, then 200 resent (duplicates)
    with worker_process(settings, tmp_path / "worker.log") as worker:
        ends = producer.send_all(stream)
        producer.close()
        wait_until_applied(settings, ends, worker, timeout=300)
        wait_until_idle(settings.metrics_port)
        metrics = scrape(f"http://127.0.0.1:{settings.metrics_port}/metrics")
        assert worker.poll() is None

    expected = Counter(reason for *_, reason in bad)
    for reason, count in expected.items():
        assert total(metrics, "iu_dead_letters_total", reason=reason) == count, reason
    assert total(metrics, "iu_dead_letters_total") == len(bad)
    assert total(metrics, "iu_events_total", outcome="applied") == len(good)
    assert total(metrics, "iu_events_total", outcome="duplicate") == 200
    letters = consume_all(broker_url, "fz-dead", len(bad), timeout=120)
    assert len(letters) == len(bad) and all(letter["reason"] and letter["error"] for letter in letters)

    async def applied():
        store = Store.from_url(redis_url, keys=KeySpace("fz"))
        users = {orjson.loads(e.value)["user_id"] for e in good}
        return sum([(await store.meta(u)).get("applied:c", 0) for u in users])

    assert asyncio.run(applied()) == len(good)


def test_an_item_made_unavailable_on_the_items_topic_is_in_no_later_list(broker_url, redis_url, data_dir,
                                                                         movielens_checkpoint, tmp_path):
    settings = Settings(broker=broker_url, redis_url=redis_url, checkpoint=str(movielens_checkpoint),
                        topic_clicks="ci-clicks", topic_texts="ci-texts", topic_items="ci-items",
                        topic_recs="ci-recs", topic_dead="ci-dead", app_id="ci-worker", key_prefix="ci",
                        metrics_port=free_port(), text_encoder=False, batch_within=0.1)
    dataset = load_movielens_small(data_dir / "ml-latest-small")
    producer = Producer(broker_url)
    with worker_process(settings, tmp_path / "worker.log") as worker:
        events = replay_events(dataset, settings.topic_clicks, settings.topic_texts, limit=300)
        wait_until_applied(settings, producer.send_all(events), worker, timeout=180)
        wait_until_idle(settings.metrics_port)
        latest = {rec["user_id"]: [i["item_id"] for i in rec["items"]]
                  for rec in sorted(consume_all(broker_url, "ci-recs", 1, timeout=60), key=lambda r: r["version"])}
        gone = Counter(item for items in latest.values() for item in items).most_common(1)[0][0]
        holders = sorted(user for user, items in latest.items() if gone in items)
        upsert = orjson.dumps({"item_id": gone, "available": False, "ts": NOW, "title": "Withdrawn"})
        wait_until_applied(settings, producer.send_all([OutgoingEvent("ci-items", gone, upsert)]), worker, timeout=60)
        applied_at = int(time.time() * 1000)
        # One more click for each user whose list held the item: without the catalogue it would mostly stay.
        clicks = [OutgoingEvent("ci-clicks", user, orjson.dumps({
            "event_id": f"ci-{user}", "user_id": user, "item_id": next(i for i in latest[user] if i != gone),
            "action": "click", "ts": NOW})) for user in holders]
        wait_until_applied(settings, producer.send_all(clicks), worker, timeout=180)
        wait_until_idle(settings.metrics_port)
        metrics = scrape(f"http://127.0.0.1:{settings.metrics_port}/metrics")
    producer.close()
    after = [rec for rec in consume_all(broker_url, "ci-recs", len(latest) + len(holders), timeout=60)
             if rec["published_at"] > applied_at]
    assert len(holders) >= 3 and sorted(rec["user_id"] for rec in after) == holders
    assert not [rec["user_id"] for rec in after if gone in {item["item_id"] for item in rec["items"]}]
    assert total(metrics, "iu_catalogue_items", state="unavailable") == 1
    assert total(metrics, "iu_events_total", topic="ci-items", outcome="applied") == 1
