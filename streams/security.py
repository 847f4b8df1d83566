"""Kafka connection security from the settings, for both clients the service uses.

The worker (aiokafka) and the replay, admin and tail tools (kafka-python) take
keyword arguments of slightly different names and shapes. Both are built here
from the same settings so that they cannot disagree.

``check_kafka`` tries those settings once before a command starts its clients:
both clients retry a refused password or an untrusted certificate like a
network fault, for half a minute, and then report only that they could not
bootstrap.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from streams.errors import ConfigurationError
from streams.settings import Settings

__all__ = ["kafka_client_config", "aiokafka_config", "check_kafka"]


def kafka_client_config(settings: Settings) -> dict[str, Any]:
    """kafka-python keyword arguments (KafkaProducer, KafkaConsumer, KafkaAdminClient)."""
    config: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol.startswith("SASL"):
        config.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=settings.kafka_username,
                      sasl_plain_password=settings.kafka_password)
    if settings.kafka_security_protocol.endswith("SSL") and settings.kafka_ca_file:
        config["ssl_cafile"] = settings.kafka_ca_file
    return config


def aiokafka_config(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments (AIOKafkaConsumer, AIOKafkaProducer): the worker's clients."""
    protocol = settings.kafka_security_protocol
    config: dict[str, Any] = {"security_protocol": protocol}
    if protocol.endswith("SSL"):
        config["ssl_context"] = _ssl_context(settings)
    if protocol.startswith("SASL"):
        config.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=settings.kafka_username,
                      sasl_plain_password=settings.kafka_password)
    return config


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=settings.kafka_ca_file)
    except (OSError, ssl.SSLError) as exc:  # a missing file, or one without a PEM certificate
        raise ConfigurationError(f"--kafka-ca-file {settings.kafka_ca_file} (IU_KAFKA_CA_FILE): cannot load it as "
                                 f"a PEM CA certificate: {exc.strerror or exc}") from None


def check_kafka(settings: Settings, timeout: float = 10.0) -> None:
    """Connect and authenticate to one of ``--broker``'s servers with the security settings.

    Raises ConfigurationError naming the setting at fault. Without TLS or SASL
    there is nothing to check that the clients would not name themselves.
    """
    if settings.kafka_security_protocol == "PLAINTEXT" or not settings.broker:
        return
    unreachable = []
    for host, port in _servers(settings.broker):
        try:
            asyncio.run(_connect_once(host, port, settings, timeout))
            return
        except ssl.SSLCertVerificationError as exc:  # an OSError too, but no other server would be trusted either
            raise ConfigurationError(_untrusted(settings, host, port, exc)) from None
        except (OSError, TimeoutError) as exc:
            unreachable.append(f"{host}:{port} ({exc.strerror or str(exc) or type(exc).__name__})")
    raise ConfigurationError(f"cannot reach any broker of --broker {settings.broker}: {', '.join(unreachable)}")


async def _connect_once(host: str, port: int, settings: Settings, timeout: float) -> None:
    from aiokafka.conn import create_conn
    from aiokafka.errors import (IllegalSaslStateError, KafkaConnectionError, SaslAuthenticationFailed,
                                 UnsupportedSaslMechanismError)
    from aiokafka.protocol.metadata import MetadataRequest

    try:
        connection = await asyncio.wait_for(create_conn(host, port, **aiokafka_config(settings)), timeout)
        try:
            # A listener that wants SASL hangs up only on the first request of a client that skipped it.
            await asyncio.wait_for(connection.send(MetadataRequest([])), timeout)
        finally:
            connection.close()
    except SaslAuthenticationFailed as exc:
        raise ConfigurationError(
            f"the broker at {host}:{port} refused --kafka-username {settings.kafka_username} with this password "
            f"(--kafka-password, IU_KAFKA_PASSWORD): {exc}") from None
    except UnsupportedSaslMechanismError:
        raise ConfigurationError(f"the broker at {host}:{port} does not accept --kafka-sasl-mechanism "
                                 f"{settings.kafka_sasl_mechanism}") from None
    except (KafkaConnectionError, IllegalSaslStateError) as exc:
        raise ConfigurationError(f"the broker at {host}:{port} hung up or refused the handshake ({exc}): does this "
                                 f"listener expect another --kafka-security-protocol than "
                                 f"{settings.kafka_security_protocol}?") from None


def _untrusted(settings: Settings, host: str, port: int, exc: ssl.SSLCertVerificationError) -> str:
    trusted = (f"--kafka-ca-file {settings.kafka_ca_file} (IU_KAFKA_CA_FILE)" if settings.kafka_ca_file
               else "the system's CAs (no --kafka-ca-file)")
    return f"the TLS certificate of the broker at {host}:{port} is not trusted by {trusted}: {exc.verify_message}"


def _servers(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port[,host:port]`` as pairs; an IPv6 host may be in brackets."""
    servers = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigurationError(f"--broker {bootstrap}: expected host:port[,host:port], got {server!r}")
        servers.append((host.strip("[]"), int(port)))
    return servers
