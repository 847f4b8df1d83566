"""Every option of the service in one place.

Each option is a command-line flag with an environment-variable fallback
(``IU_<NAME>``), typed, with a default that works on one machine. The settings
object is built once at the entry point and passed down; nothing else reads the
environment.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping

from encoders.interests import BlendWeights
from streams.errors import ConfigurationError

__all__ = ["Settings", "add_arguments", "settings_from_args", "settings_argv", "secret_env", "ENV_PREFIX"]

ENV_PREFIX = "IU_"
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # what an Authorization: Bearer header can carry


def _option(default: Any, help: str, *, flag: str | None = None, secret: bool = False) -> Any:
    from dataclasses import field

    # Secrets stay out of repr() and of child processes' command lines (see secret_env).
    return field(default=default, repr=not secret, metadata={"help": help, "flag": flag, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """Worker and pipeline settings; see ``interest-updater worker --help``."""

    broker: str | None = _option(None, "Kafka bootstrap servers, host:port[,host:port]. "
                                       "Unset: start the embedded broker.")
    redis_url: str | None = _option(None, "Redis URL, redis://[:password@]host:port/db (rediss:// for TLS; a "
                                          "private CA: rediss://...?ssl_ca_certs=/path/ca.pem). "
                                          "Unset: start the embedded Redis-compatible server.",
                                    flag="--redis", secret=True)
    redis_cluster: bool = _option(False, "Treat --redis as one node of a Redis Cluster.")
    kafka_security_protocol: str = _option("PLAINTEXT", "Kafka security protocol: PLAINTEXT, SSL, "
                                                        "SASL_PLAINTEXT or SASL_SSL.")
    kafka_sasl_mechanism: str = _option("PLAIN", "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    kafka_username: str | None = _option(None, "SASL user name.")
    kafka_password: str | None = _option(None, "SASL password (prefer the environment variable).", secret=True)
    kafka_ca_file: str | None = _option(None, "CA certificate (PEM) that signed the brokers' TLS certificates "
                                              "(unset: the system's CAs).")
    idempotent_producer: str = _option("auto", "Publish recommendations and dead letters with an idempotent "
                                               "producer, so the producer's own retries never write a message "
                                               "twice: on, off, or auto (on where the broker grants producer "
                                               "ids, as Apache Kafka does; off, with a warning, where it does "
                                               "not, as the embedded broker).")
    app_id: str = _option("interest-updater", "Consumer group id (and client id prefix).")
    key_prefix: str = _option("iu", "Prefix of every Redis key this service writes.")
    topic_clicks: str = _option("clicks", "Topic of click events.")
    topic_texts: str = _option("texts", "Topic of text events.")
    topic_items: str = _option("items", "Topic of item upserts (the live catalogue: availability, titles).")
    topic_recs: str = _option("recommendations", "Topic recommendation events are published to.")
    topic_dead: str = _option("dead-letters", "Topic bad events go to, with a reason.")
    partitions: int = _option(4, "Partitions of every topic (clicks and texts must match).")
    batch_max: int = _option(256, "Most events in one micro-batch.")
    overlap: bool = _option(True, "Apply micro-batch N+1 to Redis while batch N is encoded and published (each "
                                  "user's refreshes stay in order). A click in batch N+1 is then ranked, for the "
                                  "online metrics, against the list before batch N's. false: one batch at a time.")
    batch_within: float = _option(0.05, "Seconds a poll waits when no event has arrived. A micro-batch is what has "
                                         "arrived by then, up to --batch-max: it does not wait to fill (for fuller "
                                         "batches see --fetch-min-bytes). bench/load.py at 150 events/s: p99 "
                                         "freshness 385 ms at 0.05, 631 ms at 0.2.")
    fetch_max_wait: float = _option(0.05, "Seconds a fetch may wait at the broker for new events. Kafka "
                                          "answers as soon as events arrive; the embedded broker only when "
                                          "this expires, so it bounds freshness there (Faust's own is 1.5).")
    fetch_min_bytes: int = _option(1, "Bytes a fetch waits for at the broker (up to --fetch-max-wait) before "
                                      "it answers. 1: answer with the first event, so at low rates a micro-batch "
                                      "holds one event (lowest latency, most CPU per event); 16384 halved "
                                      "the worker's CPU at 150 events/s on Apache Kafka (bench/load.py).")
    checkpoint: str | None = _option(None, "Sequence-encoder checkpoint directory (from `train` or `finetune`).")
    checkpoint_poll: float = _option(10.0, "Seconds between checks of --checkpoint for a new model "
                                           "(written there by train/finetune); a new one is loaded beside "
                                           "the old and swapped in between micro-batches. 0: never.")
    device: str = _option("auto", "Torch device for the encoders: auto, cpu or cuda.")
    torch_threads: int = _option(1, "Threads torch may use for one encoder call. More than one rarely pays on "
                                    "a worker that shares its cores with the broker and Redis.")
    window_hop: int = _option(50, "Events by which a user's encoder window moves once their history is longer "
                                  "than the model's max_len: the window holds max_len-hop+1..max_len events, and "
                                  "a refresh encodes only the new events except when the window moves. 1: always "
                                  "the last max_len events, exact but re-encoding the whole window per event.")
    encoder_cache_mb: int = _option(1024, "Memory for the encoder states kept between a user's refreshes "
                                          "(about 1 KiB per event of a window at d=64); least recently "
                                          "refreshed users are dropped first. 0: encode every window from scratch.")
    text_encoder: bool = _option(True, "Embed text events with all-MiniLM-L6-v2 (false: store texts unembedded).")
    text_cache: int = _option(50_000, "Texts whose embedding is kept for when the same text comes again (searches "
                                      "repeat; 768 bytes each). 0: embed every text.")
    top_k: int = _option(10, "Recommendations per user.")
    ann_above: int = _option(200_000, "Catalogues larger than this many items are searched through an inverted-file "
                                      "index (faiss) built when a model loads, candidates then scored by the full "
                                      "rule; smaller ones are scanned exactly. 0: always scan.")
    ann_candidates: int = _option(200, "Candidates taken from the index per user, besides the user's seen items.")
    ann_probe: int = _option(128, "Index lists searched per user (of about 4*sqrt(items)): more finds more of the "
                                  "exact top-K, at more time (bench/ann_bench.py).")
    index_cache: str = _option("~/.cache/interest-updater", "Folder where built indexes are kept, by model version, "
                                                            "so a restart loads one instead of building it.")
    exclude_seen: bool = _option(True, "Leave items already in the user's history out of recommendations.")
    session_gap: float = _option(1800.0, "Seconds of inactivity that end a session.")
    long_term_half_life: float = _option(30.0, "Days after which an event counts half in the long-term "
                                               "and category interests (0: no decay).")
    blend: str = _option("current=1,long_term=0.25,session=0.5,categories=0.1",
                         "How recommendations weigh the interests: name=weight pairs for current, long_term, "
                         "session and categories (left out: 0, current 1). The default was chosen on ML-1M "
                         "validation (bench/interest_blend.py); current=1 alone is behaviour only.")
    max_history: int = _option(200, "Click events kept per user (oldest dropped first).")
    max_texts: int = _option(32, "Text event ids kept per user to recognise a text sent twice (their embeddings "
                                 "are folded into the user's running mean, not kept; at most 255).")
    max_text_chars: int = _option(2000, "Longest accepted text; longer texts are dead-lettered.")
    lateness: float = _option(86400.0, "Seconds an event may be older than the user's newest event "
                                       "and still be inserted in time order; older ones are dead-lettered.")
    max_future: float = _option(600.0, "Seconds an event time may lie ahead of the worker's clock.")
    metrics_port: int = _option(9464, "Port of the Prometheus /metrics endpoint (0: off).")
    api_token: str | None = _option(None, "Bearer token the read API (GET /v1/users/USER_ID on --metrics-port) "
                                          "requires as 'Authorization: Bearer TOKEN'; a request without it gets "
                                          "401. Unset: the API answers whoever reaches the port. Prefer the "
                                          "environment variable; e.g. `openssl rand -hex 32`.", secret=True)
    log_level: str = _option("info", "Log level: debug, info, warn or error.")
    log_format: str = _option("plain", "Log lines as plain text or one JSON object each (json).")

    def with_overrides(self, **changes: Any) -> "Settings":
        return replace(self, **changes)


TRUE_WORDS, FALSE_WORDS = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parser_for(annotation: str) -> Callable[[str], Any]:
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    if annotation.startswith("bool"):
        return _parse_bool
    return str


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] = os.environ) -> None:
    """Add one flag per setting; the help names its environment variable and default."""
    group = parser.add_argument_group("service settings (flag, else environment variable, else default)")
    for spec in fields(Settings):
        flag = spec.metadata["flag"] or "--" + spec.name.replace("_", "-")
        env = _env_name(spec.name)
        convert = _parser_for(str(spec.type))
        default = spec.default
        if env in environ:
            try:
                default = convert(environ[env])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"environment variable {env}={environ[env]!r} is not valid: {exc}")
        shown = "unset" if spec.default is None else spec.default
        group.add_argument(flag, dest=spec.name, type=convert, default=default,
                           metavar=spec.name.split("_")[-1].upper(),
                           help=f"{spec.metadata['help']} [env: {env}] [default: {shown}]")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Build the settings from parsed arguments, checking the values that can be wrong."""
    values = {spec.name: getattr(args, spec.name) for spec in fields(Settings)}
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    positive = ("partitions", "batch_max", "top_k", "max_history", "max_texts", "max_text_chars", "torch_threads",
                "window_hop", "fetch_min_bytes")
    for name in positive:
        if getattr(settings, name) < 1:
            raise ConfigurationError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(settings, name)}")
    if settings.checkpoint_poll < 0 or settings.long_term_half_life < 0:
        raise ConfigurationError("--checkpoint-poll and --long-term-half-life cannot be negative")
    if settings.ann_probe < 1:
        raise ConfigurationError(f"--ann-probe must be at least 1, got {settings.ann_probe}")
    if settings.ann_above < 0 or settings.ann_candidates < settings.top_k:
        raise ConfigurationError(f"--ann-above cannot be negative and --ann-candidates must be at least --top-k, got "
                                 f"{settings.ann_above} and {settings.ann_candidates}")
    if settings.text_cache < 0:
        raise ConfigurationError(f"--text-cache cannot be negative, got {settings.text_cache}")
    if settings.encoder_cache_mb < 0:
        raise ConfigurationError(f"--encoder-cache-mb cannot be negative, got {settings.encoder_cache_mb}")
    if settings.max_texts > 255:
        raise ConfigurationError(f"--max-texts must be at most 255 (text ids kept for duplicates), "
                                 f"got {settings.max_texts}")
    try:
        BlendWeights.parse(settings.blend)  # a bad weight fails here, as one clear line
    except ValueError as exc:
        raise ConfigurationError(f"--blend: {exc}") from None
    if settings.batch_within <= 0:
        raise ConfigurationError(f"--batch-within must be positive, got {settings.batch_within}")
    if settings.fetch_max_wait <= 0:
        raise ConfigurationError(f"--fetch-max-wait must be positive, got {settings.fetch_max_wait}")
    if settings.kafka_security_protocol not in KAFKA_PROTOCOLS:
        raise ConfigurationError(f"--kafka-security-protocol must be one of {', '.join(KAFKA_PROTOCOLS)}, "
                         f"got {settings.kafka_security_protocol!r}")
    if settings.kafka_sasl_mechanism not in SASL_MECHANISMS:
        raise ConfigurationError(f"--kafka-sasl-mechanism must be one of {', '.join(SASL_MECHANISMS)}, "
                         f"got {settings.kafka_sasl_mechanism!r}")
    if settings.kafka_security_protocol.startswith("SASL") and not (settings.kafka_username and
                                                                     settings.kafka_password):
        raise ConfigurationError("SASL needs --kafka-username and IU_KAFKA_PASSWORD")
    if settings.idempotent_producer not in {"auto", "on", "off"}:
        raise ConfigurationError(f"--idempotent-producer must be auto, on or off, got {settings.idempotent_producer!r}")
    if settings.log_format not in {"plain", "json"}:
        raise ConfigurationError(f"--log-format must be plain or json, got {settings.log_format!r}")
    if settings.api_token is not None and not BEARER_TOKEN.fullmatch(settings.api_token):
        # Never echo the value: it is a secret. An empty one (IU_API_TOKEN= in a compose file) must not mean "open".
        raise ConfigurationError("--api-token (IU_API_TOKEN) must be a bearer token: one or more of A-Z a-z 0-9 "
                                 "- . _ ~ + / then any '=' (RFC 6750), e.g. from `openssl rand -hex 32`")
    if settings.device not in {"auto", "cpu", "cuda"} and not settings.device.startswith("cuda:"):
        raise ConfigurationError(f"--device must be auto, cpu or cuda, got {settings.device!r}")


def settings_argv(settings: Settings) -> list[str]:
    """Command-line flags that reproduce ``settings`` but its secrets (see ``secret_env``)."""
    argv: list[str] = []
    for spec in fields(Settings):
        value = getattr(settings, spec.name)
        if value is None or spec.metadata["secret"]:
            continue
        flag = spec.metadata["flag"] or "--" + spec.name.replace("_", "-")
        argv += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def secret_env(settings: Settings) -> dict[str, str]:
    """The secret settings as environment variables, for a child process (not visible in ``ps``)."""
    return {_env_name(spec.name): str(getattr(settings, spec.name)) for spec in fields(Settings)
            if spec.metadata["secret"] and getattr(settings, spec.name) is not None}
