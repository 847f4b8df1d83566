"""Redis AUTH and TLS against live servers that require them.

Three deployments: the embedded Valkey with a password; the system's
redis-server (Valkey's bundled build has no TLS) serving TLS only, no plain
port, with a certificate signed by a throw-away CA, and a password too; and a
Redis Cluster of three such servers, TLS on the cluster bus as well. The store is driven
with the calls the worker makes; the worker command is run as an operator runs
it, to check that a refused password or an untrusted certificate ends it with
one line that names --redis and not the password.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from state import Entry, Store, StoredClick
from state.layout import event_hash

pytestmark = pytest.mark.integration

PASSWORD = secrets.token_hex(12)
WRONG_PASSWORD = secrets.token_hex(12)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def valkey_port(tmp_path_factory) -> int:
    """The port of a Valkey that wants PASSWORD."""
    from streams.embedded import start_redis

    server = start_redis(tmp_path_factory.mktemp("valkey-auth"), password=PASSWORD)
    yield server.port
    server.stop()


def _tls_folder(tmp_path_factory, missing_prerequisite, name: str):
    """A new folder for a TLS Redis and the throw-away CA and server certificate in it (or the test is not run)."""
    from streams.embedded import make_certificates, redis_tls_available

    why = redis_tls_available()
    if why:
        missing_prerequisite(why)
    folder = tmp_path_factory.mktemp(name)
    return folder, make_certificates(folder / "certs")


@pytest.fixture(scope="module")
def tls_port_and_ca(tmp_path_factory, missing_prerequisite) -> tuple[int, Path]:
    """The TLS port of a redis-server that wants PASSWORD, and the CA that signed its certificate."""
    from streams.embedded import start_redis_tls

    folder, tls = _tls_folder(tmp_path_factory, missing_prerequisite, "redis-tls")
    server = start_redis_tls(folder, tls, password=PASSWORD)
    yield server.port, tls.ca
    server.stop()


@pytest.fixture(scope="module")
def tls_cluster_url(tmp_path_factory, missing_prerequisite) -> str:
    """A ``rediss://`` URL of one node of a three-node TLS Redis Cluster that wants PASSWORD."""
    from streams.embedded import start_redis_cluster_tls

    folder, tls = _tls_folder(tmp_path_factory, missing_prerequisite, "redis-tls-cluster")
    nodes = start_redis_cluster_tls(folder, tls, password=PASSWORD)
    yield f"rediss://:{PASSWORD}@127.0.0.1:{nodes[0].port}/0?ssl_ca_certs={tls.ca}"
    for node in nodes:
        node.stop()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    # The worker loads its model before it checks Redis.
    from encoders.data import synthetic
    from encoders.training.train import train

    return train(synthetic(n_users=30), tmp_path_factory.mktemp("ckpt") / "tiny", d_model=16, n_layers=1,
                 n_heads=1, max_len=20, epochs=1, progress=False)


def assert_store_applies_and_reads(url: str, cluster: bool = False, users: int = 1) -> None:
    """Two clicks of each of new ``users``, applied through a Store on ``url`` as the worker does, come back in
    their histories (on a cluster, users whose keys live on different nodes)."""
    batch = [f"u-{uuid.uuid4().hex[:8]}" for _ in range(users)]
    clicks = [Entry(user, "clicks", 0, offset, StoredClick(f"{user}-{offset}", f"item{offset}", 2, 1000 + offset))
              for user in batch for offset in range(2)]

    async def apply_and_read():
        store = Store.from_url(url, cluster=cluster)
        try:
            outcomes = (await store.apply(clicks)).outcomes
            return outcomes, [(await store.history(user)).clicks.events.tolist() for user in batch]
        finally:
            await store.close()

    outcomes, stored = asyncio.run(apply_and_read())
    assert outcomes == ["applied"] * 2 * users
    assert stored == [[event_hash(f"{user}-{offset}") for offset in range(2)] for user in batch]


def test_store_through_a_password(valkey_port):
    assert_store_applies_and_reads(f"redis://:{PASSWORD}@127.0.0.1:{valkey_port}/0")


def test_store_through_tls_with_a_private_ca_and_a_password(tls_port_and_ca):
    port, ca = tls_port_and_ca
    assert_store_applies_and_reads(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}")


def test_store_through_tls_on_a_redis_cluster(tls_cluster_url):
    from redis.cluster import RedisCluster

    client = RedisCluster.from_url(tls_cluster_url)
    try:  # 12 users below: on more than one node, but for a chance of 1e-5
        assert len(client.get_primaries()) == 3 and client.cluster_info()["cluster_state"] == "ok"
    finally:
        client.close()
    assert_store_applies_and_reads(tls_cluster_url, cluster=True, users=12)


def test_worker_check_and_the_read_api_reader_pass_over_tls_on_a_redis_cluster(tls_cluster_url):
    from state.reader import Reader
    from streams.cli.worker import _check_redis

    _check_redis(tls_cluster_url, cluster=True)
    reader = Reader.from_url(tls_cluster_url, cluster=True)
    try:
        assert reader.profile("nobody") is None
    finally:
        reader.close()


def test_worker_check_passes_over_tls(tls_port_and_ca):
    # The worker's early check uses redis-py's sync client, which reads the URL on its own.
    from streams.cli.worker import _check_redis

    port, ca = tls_port_and_ca
    _check_redis(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}", cluster=False)


def worker(url: str, checkpoint: Path) -> subprocess.CompletedProcess:
    # No broker listens at 127.0.0.1:1; the worker checks Redis before it needs one.
    return subprocess.run([sys.executable, "-m", "streams", "worker", "--checkpoint", str(checkpoint),
                           "--text-encoder", "false", "--metrics-port", "0", "--broker", "127.0.0.1:1",
                           "--redis", url], capture_output=True, text=True, cwd=ROOT, timeout=180)


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert line.startswith("interest-updater: error:") and "--redis" in line, line
    assert all(text in line for text in expected), line
    assert PASSWORD not in line and WRONG_PASSWORD not in line, line


def test_wrong_password_is_one_line(valkey_port, tiny_checkpoint):
    result = worker(f"redis://:{WRONG_PASSWORD}@127.0.0.1:{valkey_port}/0", tiny_checkpoint)
    assert_one_line_error(result, f"127.0.0.1:{valkey_port} refused the password")


def test_missing_password_is_named(valkey_port):
    # The same path as a wrong password (the test above), with its own message; no worker needed.
    from streams.cli.worker import _check_redis
    from streams.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=f"127.0.0.1:{valkey_port} wants a password: give it in --redis"):
        _check_redis(f"redis://127.0.0.1:{valkey_port}/0", cluster=False)


def test_certificate_of_another_ca_is_one_line(tls_port_and_ca, tiny_checkpoint, tmp_path):
    from streams.embedded import make_certificates

    port, _ = tls_port_and_ca
    stranger = make_certificates(tmp_path / "stranger").ca
    result = worker(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={stranger}", tiny_checkpoint)
    assert_one_line_error(result, f"TLS certificate of Redis at 127.0.0.1:{port} is not trusted",
                          f"ssl_ca_certs={stranger}")
