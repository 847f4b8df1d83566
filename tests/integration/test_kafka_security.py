"""SASL_SSL with SCRAM-SHA-512 against a real Apache Kafka 4.4 that requires it.

The broker (``start_kafka(..., secure=True)``) keeps PLAINTEXT for itself and
serves these tests on a SASL_SSL listener whose certificate a throw-away CA
signed; it knows one SCRAM user. Every test here talks to that listener only:
the worker's clients (aiokafka), the tools' clients (kafka-python), and the
``produce``, ``worker`` and ``tail`` commands as an operator runs them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from streams.settings import Settings

pytestmark = pytest.mark.integration

CLI = Path(sys.executable).with_name("interest-updater")
DEADLINE = 60.0  # seconds any one wait here may take before the test fails


def fresh(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory, missing_prerequisite):
    """The broker's SASL_SSL listener (``streams.apache_kafka.SecureListener``)."""
    from streams.apache_kafka import kafka_available, start_kafka

    why = kafka_available()
    if why:
        missing_prerequisite(why)
    server = start_kafka(tmp_path_factory.mktemp("kafka-secure"), secure=True)
    yield server.secure
    server.stop(timeout=15)


@pytest.fixture(scope="module")
def settings(secure_kafka) -> Settings:
    return Settings(broker=f"127.0.0.1:{secure_kafka.port}", kafka_security_protocol="SASL_SSL",
                    kafka_sasl_mechanism=secure_kafka.mechanism, kafka_username=secure_kafka.username,
                    kafka_password=secure_kafka.password, kafka_ca_file=str(secure_kafka.ca_file))


@pytest.fixture(scope="module")
def stranger_ca(tmp_path_factory) -> Path:
    """A CA certificate that did not sign the broker's."""
    folder = tmp_path_factory.mktemp("stranger-ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=a stranger"],
                   cwd=folder, check=True, capture_output=True)
    return folder / "ca.pem"


def cli(*args: str, settings: Settings, timeout: float = DEADLINE) -> subprocess.CompletedProcess:
    """``interest-updater ARGS`` with the security settings as an operator passes them."""
    return subprocess.run([str(CLI), *args, *security_flags(settings)], capture_output=True, text=True,
                          env=password_env(settings), timeout=timeout)


def security_flags(settings: Settings) -> list[str]:
    return ["--broker", settings.broker, "--kafka-security-protocol", settings.kafka_security_protocol,
            "--kafka-sasl-mechanism", settings.kafka_sasl_mechanism, "--kafka-username", settings.kafka_username,
            "--kafka-ca-file", settings.kafka_ca_file]


def password_env(settings: Settings) -> dict[str, str]:
    """The password goes in the environment, as --help advises, not on the command line."""
    return {**os.environ, "IU_KAFKA_PASSWORD": settings.kafka_password}


def test_worker_clients_produce_and_consume_through_sasl_ssl(settings):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streams.clients.kafka import ensure_topics
    from streams.security import aiokafka_config, kafka_client_config

    topic = fresh("secure-aiokafka")
    ensure_topics(settings.broker, [topic], 1, **kafka_client_config(settings))

    async def round_trip():
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker, **aiokafka_config(settings))
        # In a group, as the worker's consumer is: the group coordinator is reached through SASL_SSL too.
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.broker, group_id=fresh("secure-group"),
                                    auto_offset_reset="earliest", **aiokafka_config(settings))
        await producer.start()
        await consumer.start()
        try:
            await producer.send_and_wait(topic, key=b"u1", value=b"hello")
            return await asyncio.wait_for(consumer.getone(), DEADLINE)
        finally:
            await consumer.stop()
            await producer.stop()

    message = asyncio.run(round_trip())
    assert (message.key, message.value) == (b"u1", b"hello")


