"""Prometheus metrics of a worker, on their own registry (one per worker or test)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "Health", "serve_http", "ops_answer", "ops_hint", "TEXT_PLAIN"]

_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 300)
_DRIFT_BUCKETS = (0.0001, 0.001, 0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2)
TEXT_PLAIN = "text/plain; charset=utf-8"
# The read API (`streams.read_api.ReadApi`): (path, Authorization header) -> (status, JSON body, extra headers).
ReadHandler = Callable[[str, str | None], tuple[int, bytes, Iterable[tuple[str, str]]]]


class Metrics:
    """Every metric an operator needs; names start with ``iu_``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("iu_events", "Events consumed, by topic and outcome "
                              "(applied, duplicate, replay, late, dead_letter; item upserts: applied, stale, "
                              "dead_letter).", ["topic", "outcome"], registry=r)
        self.dead_letters = Counter("iu_dead_letters", "Events sent to the dead-letter topic, by reason.",
                                    ["topic", "reason"], registry=r)
        self.unknown_items = Counter("iu_unknown_items", "Applied click events whose item the model does not know.",
                                     registry=r)
        self.context_keys_ignored = Counter("iu_context_keys_ignored", "Keys of applied clicks' context objects "
                                            "that are not documented (device, region, lat, lon, tz_offset_min) "
                                            "and were dropped.", registry=r)
        self.batch_size = Histogram("iu_batch_size", "Events per micro-batch.", buckets=_SIZE_BUCKETS, registry=r)
        self.in_flight = Gauge("iu_batches_in_flight", "Micro-batches taken and not yet published (0: idle; "
                               "up to 2 while one is applied and the one before it refreshed).", registry=r)
        self.batch_seconds = Histogram("iu_batch_seconds", "Wall time to process one micro-batch.",
                                       buckets=_FAST_BUCKETS, registry=r)
        self.encoder_batch_size = Histogram("iu_encoder_batch_size", "Inputs per encoder call, by encoder.",
                                            ["encoder"], buckets=_SIZE_BUCKETS, registry=r)
        self.encoder_seconds = Histogram("iu_encoder_seconds", "Wall time of one encoder call, by encoder.",
                                         ["encoder"], buckets=_FAST_BUCKETS, registry=r)
        self.text_cache = Counter("iu_text_cache", "Texts looked up in the embedding cache, by outcome (hit: not "
                                  "embedded again, miss: embedded by all-MiniLM-L6-v2).", ["outcome"], registry=r)
        self.redis_seconds = Histogram("iu_redis_seconds", "Redis round-trip time, by operation.",
                                       ["op"], buckets=_FAST_BUCKETS, registry=r)
        self.users_refreshed = Counter("iu_users_refreshed", "Users whose interests were refreshed.", registry=r)
        self.recommendations = Counter("iu_recommendations_published",
                                       "Recommendation events published.", registry=r)
        self.freshness = Histogram("iu_freshness_seconds", "Time from an event entering Kafka to the "
                                   "recommendation it caused being published.", buckets=_FRESHNESS_BUCKETS,
                                   registry=r)
        self.lag = Gauge("iu_consumer_lag", "Messages behind the end of each assigned partition.",
                         ["topic", "partition"], registry=r)
        self.idempotent = Gauge("iu_producer_idempotent", "1 when recommendations and dead letters go out "
                                "through an idempotent producer (see --idempotent-producer), else 0.", registry=r)
        self.model = Gauge("iu_model_info", "The sequence-encoder checkpoint in use (value 1).",
                           ["model_version"], registry=r)
        self.model_swaps = Counter("iu_model_swaps", "Checkpoint switches while running, by outcome "
                                   "(swapped, or failed: the old model stays).", ["outcome"], registry=r)
        for outcome in ("swapped", "failed"):
            self.model_swaps.labels(outcome)  # exported as 0 from the start, so alerts and panels see them
        self.drift = Histogram("iu_interest_drift", "Cosine distance between a user's new and previous "
                               "long-term interest, per refresh.", buckets=_DRIFT_BUCKETS, registry=r)
        self.online_clicks = Counter("iu_online_clicks", "Applied clicks of users who had a recommendation "
                                     "list: the denominator of online HR@K and NDCG@K.", registry=r)
        self.online_hits = Counter("iu_online_hits", "Clicks on an item in the user's last published top K.",
                                   registry=r)
        self.online_gain = Counter("iu_online_ndcg_gain", "Sum of 1/log2(rank+1) over those hits; divided by "
                                   "iu_online_clicks_total it is online NDCG@K.", registry=r)
        self.errors = Counter("iu_errors", "Failures of a batch stage, by exception type.", ["kind"], registry=r)
        self.retries = Counter("iu_retries", "Batch stages retried after a lost connection or a timeout "
                               "(Redis or the broker), by stage.", ["stage"], registry=r)
        self.isolated = Counter("iu_isolated_events", "Events dead-lettered as processing_error because their "
                                "batch failed for another reason and was split down to them, by stage (ingest: "
                                "the event; refresh: the user's events of the batch).", ["stage"], registry=r)
        self.unrecovered = Counter("iu_unrecovered_users", "Users left pending by a stopped worker whose refresh "
                                   "failed alone (not a lost connection): given up until their next event.",
                                   registry=r)
        self.catalogue_items = Gauge("iu_catalogue_items", "Items of the live catalogue (those the items topic "
                                     "has announced), as this worker last synced it, by state: available, "
                                     "unavailable (never recommended), from_text (available, not in the model, "
                                     "scored from its title and categories), unscored (available, not in the "
                                     "model, no text or no text projection: recommended after the next "
                                     "training).", ["state"], registry=r)
        self.catalogue_syncs = Counter("iu_catalogue_changes_synced", "Item upserts this worker read from Redis's "
                                       "change stream (its own and other workers'), by kind (change; whole: "
                                       "items of a full reload).", ["kind"], registry=r)

    def serve(self, port: int, health: "Health | None" = None, read: ReadHandler | None = None) -> None:
        """Serve ``/metrics``, ``/healthz``, ``/readyz`` and, given ``read``, ``/v1/...`` in a daemon thread."""
        serve_http(port, self.registry, health or Health(), read)


