"""Nothing lost, nothing applied twice: SIGKILL, restart and rebalance while events flow.

Two workers share the topics. While a replay of real data flows, worker A is
killed with SIGKILL at a chosen moment and restarted three seconds later; then
worker B is stopped with SIGTERM and worker C added. Afterwards Redis is compared
with the replay: every event applied exactly once, histories in time order, and
for every user the newest recommendation event reflects all of that user's
clicks (versions are unique per user; a consumer keeps the highest).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, defaultdict

import pytest

from encoders.data import load_movielens_small
from streams.harness import (stop_process, wait_for_metric, wait_ready, wait_until_applied, wait_until_idle,
                             wait_until_nothing_pending, worker_process)
from streams.embedded import free_port
from streams.cli.replay import replay_events
from streams.clients.kafka import Producer, ensure_topics
from streams.settings import Settings

pytestmark = pytest.mark.integration

EVENTS = 1500
RATE = 300.0  # events/s: the replay lasts about 5 s


@pytest.fixture(scope="module")
def checkpoint(data_dir, tmp_path_factory):
    from encoders.training.train import train

    dataset = load_movielens_small(data_dir / "ml-latest-small")
    return train(dataset, tmp_path_factory.mktemp("crash") / "ckpt", d_model=32, n_layers=1, n_heads=2,
                 max_len=50, epochs=1, progress=False)


# Events worker A has applied when it is killed (it owns about half of the 1,500); more points:
# IU_TEST_KILL_POINTS="50,200,400,600".
KILL_POINTS = [int(x) for x in os.environ.get("IU_TEST_KILL_POINTS", "150,500").split(",")]


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_kill_restart_and_rebalance_apply_every_event_once(kill_at, broker_url, redis_url, data_dir, checkpoint,
                                                           tmp_path, assert_clicks_applied_once, read_recommendations):
    name = f"cr{kill_at}"
    base = Settings(broker=broker_url, redis_url=redis_url, checkpoint=str(checkpoint), app_id=f"{name}-group",
                    topic_clicks=f"{name}-clicks", topic_texts=f"{name}-texts", topic_recs=f"{name}-recs",
                    topic_dead=f"{name}-dead", key_prefix=name, text_encoder=False, batch_within=0.1,
                    max_history=5000)
    events = replay_events(load_movielens_small(data_dir / "ml-latest-small"), base.topic_clicks,
                           base.topic_texts, limit=EVENTS)
    ensure_topics(broker_url, [base.topic_clicks, base.topic_texts, base.topic_recs, base.topic_dead],
                  base.partitions)
    a, b, a2, c = (base.with_overrides(metrics_port=free_port()) for _ in range(4))
    producer = Producer(broker_url)
    ends: dict = {}
    sender = threading.Thread(target=lambda: ends.update(producer.send_all(events, rate=RATE)))
    with worker_process(a, tmp_path / "a.log") as worker_a, worker_process(b, tmp_path / "b.log") as worker_b:
        wait_ready(a.metrics_port)
        wait_ready(b.metrics_port)
        sender.start()
        wait_for_metric(a.metrics_port, "iu_events_total", kill_at)
        worker_a.kill()  # SIGKILL: no shutdown code runs
        # Not a wait for a condition: the scenario is a worker that stays dead for 3 s, whatever happens
        # meanwhile (B may or may not take A's partitions first; both orders must lose nothing).
        time.sleep(3.0)
        with worker_process(a2, tmp_path / "a2.log"):
            wait_ready(a2.metrics_port)
            stop_process(worker_b)  # SIGTERM: a clean leave
            with worker_process(c, tmp_path / "c.log") as worker_c:
                wait_ready(c.metrics_port)
                sender.join()
                producer.close()
                wait_until_applied(base, ends, worker_c, timeout=240)
                wait_until_nothing_pending(base, timeout=120)  # the users A left pending were recovered
                wait_until_idle(a2.metrics_port)
                wait_until_idle(c.metrics_port)

    clicks = assert_clicks_applied_once(events, base.topic_clicks, name)

    recommendations = read_recommendations(base.topic_recs)
    versions = defaultdict(list)
    newest: dict[str, dict] = {}
    for rec in recommendations:
        versions[rec["user_id"]].append(rec["version"])
        if rec["version"] > newest.get(rec["user_id"], {"version": 0})["version"]:
            newest[rec["user_id"]] = rec
    for user, seen in versions.items():
        assert len(seen) == len(set(seen)), f"user {user} got a version twice: {seen}"
    for user in clicks:
        assert newest[user]["clicks_applied"] == len(clicks[user]), user
    repeats = Counter(len(v) for v in versions.values())
    print(f"kill after {kill_at} events: {len(recommendations)} recommendation events for {len(versions)} users; "
          f"events per user {dict(sorted(repeats.items())[:5])}...")
