"""Apache Kafka 4 (KRaft, one node) as a child process on free loopback ports.

The production broker, for the integration suite (``pytest --broker kafka``)
and for trials.  No jars ship with the project: Maven resolves
``org.apache.kafka:kafka_2.13`` and a log4j binding from Maven Central into
its own repository (``~/.m2``), and the resulting classpath is cached under
``$IU_KAFKA_CACHE`` (default ``~/.cache/interest-updater/kafka-<version>``),
so only the first start on a machine downloads anything (~60 MB, ~15 s).
Needs ``java`` (17 or newer) and ``mvn`` on PATH; ``.ci/run`` installs them
with apt-get where they are absent.

Each start formats a fresh storage folder under ``log_dir`` and runs broker
and controller in one JVM (``process.roles=broker,controller``), with the
child set to die with its parent (`streams.embedded.die_with_parent`).

``start_kafka(..., secure=True)`` adds a SASL_SSL listener (SCRAM-SHA-512 over
TLS) beside the PLAINTEXT one, which stays the inter-broker listener: openssl
makes a throw-away CA and a certificate for 127.0.0.1/localhost in ``log_dir``,
and the SCRAM user is written into the storage when it is formatted, so the
secured listener is usable as soon as the broker serves metadata.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from streams.embedded import (EmbeddedStackError, ManagedProcess, die_with_parent, free_port, make_certificates,
                              run_openssl)

__all__ = ["KAFKA_VERSION", "KafkaServer", "SecureListener", "kafka_available", "kafka_classpath", "start_kafka"]

KAFKA_VERSION = "4.4.0"
_LOG4J_VERSION = "2.24.3"  # the binding for Kafka's slf4j 1.7 API, so the broker's log says why it failed
_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>interest-updater</groupId>
  <artifactId>apache-kafka-broker</artifactId>
  <version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""
_LOG4J2 = """rootLogger.level=INFO
rootLogger.appenderRef.out.ref=OUT
appender.out.type=Console
appender.out.name=OUT
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
"""


def kafka_available() -> str | None:
    """None when Apache Kafka can start here, else why not (a missing ``java`` or ``mvn``)."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        return f"Apache Kafka needs {' and '.join(missing)} on PATH (apt-get install openjdk-17-jre-headless maven)"
    return None


def _cache_dir(version: str) -> Path:
    root = os.environ.get("IU_KAFKA_CACHE") or Path.home() / ".cache" / "interest-updater"
    return Path(root) / f"kafka-{version}"


def kafka_classpath(version: str = KAFKA_VERSION, timeout: float = 600.0) -> str:
    """The broker's Java classpath, resolved by Maven on first use and cached."""
    cache = _cache_dir(version)
    classpath_file = cache / "classpath.txt"
    if classpath_file.exists():
        classpath = classpath_file.read_text().strip()
        if classpath and all(Path(jar).exists() for jar in classpath.split(os.pathsep)):
            return classpath
    why = kafka_available()
    if why:
        raise EmbeddedStackError(why)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "pom.xml").write_text(_POM.format(kafka=version, log4j=_LOG4J_VERSION))
    partial = cache / "classpath.partial"
    result = subprocess.run(["mvn", "-q", "-B", "dependency:build-classpath", f"-Dmdep.outputFile={partial}"],
                            cwd=cache, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        tail = " ".join((result.stdout + result.stderr).split()[-40:])
        raise EmbeddedStackError(f"mvn could not resolve org.apache.kafka:kafka_2.13:{version}: {tail}")
    partial.replace(classpath_file)  # only a complete classpath is ever cached
    return classpath_file.read_text().strip()


@dataclass(frozen=True)
class SecureListener:
    """The broker's SASL_SSL listener: where it is, the CA a client must trust, the SCRAM user it knows."""

    port: int
    ca_file: Path  # PEM; it signed the broker's certificate (SAN IP:127.0.0.1, DNS:localhost)
    username: str = "alice"
    password: str = field(default="alice-secret", repr=False)
    mechanism: str = "SCRAM-SHA-512"


@dataclass
class KafkaServer(ManagedProcess):
    """The broker process; ``port`` is its PLAINTEXT listener, ``secure`` its SASL_SSL one when asked for."""

    secure: SecureListener | None = None


def _server_properties(data_dir: Path, port: int, controller_port: int, secure_port: int | None) -> str:
    listeners, protocols = f"PLAINTEXT://127.0.0.1:{port}", "PLAINTEXT:PLAINTEXT"
    if secure_port:
        listeners += f",SASL_SSL://127.0.0.1:{secure_port}"
        protocols += ",SASL_SSL:SASL_SSL"
    return f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners={listeners},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners={listeners}
controller.listener.names=CONTROLLER
listener.security.protocol.map={protocols},CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data_dir}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""


_SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


def _sasl_ssl_properties(listener: SecureListener, keystore: Path, keystore_password: str) -> str:
    return f"""sasl.enabled.mechanisms={listener.mechanism}
# The broker only checks clients' passwords here (it talks to itself over PLAINTEXT),
# but Kafka wants a login module for every SASL listener and mechanism all the same.
listener.name.sasl_ssl.{listener.mechanism.lower()}.sasl.jaas.config={_SCRAM_LOGIN}
ssl.keystore.type=PKCS12
ssl.keystore.location={keystore}
ssl.keystore.password={keystore_password}
ssl.client.auth=none
"""


def start_kafka(log_dir: Path, port: int | None = None, timeout: float = 60.0, secure: bool = False) -> KafkaServer:
    """Format storage in ``log_dir``, start the broker and wait until it serves metadata.

    ``secure``: also listen for SASL_SSL with SCRAM-SHA-512 (see ``KafkaServer.secure``).
    """
    classpath = kafka_classpath()
    port = port or free_port()
    controller_port = free_port()
    data_dir = log_dir / "kafka-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    listener = SecureListener(free_port(), log_dir / "tls" / "ca.pem") if secure else None
    properties = _server_properties(data_dir, port, controller_port, listener and listener.port)
    if listener:
        properties += _sasl_ssl_properties(listener, *_make_certificates(listener.ca_file.parent))
    config = log_dir / "server.properties"
    config.write_text(properties)
    (log_dir / "log4j2.properties").write_text(_LOG4J2)
    java = ["java", "-Xms256m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={log_dir / 'log4j2.properties'}", "-cp", classpath]
    _format_storage(java, config, listener, timeout)
    log_path = log_dir / "kafka.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen([*java, "kafka.Kafka", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    child = KafkaServer("kafka", port, process, log_path, secure=listener)
    try:
        _wait_for_broker(child, child.port, timeout)
        if listener:  # and until a client passes its TLS and SCRAM checks, or the broker's log says why not
            _wait_for_broker(child, listener.port, timeout, **_client_config(listener))
    except BaseException:
        child.stop(timeout=10)
        raise
    return child


def _format_storage(java: list[str], config: Path, listener: SecureListener | None, timeout: float) -> None:
    # SCRAM users live in the cluster metadata: written at format time, they are there from the first start.
    scram_user = ["--add-scram", f"{listener.mechanism}=[name={listener.username},password={listener.password}]"
                  ] if listener else []
    formatted = subprocess.run([*java, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config),
                                *scram_user], capture_output=True, text=True, timeout=timeout)
    if formatted.returncode != 0:
        raise EmbeddedStackError(f"kafka-storage format failed: {formatted.stdout[-300:]} {formatted.stderr[-300:]}")


def _cluster_id() -> str:
    """A random cluster id, as ``kafka-storage random-uuid`` makes them."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):  # the storage tool would read it as an option (Kafka skips these too)
            return cluster_id


def _make_certificates(directory: Path) -> tuple[Path, str]:
    """A CA (``ca.pem``) and the broker's key and certificate signed by it, as a PKCS12 keystore.

    Returns the keystore and its password. Every start makes new ones: nothing
    secret outlives the test run, and no certificate can expire between runs.
    """
    tls = make_certificates(directory)
    password = secrets.token_hex(16)
    run_openssl(directory, "pkcs12", "-export", "-in", str(tls.cert), "-inkey", str(tls.key),
                "-certfile", str(tls.ca), "-name", "kafka", "-out", "server.p12", "-passout", f"pass:{password}")
    return directory / "server.p12", password


def _client_config(listener: SecureListener) -> dict[str, str]:
    """kafka-python settings that pass the secure listener's checks."""
    return {"security_protocol": "SASL_SSL", "sasl_mechanism": listener.mechanism,
            "sasl_plain_username": listener.username, "sasl_plain_password": listener.password,
            "ssl_cafile": str(listener.ca_file)}


def _wait_for_broker(child: ManagedProcess, port: int, timeout: float, **config: str) -> None:
    """Until the broker answers a metadata request naming itself on ``port`` (listening alone is too early)."""
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise EmbeddedStackError(f"kafka exited with code {child.process.returncode}: {child.log_tail(5)}")
        with contextlib.suppress(Exception):
            admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=2000, **config)
            try:
                if admin.describe_cluster().get("brokers"):
                    return
            finally:
                admin.close()
        time.sleep(0.2)
    raise EmbeddedStackError(f"kafka did not serve metadata on 127.0.0.1:{port} within {timeout:.0f}s: "
                             f"{child.log_tail(5)}")
