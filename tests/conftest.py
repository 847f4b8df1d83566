"""Shared fixtures: real servers on free loopback ports, a small trained checkpoint."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        if os.environ.get("CI"):  # a CI run without the data must not look green
            pytest.fail(f"shared datasets not found at {DATA} (CI is set, so this is a failure, not a skip)")
        pytest.skip(f"shared datasets not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    from streams.embedded import start_redis

    server = start_redis(tmp_path_factory.mktemp("valkey"))
    yield f"redis://127.0.0.1:{server.port}/0"
    server.stop()


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory):
    from streams.embedded import start_broker

    server = start_broker(tmp_path_factory.mktemp("tansu"))
    yield f"127.0.0.1:{server.port}"
    server.stop()


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
