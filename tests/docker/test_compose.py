"""Static checks of the deployment folder docker/ (no Docker engine needed).

What can drift silently between the service and its deployment files is checked
here: the compose file parses and has every service; every IU_ variable given to
the worker is a real setting; the metrics port agrees between the worker, its
image and Prometheus; the topics job creates the worker's topics with
IU_PARTITIONS partitions; every metric the Grafana dashboard queries exists.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from streams.metrics import Metrics
from streams.settings import ENV_PREFIX, Settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"
SERVICES = {"kafka", "redis", "topics", "worker", "read-api", "prometheus", "grafana"}


def _load(relative: str):
    return yaml.safe_load((DOCKER / relative).read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load("compose.yaml")


def _env(compose, service: str) -> dict[str, str]:
    env = compose["services"][service].get("environment", {})
    if isinstance(env, list):  # the "KEY=value" list form
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


@pytest.fixture(scope="module")
def worker_env(compose) -> dict[str, str]:
    return _env(compose, "worker")


def _settings_env_names() -> set[str]:
    return {ENV_PREFIX + spec.name.upper() for spec in fields(Settings)}


def _topics_script(compose) -> str:
    job = compose["services"]["topics"]
    parts = []
    for key in ("entrypoint", "command"):
        value = job.get(key) or []
        parts += [value] if isinstance(value, str) else [str(v) for v in value]
    return "\n".join(parts)


def test_compose_has_every_service(compose):
    assert SERVICES <= set(compose["services"])


def test_worker_is_scalable_and_built_from_the_dockerfile(compose):
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports"), "workers must not bind host ports (--scale would collide)"
    build = worker["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()
    depends = worker["depends_on"]
    assert depends["topics"]["condition"] == "service_completed_successfully"
    assert "redis" in depends


def test_worker_env_names_real_settings(worker_env):
    known = _settings_env_names()
    used = {name for name in worker_env if name.startswith(ENV_PREFIX)}
    assert used, "the worker sets no IU_ variables"
    assert used <= known, f"not settings: {sorted(used - known)}"
    assert "IU_REDIS_URL" in known  # the flag is --redis, the variable follows the field name
    for required in ("IU_BROKER", "IU_REDIS_URL", "IU_CHECKPOINT", "IU_METRICS_PORT"):
        assert required in worker_env
    assert "://" not in worker_env["IU_BROKER"], "IU_BROKER is host:port without a scheme"
    assert worker_env["IU_REDIS_URL"].startswith(("redis://", "rediss://"))


def test_dockerfile_env_names_real_settings():
    text = (DOCKER / "Dockerfile").read_text()
    used = set(re.findall(r"\b(IU_[A-Z_]+)=", text))
    assert used <= _settings_env_names(), f"not settings: {sorted(used - _settings_env_names())}"
    assert 'ENTRYPOINT ["interest-updater"]' in text
    assert 'CMD ["worker"]' in text
    assert re.search(r"^USER\s+(?!root\b|0\b)\S+", text, re.M), "the image must run as a non-root user"


def test_checkpoint_mounted_read_only(compose, worker_env):
    mounts = [str(v) for v in compose["services"]["worker"].get("volumes", [])]
    models = [m for m in mounts if m.split(":")[1] == "/models"]
    assert models and models[0].endswith(":ro"), mounts
    assert worker_env["IU_CHECKPOINT"].startswith("/models/")


def test_metrics_port_agrees(compose, worker_env):
    port = int(worker_env.get("IU_METRICS_PORT", Settings.metrics_port))
    prometheus = _load("prometheus/prometheus.yml")
    dns = [sd for job in prometheus["scrape_configs"] for sd in job.get("dns_sd_configs", [])]
    assert sorted(name for sd in dns for name in sd["names"]) == ["read-api", "worker"]
    for sd in dns:
        service_port = int(_env(compose, sd["names"][0]).get("IU_METRICS_PORT", Settings.metrics_port))
        assert sd.get("type", "SRV") == "A"
        assert int(sd["port"]) == service_port
    assert re.search(rf"^EXPOSE\s+{port}\b", (DOCKER / "Dockerfile").read_text(), re.M)


def test_the_read_api_reads_what_the_workers_write(compose, worker_env):
    service = compose["services"]["read-api"]
    env = _env(compose, "read-api")
    assert service["command"] == ["read-api"] and service["image"] == compose["services"]["worker"]["image"]
    assert set(env) <= _settings_env_names(), f"not settings: {sorted(set(env) - _settings_env_names())}"
    for shared in ("IU_REDIS_URL", "IU_KEY_PREFIX", "IU_REDIS_CLUSTER"):
        assert env.get(shared) == worker_env.get(shared), shared
    host_port, container_port = service["ports"][0].split(":")
    assert int(container_port) == int(env["IU_METRICS_PORT"]) and int(host_port) == 8080


def test_topics_job_creates_the_worker_topics(compose, worker_env):
    script = _topics_script(compose)
    assert "/opt/kafka/bin" in script and "kafka-topics.sh" in script
    names = {spec.name for spec in fields(Settings) if spec.name.startswith("topic_")}
    assert names == {"topic_clicks", "topic_texts", "topic_items", "topic_recs", "topic_dead"}
    for name in names:
        topic = worker_env.get(ENV_PREFIX + name.upper(), getattr(Settings, name))
        assert re.search(rf"(?<![\w-]){re.escape(topic)}(?![\w-])", script), f"topics job does not create {topic}"
    counts = {int(n) for n in re.findall(r"--partitions\s+(\d+)", script)}
    partitions = int(worker_env.get("IU_PARTITIONS", Settings.partitions))
    assert counts == {partitions}, "topics must all have IU_PARTITIONS partitions (clicks and texts must match)"


def _exposed_metric_names() -> set[str]:
    m = Metrics()
    m.events.labels("clicks", "applied").inc()
    m.dead_letters.labels("clicks", "schema").inc()
    m.encoder_batch_size.labels("sequence").observe(1)
    m.encoder_seconds.labels("sequence").observe(0.01)
    m.redis_seconds.labels("apply").observe(0.001)
    m.lag.labels("clicks", "0").set(0)
    m.model.labels("test").set(1)
    m.errors.labels("redis").inc()
    text = generate_latest(m.registry).decode()
    samples = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines()
               if line and not line.startswith("#")}
    return {_base(name) for name in samples}


def _base(name: str) -> str:
    """A histogram's series name without its _bucket/_count/_sum suffix."""
    return re.sub(r"_(bucket|count|sum)$", "", name)


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "interest-updater.json").read_text())
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard)
    return exprs


