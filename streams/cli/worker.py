"""``interest-updater worker``: load the encoders, reach the broker and Redis, run the worker until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Iterator

from streams.errors import ConfigurationError
from streams.logs import redact_url
from streams.security import kafka_client_config
from streams.settings import Settings

__all__ = ["worker", "load_encoders", "running_stack", "topics"]

log = logging.getLogger("interest_updater")


def load_encoders(settings: Settings):
    """The sequence encoder from the checkpoint, and the text encoder unless disabled."""
    from streams.app import load_sequence_encoder

    if not settings.checkpoint:
        raise ConfigurationError("no checkpoint: pass --checkpoint DIR (IU_CHECKPOINT), made by `train`")
    import torch

    from encoders.inference import keep_freed_memory

    torch.set_num_threads(settings.torch_threads)
    keep_freed_memory()
    encoder = load_sequence_encoder(settings)
    text_encoder = None
    if settings.text_encoder:
        from encoders.nn.text import TextEncoder
        text_encoder = TextEncoder(device=settings.device, cache_size=settings.text_cache)
    return encoder, text_encoder


@contextlib.contextmanager
def running_stack(settings: Settings) -> Iterator[Settings]:
    """The settings, with an embedded broker and/or Redis started for what is unset."""
    if settings.broker and settings.redis_url:
        yield settings
        return
    from streams.embedded import embedded_stack

    with embedded_stack() as stack:
        log.info("embedded broker at %s, Redis at %s", stack.broker_url, stack.redis_url)
        yield settings.with_overrides(broker=settings.broker or stack.broker_url,
                                      redis_url=settings.redis_url or stack.redis_url)


def worker(settings: Settings) -> int:
    from streams.app import Worker
    from streams.clients.kafka import ensure_topics

    encoder, text_encoder = load_encoders(settings)
    with running_stack(settings) as settings:
        _check_redis(settings.redis_url, settings.redis_cluster)
        ensure_topics(settings.broker, topics(settings), settings.partitions, **kafka_client_config(settings))
        service = Worker(settings, encoder, text_encoder)
        if settings.metrics_port:
            try:
                service.metrics.serve(settings.metrics_port, service.health)
            except OSError as exc:  # most often: the port is taken by another worker
                raise ConfigurationError(f"--metrics-port {settings.metrics_port} (IU_METRICS_PORT): cannot serve "
                                         f"metrics there: {exc.strerror or exc}") from None
            log.info("metrics on http://127.0.0.1:%d/metrics (also /healthz, /readyz)", settings.metrics_port)
        log.info("worker %s: broker %s, redis %s, model %s", settings.app_id, settings.broker,
                 redact_url(settings.redis_url), encoder.model_version)
        status = asyncio.run(service.run())
    log.info("worker stopped (exit status %d)", status)
    return status


def _check_redis(url: str, cluster: bool) -> None:
    import redis
    from redis.cluster import RedisCluster

    client_class = RedisCluster if cluster else redis.Redis
    try:
        client = client_class.from_url(url, socket_connect_timeout=5, socket_timeout=5)  # a cluster connects here
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        raise ConfigurationError(f"cannot reach Redis at {redact_url(url)}: {exc}") from None


def topics(settings: Settings) -> list[str]:
    return [settings.topic_clicks, settings.topic_texts, settings.topic_recs, settings.topic_dead]
