import argparse
import os
import time

import pytest

from streams.harness import cpu_seconds, histogram_quantile, rss_mib
from streams.metrics import Metrics
from streams.settings import Settings, add_arguments, secret_env, settings_argv, settings_from_args


def parse(argv, environ=None):
    parser = argparse.ArgumentParser()
    add_arguments(parser, environ or {})
    return settings_from_args(parser.parse_args(argv))


def test_flag_beats_environment_beats_default():
    assert parse([]).batch_max == Settings().batch_max
    assert parse([], {"IU_BATCH_MAX": "7"}).batch_max == 7
    assert parse(["--batch-max", "9"], {"IU_BATCH_MAX": "7"}).batch_max == 9
    assert parse([], {"IU_EXCLUDE_SEEN": "false"}).exclude_seen is False


def test_out_of_range_values_are_errors():
    with pytest.raises(ValueError, match="--batch-max"):
        parse(["--batch-max", "0"])
    with pytest.raises(SystemExit):
        parse(["--batch-mx", "3"])  # a misspelt flag is an error, not ignored


def test_settings_round_trip_through_argv_and_secret_environment():
    settings = Settings(broker="b:1", redis_url="redis://:pw@r/0", batch_max=3, text_encoder=False,
                        kafka_security_protocol="SASL_SSL", kafka_username="svc", kafka_password="hunter2")
    argv = settings_argv(settings)
    assert "hunter2" not in " ".join(argv) and ":pw@" not in " ".join(argv)
    assert parse(argv, secret_env(settings)) == settings
    assert "hunter2" not in repr(settings) and "pw@" not in repr(settings)


def test_kafka_security_maps_to_both_clients():
    import ssl

    from streams.security import aiokafka_config, kafka_client_config

    plain = Settings()
    assert kafka_client_config(plain) == {"security_protocol": "PLAINTEXT"}
    assert aiokafka_config(plain) == {"security_protocol": "PLAINTEXT"}
    scram = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                     kafka_username="svc", kafka_password="pw")
    assert kafka_client_config(scram) == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                          "sasl_plain_username": "svc", "sasl_plain_password": "pw"}
    worker = aiokafka_config(scram)
    assert isinstance(worker.pop("ssl_context"), ssl.SSLContext)
    assert worker == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                      "sasl_plain_username": "svc", "sasl_plain_password": "pw"}


def test_fetch_min_bytes_parses_and_below_one_is_named():
    assert parse(["--fetch-min-bytes", "4096"]).fetch_min_bytes == 4096
    with pytest.raises(ValueError, match="--fetch-min-bytes must be at least 1, got 0"):
        parse(["--fetch-min-bytes", "0"])


def test_sasl_without_a_password_is_an_error():
    with pytest.raises(ValueError, match="SASL needs"):
        parse(["--kafka-security-protocol", "SASL_PLAINTEXT", "--kafka-username", "svc"])


def test_histogram_quantile_interpolates_like_promql():
    metrics = Metrics()
    for value in (0.04, 0.06, 0.07, 0.08, 0.4):
        metrics.freshness.observe(value)
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    median = histogram_quantile(samples, "iu_freshness_seconds", 0.5)
    assert 0.05 < median <= 0.1
    assert histogram_quantile(samples, "iu_freshness_seconds", 1.0) == pytest.approx(0.4)  # 0.4 is a bucket bound


def test_process_probes_read_this_process():
    """The soak's and the load bench's CPU and memory columns: CPU time only grows, with work."""
    before, deadline = cpu_seconds(os.getpid()), time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert cpu_seconds(os.getpid()) > before
    resident = rss_mib(os.getpid())
    ballast = b"x" * (64 * 2**20)  # written, so resident
    assert rss_mib(os.getpid()) - resident >= 60
    del ballast


def test_a_worker_on_its_own_embedded_broker_publishes_plain_without_a_warning(caplog):
    """Tansu grants no producer ids: with no --broker, auto means off, said once at INFO."""
    from streams.cli.worker import running_stack

    with caplog.at_level("INFO", logger="interest_updater"), running_stack(Settings()) as settings:
        assert settings.broker and settings.redis_url and settings.idempotent_producer == "off"
    assert "Tansu grants no producer ids" in caplog.text
    assert "give --broker an Apache Kafka for long runs" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    with running_stack(Settings(idempotent_producer="on")) as settings:
        assert settings.idempotent_producer == "on"  # asked for: the worker then fails, naming the flag