def test_dashboard_queries_only_exposed_metrics():
    exposed = _exposed_metric_names()
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    referenced = {_base(token)
                  for expr in exprs for token in re.findall(r"iu_[a-z_]+", expr)}
    assert referenced, "the dashboard queries no iu_ metrics"
    assert referenced <= exposed, f"unknown metrics: {sorted(referenced - exposed)}"


def test_dashboard_covers_the_key_metrics():
    text = "\n".join(_dashboard_exprs())
    for name in ("iu_events_total", "iu_dead_letters_total", "iu_batch_size_bucket", "iu_batch_seconds_bucket",
                 "iu_encoder_seconds_bucket", "iu_redis_seconds_bucket", "iu_freshness_seconds_bucket",
                 "iu_consumer_lag", "iu_recommendations_published_total", "iu_errors_total", "iu_model_info"):
        assert name in text, name


def test_grafana_provisioning_points_at_the_dashboard(compose):
    datasources = _load("grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    assert any(ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090" for ds in datasources)
    providers = _load("grafana/provisioning/dashboards/dashboards.yaml")["providers"]
    path = providers[0]["options"]["path"]
    mounts = [str(v) for v in compose["services"]["grafana"]["volumes"]]
    assert any(m.split(":")[0] == "./grafana/dashboards" and m.split(":")[1] == path for m in mounts), mounts
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "interest-updater.json").read_text())
    uids = {ds.get("uid") for ds in datasources}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids
