"""Kafka connection security from the settings, for both clients the service uses.

The worker (aiokafka) and the replay, admin and tail tools (kafka-python) take
keyword arguments of slightly different names and shapes. Both are built here
from the same settings so that they cannot disagree.
"""

from __future__ import annotations

import ssl
from typing import Any

from streams.settings import Settings

__all__ = ["kafka_client_config", "aiokafka_config"]


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
    return ssl.create_default_context(cafile=settings.kafka_ca_file)