def test_tool_clients_produce_and_consume_through_sasl_ssl(settings):
    from streams.clients.kafka import OutgoingEvent, Producer, ensure_topics, recommendation_consumer
    from streams.security import kafka_client_config

    topic = fresh("secure-kafka-python")
    ensure_topics(settings.broker, [topic], 1, **kafka_client_config(settings))
    producer = Producer(settings.broker, **kafka_client_config(settings))
    producer.send_all([OutgoingEvent(topic, "u1", b"hello")])
    producer.close()
    consumer = recommendation_consumer(settings.broker, topic, from_beginning=True, **kafka_client_config(settings))
    deadline = time.monotonic() + DEADLINE
    try:
        found = []
        while not found and time.monotonic() < deadline:
            found = list(consumer)  # gives up after consumer_timeout_ms, so the deadline is checked
    finally:
        consumer.close()
    assert [(m.key, m.value) for m in found] == [(b"u1", b"hello")]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A model the worker can load; what it recommends does not matter here."""
    from encoders.data import synthetic
    from encoders.training.train import train

    return train(synthetic(n_users=30), tmp_path_factory.mktemp("ckpt") / "tiny", d_model=16, n_layers=1, n_heads=1,
                 max_len=20, epochs=1, progress=False)


def test_produce_worker_and_tail_commands_through_sasl_ssl(settings, redis_url, tiny_checkpoint, tmp_path):
    topics = ["--app-id", fresh("secure-worker"), "--topic-clicks", fresh("clicks"), "--topic-texts", fresh("texts"),
              "--topic-recs", fresh("recs"), "--topic-dead", fresh("dead")]
    produced = cli("produce", "--data", "synthetic", "--limit", "100", *topics, settings=settings)
    assert produced.returncode == 0, produced.stderr
    assert "sent 100 events" in produced.stdout

    worker_log = tmp_path / "worker.log"
    with open(worker_log, "wb") as log:
        worker = subprocess.Popen(
            [str(CLI), "worker", "--checkpoint", str(tiny_checkpoint), "--text-encoder", "false", "--metrics-port",
             "0", "--redis", redis_url, *topics, *security_flags(settings)],
            stdout=log, stderr=subprocess.STDOUT, env=password_env(settings))
    try:
        # tail waits for the worker's first recommendation; its timeout is the deadline.
        tailed = cli("tail", "--from-beginning", "--max", "1", *topics, settings=settings, timeout=2 * DEADLINE)
    finally:
        worker.terminate()
        worker.wait(DEADLINE)
    assert tailed.returncode == 0, f"{tailed.stderr}\nworker:\n{worker_log.read_text()[-3000:]}"
    assert tailed.stdout.startswith("user"), tailed.stdout
    assert worker.returncode == 0, worker_log.read_text()[-3000:]


COMMANDS = {
    "produce": ["produce", "--data", "synthetic", "--limit", "1"],
    "tail": ["tail", "--max", "1"],
    # The worker checks the broker before it loads a model, so none is needed to see the check fail.
    "worker": ["worker", "--checkpoint", "/nonexistent", "--redis", "redis://127.0.0.1:1/0", "--metrics-port", "0"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_wrong_password_is_one_line_naming_it(command, settings):
    result = cli(*COMMANDS[command], settings=settings.with_overrides(kafka_password="not-the-password"))
    line = one_error_line(result)
    assert f"refused --kafka-username {settings.kafka_username}" in line and "IU_KAFKA_PASSWORD" in line, line


@pytest.mark.parametrize("command", COMMANDS)
def test_an_untrusted_certificate_is_one_line_naming_the_ca_file(command, settings, stranger_ca):
    result = cli(*COMMANDS[command], settings=settings.with_overrides(kafka_ca_file=str(stranger_ca)))
    line = one_error_line(result)
    assert f"not trusted by --kafka-ca-file {stranger_ca}" in line, line


MISTAKES = {
    "mechanism": ({"kafka_sasl_mechanism": "SCRAM-SHA-256"}, "does not accept --kafka-sasl-mechanism SCRAM-SHA-256"),
    "protocol": ({"kafka_security_protocol": "SSL"}, "another --kafka-security-protocol than SSL?"),
    "ca-file": ({"kafka_ca_file": "/nonexistent/ca.pem"}, "--kafka-ca-file /nonexistent/ca.pem (IU_KAFKA_CA_FILE): "
                                                         "cannot load it"),
    "broker": ({"broker": "127.0.0.1:1"}, "cannot reach any broker of --broker 127.0.0.1:1"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_other_mistakes_are_one_line_naming_the_setting(mistake, settings):
    overrides, named = MISTAKES[mistake]
    line = one_error_line(cli(*COMMANDS["tail"], settings=settings.with_overrides(**overrides)))
    assert named in line, line


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The command's only line on stderr, after checking it is an error line and the exit status is 2."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr  # one line: no traceback, no client log
    assert lines[0].startswith("interest-updater: error: "), lines[0]
    return lines[0]
