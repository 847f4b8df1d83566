import argparse

import pytest

from streams.metrics import Metrics, histogram_quantile
from streams.settings import Settings, add_arguments, settings_argv, settings_from_args


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


def test_settings_round_trip_through_argv():
    settings = Settings(broker="b:1", redis_url="redis://r/0", batch_max=3, text_encoder=False)
    assert parse(settings_argv(settings)) == settings


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
    assert histogram_quantile(samples, "iu_freshness_seconds", 1.0) == pytest.approx(0.5)