class Health:
    """Liveness (the event loop beats) and readiness (partitions assigned, not stopping)."""

    STALE_SECONDS = 30.0

    def __init__(self) -> None:
        self.ready = False
        self.last_beat = time.monotonic()

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    @property
    def alive(self) -> bool:
        return time.monotonic() - self.last_beat < self.STALE_SECONDS


def ops_answer(path: str, registry: CollectorRegistry, health: Health, hint: str) -> tuple[int, bytes, str]:
    """(status, body, content type) of ``/metrics``, ``/healthz`` or ``/readyz``; a 404 with ``hint`` otherwise."""
    if path.startswith("/metrics"):
        return 200, generate_latest(registry), CONTENT_TYPE_LATEST
    if path == "/healthz":
        return (200, b"ok\n", TEXT_PLAIN) if health.alive else (503, b"event loop stalled\n", TEXT_PLAIN)
    if path == "/readyz":
        return (200, b"ready\n", TEXT_PLAIN) if health.ready else (503, b"not ready\n", TEXT_PLAIN)
    return 404, hint.encode(), TEXT_PLAIN


def ops_hint(read_api: bool) -> str:
    """What a 404 off the operations endpoints lists."""
    return "try /metrics, /healthz, /readyz" + (" or /v1/users/USER_ID\n" if read_api else "\n")


def serve_http(port: int, registry: CollectorRegistry, health: Health,
               read: ReadHandler | None = None) -> ThreadingHTTPServer:
    """The operations endpoints, on their own thread so a busy event loop cannot starve them.

    ``read`` answers every path under ``/v1/`` (the read API, `streams.read_api`).
    """
    hint = ops_hint(read is not None)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: an API client or a scraper need not connect per request
        timeout = 60  # seconds an idle kept-alive connection holds its thread
        # Headers and body go out as two writes; on a kept-alive connection Nagle would hold the body
        # until the client's delayed ACK (40 ms a request).
        disable_nagle_algorithm = True

        def handle(self) -> None:
            try:
                super().handle()
            except ConnectionError:  # a client dropping a kept-alive connection: no traceback on stderr
                pass

        def do_GET(self) -> None:  # noqa: N802  (the http.server API)
            if read is not None and self.path.startswith("/v1/"):
                status, body, headers = read(self.path, self.headers.get("Authorization"))
                self._reply(status, body, "application/json", headers)
            else:
                self._reply(*ops_answer(self.path, registry, health, hint))

        def _reply(self, status: int, body: bytes, content_type: str = TEXT_PLAIN,
                   headers: Iterable[tuple[str, str]] = ()) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # scrapes every few seconds would flood the log
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="ops-http", daemon=True).start()
    return server
