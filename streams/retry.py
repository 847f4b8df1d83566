"""Which failures of a micro-batch are worth retrying as they are.

A lost connection or a timeout, to Redis or to the broker, passes: the batch
is retried whole with backoff (the fences make that safe), however long the
outage. Anything else (a bug, an event the encoder cannot take, a script
error) fails the same way on every try, so the pipeline splits the batch
until the record or user at fault is alone, dead-letters it with reason
``processing_error`` and goes on (`streams.pipeline.Pipeline.ingest_isolating`).
"""

from __future__ import annotations

from aiokafka.errors import KafkaError, KafkaTimeoutError
from redis import exceptions as redis_errors

__all__ = ["is_transient"]

_TRANSIENT = (
    ConnectionError, TimeoutError,  # the built-ins; asyncio.TimeoutError is TimeoutError
    redis_errors.ConnectionError,  # also BusyLoadingError: a restarted Redis loading its data
    redis_errors.TimeoutError,
    redis_errors.TryAgainError, redis_errors.ClusterDownError, redis_errors.ReadOnlyError,  # failovers
    KafkaTimeoutError,  # a send not acknowledged in time
)


def is_transient(exc: BaseException) -> bool:
    """True for connection losses and timeouts; aiokafka marks its own retriable errors."""
    return isinstance(exc, _TRANSIENT) or (isinstance(exc, KafkaError) and bool(exc.retriable))
