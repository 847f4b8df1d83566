"""A running worker switches to a fine-tuned checkpoint while events flow.

Real Tansu broker and Valkey, a worker process watching its --checkpoint
directory. Mid-replay, `finetune` writes a new model into that directory; the
worker loads it beside the old one and swaps between micro-batches. Afterwards:
every event applied exactly once, each user's recommendation versions strictly
increasing with no repeats, published by the old model and then the new one
(never back), and the swap counted in the metrics.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest

from encoders.checkpoint import read_metadata
from encoders.data import load_movielens_small
from streams.embedded import free_port
from streams.harness import scrape, total, wait_for_metric, wait_ready, wait_until_applied, wait_until_idle, worker_process
from streams.cli.replay import replay_events
from streams.clients.kafka import Producer, ensure_topics
from streams.settings import Settings

pytestmark = pytest.mark.integration

EVENTS = 1200
RATE = 150.0  # events/s: the replay lasts about 8 s, the fine-tuning a few
AFTER = 200  # events sent once the swap is seen, so the new model refreshes some users on any machine


def test_a_worker_switches_to_a_finetuned_checkpoint_without_losing_an_event(broker_url, redis_url, data_dir,
                                                                               tmp_path, assert_clicks_applied_once,
                                                                               read_recommendations):
    from encoders.training.finetune import finetune
    from encoders.training.train import train

    dataset = load_movielens_small(data_dir / "ml-latest-small")
    live = train(dataset, tmp_path / "live", d_model=32, n_layers=1, n_heads=2, max_len=50, epochs=1,
                 progress=False)
    old_version = read_metadata(live).model_version
    settings = Settings(broker=broker_url, redis_url=redis_url, checkpoint=str(live), checkpoint_poll=0.5,
                        app_id="sw-group", topic_clicks="sw-clicks", topic_texts="sw-texts", topic_recs="sw-recs",
                        topic_dead="sw-dead", key_prefix="sw", text_encoder=False, batch_within=0.1,
                        max_history=5000, metrics_port=free_port())
    events = replay_events(dataset, settings.topic_clicks, settings.topic_texts, limit=EVENTS + AFTER)
    ensure_topics(broker_url, [settings.topic_clicks, settings.topic_texts, settings.topic_recs,
                               settings.topic_dead], settings.partitions)
    producer = Producer(broker_url)
    ends: dict = {}
    sender = threading.Thread(target=lambda: ends.update(producer.send_all(events[:EVENTS], rate=RATE)))
    since = sorted(e.ts for e in dataset.clicks)[len(dataset.clicks) // 2]
    with worker_process(settings, tmp_path / "worker.log") as worker:
        wait_ready(settings.metrics_port)
        sender.start()
        wait_for_metric(settings.metrics_port, "iu_events_total", 200)  # mid-replay: 200 events applied
        finetune(live, dataset, live, since_ms=since, epochs=1, progress=False)  # written in place
        new_version = read_metadata(live).model_version
        wait_for_metric(settings.metrics_port, "iu_model_swaps_total", 1, outcome="swapped")
        sender.join()
        later = producer.send_all(events[EVENTS:])
        producer.close()
        ends = {tp: max(ends.get(tp, -1), later.get(tp, -1)) for tp in ends | later}
        wait_until_applied(settings, ends, worker, timeout=240)
        wait_until_idle(settings.metrics_port)
        metrics = scrape(f"http://127.0.0.1:{settings.metrics_port}/metrics")
        assert worker.poll() is None

    assert new_version != old_version
    assert total(metrics, "iu_model_swaps_total", outcome="swapped") == 1
    assert total(metrics, "iu_model_info", model_version=new_version) == 1

    clicks = assert_clicks_applied_once(events, settings.topic_clicks, "sw")
    recs = read_recommendations(settings.topic_recs)
    by_user = defaultdict(list)
    for rec in recs:
        by_user[rec["user_id"]].append(rec)
    models = set()
    for user, seen in by_user.items():
        seen.sort(key=lambda r: r["version"])
        versions = [r["version"] for r in seen]
        assert versions == sorted(set(versions)), f"user {user}: {versions}"
        order = [r["model_version"] for r in seen]
        assert order == sorted(order, key=lambda v: v == new_version), f"user {user} went back: {order}"
        models.update(order)
        assert seen[-1]["clicks_applied"] == len(clicks[user])
    assert models == {old_version, new_version}
    print(f"swap {old_version} -> {new_version}: {len(recs)} recommendation events, "
          f"{sum(r['model_version'] == new_version for r in recs)} by the new model")
