"""``interest-updater worker``: load the encoders, reach the broker and Redis, run the worker until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Iterator

from streams.errors import ConfigurationError
from streams.logs import redact_url
from streams.security import check_kafka, kafka_client_config
from streams.settings import Settings

__all__ = ["worker", "read_api", "load_encoders", "running_stack", "topics"]

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
        overrides = {"broker": settings.broker or stack.broker_url, "redis_url": settings.redis_url or stack.redis_url}
        if not settings.broker and settings.idempotent_producer == "auto":
            # The embedded broker (Tansu) grants no producer ids: say so once, without the warning a
            # production broker's refusal deserves.
            log.info("embedded broker: publishing without an idempotent producer (Tansu grants no producer ids)")
            overrides["idempotent_producer"] = "off"
        if not settings.broker:
            log.info("embedded broker: for demos and tests; it keeps every message in memory and slows as its "
                     "log grows (README, Soak), so give --broker an Apache Kafka for long runs")
        yield settings.with_overrides(**overrides)


def worker(settings: Settings) -> int:
    from streams.app import Worker
    from streams.clients.kafka import ensure_topics

    check_kafka(settings)  # before the model loads: a wrong password or CA file then costs a second, not minutes
    encoder, text_encoder = load_encoders(settings)
    with running_stack(settings) as settings:
        _check_redis(settings.redis_url, settings.redis_cluster)
        ensure_topics(settings.broker, topics(settings), settings.partitions, **kafka_client_config(settings))
        service = Worker(settings, encoder, text_encoder)
        if settings.metrics_port:
            from streams.read_api import ReadApi

            read_api = ReadApi.from_settings(settings, service.metrics.registry)  # its own synchronous client
            try:
                service.metrics.serve(settings.metrics_port, service.health, read_api)
            except OSError as exc:  # most often: the port is taken by another worker
                raise ConfigurationError(f"--metrics-port {settings.metrics_port} (IU_METRICS_PORT): cannot serve "
                                         f"metrics there: {exc.strerror or exc}") from None
            log.info("metrics on http://127.0.0.1:%d/metrics (also /healthz, /readyz; read API /v1/users/USER_ID%s)",
                     settings.metrics_port, ", bearer token required" if settings.api_token else "")
        log.info("worker %s: broker %s, redis %s, model %s", settings.app_id, settings.broker,
                 redact_url(settings.redis_url), encoder.model_version)
        status = asyncio.run(service.run())
    log.info("worker stopped (exit status %d)", status)
    return status


def read_api(settings: Settings) -> int:
    """``interest-updater read-api``: the read API alone (`streams.read_server`), until SIGTERM or SIGINT."""
    if not settings.metrics_port:
        raise ConfigurationError("--metrics-port 0 (IU_METRICS_PORT): the read API needs a port to serve on")
    _check_redis(settings.redis_url, settings.redis_cluster)
    return asyncio.run(_serve_reads(settings))


async def _serve_reads(settings: Settings) -> int:
    import signal

    from prometheus_client import CollectorRegistry

    from streams.metrics import Health
    from streams.read_api import ReadApi
    from streams.read_server import ReadServer

    registry = CollectorRegistry()
    health = Health()
    api = ReadApi.from_settings(settings, registry, asynchronous=True)
    server = ReadServer(api, registry, health)
    try:
        await server.start(settings.metrics_port)
    except OSError as exc:
        raise ConfigurationError(f"--metrics-port {settings.metrics_port} (IU_METRICS_PORT): cannot serve the read "
                                 f"API there: {exc.strerror or exc}") from None
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    health.ready = True
    log.info("read API on http://127.0.0.1:%d/v1/users/USER_ID (also /metrics, /healthz, /readyz), redis %s%s",
             settings.metrics_port, redact_url(settings.redis_url),
             ", bearer token required" if settings.api_token else "")
    while not stop.is_set():
        health.beat()  # from the loop that answers: /healthz fails when it stalls
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    health.ready = False
    await server.close()
    await api.reader.close()
    log.info("read API stopped")
    return 0


def _check_redis(url: str, cluster: bool) -> None:
    import redis
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisClusterException

    client_class = RedisCluster if cluster else redis.Redis
    try:
        client = client_class.from_url(url, socket_connect_timeout=5, socket_timeout=5)  # a cluster connects here
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, RedisClusterException) as exc:
        raise ConfigurationError(_redis_failure(url, exc)) from None


def _redis_failure(url: str, exc: BaseException) -> str:
    """One line naming what in ``--redis`` is wrong; never the password.

    redis-py reports an untrusted certificate as a ConnectionError raised while
    handling the ssl error, and a cluster wraps its node's error: look down the chain.
    """
    import ssl

    import redis
    from redis.connection import parse_url

    options = parse_url(url)
    where = f"Redis at {options.get('host', 'localhost')}:{options.get('port', 6379)}"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, redis.AuthenticationError):
            if options.get("password"):
                return f"{where} refused the password in --redis (IU_REDIS): {cause}"
            return f"{where} wants a password: give it in --redis as redis://:PASSWORD@host:port/db (or IU_REDIS)"
        if isinstance(cause, ssl.SSLCertVerificationError):
            ca = options.get("ssl_ca_certs")
            trusted = f"ssl_ca_certs={ca} in --redis" if ca else "the system's CAs (no ?ssl_ca_certs=CA.pem in --redis)"
            return f"the TLS certificate of {where} is not trusted by {trusted}: {cause.verify_message}"
        cause = cause.__cause__ or cause.__context__
    return f"cannot reach Redis at {redact_url(url)}: {exc}"


def topics(settings: Settings) -> list[str]:
    return [settings.topic_clicks, settings.topic_texts, settings.topic_items, settings.topic_recs, settings.topic_dead]
