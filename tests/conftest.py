"""Shared fixtures: real servers on free loopback ports, a small trained checkpoint."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
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


@pytest.fixture()
def store(redis_url):
    """A Store on a freshly flushed database; use with ``run``."""
    import redis

    from state import Store

    redis.Redis.from_url(redis_url).flushdb()
    return Store.from_url(redis_url)


@pytest.fixture()
def run():
    """Run a coroutine to completion on one event loop per test."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


@pytest.fixture(scope="session")
def synthetic_checkpoint(tmp_path_factory) -> Path:
    """A small encoder trained for real on the synthetic stream."""
    from encoders.datasets import synthetic
    from encoders.train import train

    out = tmp_path_factory.mktemp("ckpt") / "synthetic"
    return train(synthetic(), out, d_model=32, n_layers=1, n_heads=2, max_len=50, epochs=3, progress=False)
