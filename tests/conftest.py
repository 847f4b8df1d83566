"""Shared fixtures: real servers on free loopback ports, a small trained checkpoint."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BROKERS = ("tansu", "kafka")


def pytest_addoption(parser):
    parser.addoption("--broker", choices=(*BROKERS, "both"), default="both",
                     help="the broker(s) every test that talks to one runs on: tansu (embedded), "
                          "kafka (Apache Kafka 4, KRaft; needs java and mvn) or both [default: both]")


def pytest_generate_tests(metafunc):
    # Each test that needs a broker runs once per chosen broker, ids [tansu] / [kafka].
    # @pytest.mark.brokers("tansu") keeps a test to the brokers it names.
    if "broker" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--broker")
        only = metafunc.definition.get_closest_marker("brokers")
        names = [b for b in (BROKERS if chosen == "both" else (chosen,)) if only is None or b in only.args]
        metafunc.parametrize("broker", names, indirect=True, scope="session")


def _missing(what: str) -> None:
    """Skip a test whose prerequisite is missing, or fail it where CI is set (a CI run must not look green)."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI is set, so this is a failure, not a skip)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def missing_prerequisite():
    """`_missing` for test modules: ``missing_prerequisite(why)`` skips, or fails where CI is set."""
    return _missing


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        _missing(f"shared datasets not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    from streams.embedded import start_redis

    server = start_redis(tmp_path_factory.mktemp("valkey"))
    yield f"redis://127.0.0.1:{server.port}/0"
    server.stop()


@dataclass(frozen=True)
class Broker:
    name: str  # "tansu" or "kafka"
    url: str  # host:port for bootstrap servers


@pytest.fixture(scope="session")
def broker(request, tmp_path_factory) -> Broker:
    """The broker this test runs on, started once per session; see ``--broker``."""
    if request.param == "kafka":
        from streams.apache_kafka import kafka_available, start_kafka

        why = kafka_available()
        if why:
            _missing(why)
        server = start_kafka(tmp_path_factory.mktemp("kafka"))
    else:
        from streams.embedded import start_broker

        server = start_broker(tmp_path_factory.mktemp("tansu"))
    yield Broker(request.param, f"127.0.0.1:{server.port}")
    server.stop(timeout=15)


@pytest.fixture(scope="session")
def broker_url(broker: Broker) -> str:
    return broker.url


@pytest.fixture(autouse=True)
def _flush_redis_between_broker_runs(request):
    """Empty the session's Redis servers before each test that runs on a broker.

    Such a test runs once per broker with the same key prefixes and topic
    offsets, so without this the second run would find the first run's
    offset fences in Redis and take its own events for replays.
    """
    if "broker" not in request.fixturenames:
        return
    import redis
    from redis.cluster import RedisCluster

    if "redis_url" in request.fixturenames:
        with redis.Redis.from_url(request.getfixturevalue("redis_url")) as client:
            client.flushall()
    if "redis_cluster_url" in request.fixturenames:
        client = RedisCluster.from_url(request.getfixturevalue("redis_cluster_url"))
        try:
            client.flushall(target_nodes=RedisCluster.PRIMARIES)
        finally:
            client.close()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory):
    """A three-primary Redis Cluster (Valkey), the production layout for scale-out."""
    from streams.embedded import start_redis_cluster

    nodes = start_redis_cluster(tmp_path_factory.mktemp("valkey-cluster"))
    yield f"redis://127.0.0.1:{nodes[0].port}/0"
    for node in nodes:
        node.stop()


@pytest.fixture(params=["single", "cluster"])
def store(request):
    """A Store on freshly flushed Redis, a single server or a Cluster; use with ``run``."""
    import redis
    from redis.cluster import RedisCluster

    from state import Store

    cluster = request.param == "cluster"
    url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    if cluster:
        client = RedisCluster.from_url(url)
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        client = redis.Redis.from_url(url)
        client.flushdb()
    client.close()
    return Store.from_url(url, cluster=cluster)


@pytest.fixture()
def run():
    """Run a coroutine to completion on one event loop per test."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


@pytest.fixture(scope="session")
def synthetic_checkpoint(tmp_path_factory) -> Path:
    """A small encoder trained for real on the synthetic stream."""
    from encoders.data import synthetic
    from encoders.training.train import train

    out = tmp_path_factory.mktemp("ckpt") / "synthetic"
    return train(synthetic(), out, d_model=32, n_layers=1, n_heads=2, max_len=50, epochs=3, progress=False,
                 text_fusion=True)
