"""Running and watching a worker from outside: for the demo, the tests and the benchmarks.

A worker runs in a child process (`worker_process`) that dies with its parent;
callers synchronise on conditions, never on sleeps: Redis's resume offsets
(`wait_until_applied`), the worker's own metrics (`wait_until_idle`: every
batch taken is published; `wait_for_metric`), the readiness endpoint
(`wait_ready`, `wait_not_ready`) and the test-only fault points of
`streams.faults` (`wait_for_fault`).  `scrape` reads a worker's /metrics;
`cpu_seconds` and `rss_mib` read any process's CPU time and memory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import orjson

from streams.embedded import die_with_parent
from streams.settings import Settings, secret_env, settings_argv

__all__ = ["worker_process", "stop_process", "wait_until_applied", "wait_until_idle", "wait_until_nothing_pending",
           "wait_for_metric", "wait_ready", "wait_not_ready", "wait_for_fault", "scrape", "total",
           "histogram_quantile", "since", "cpu_seconds", "rss_mib"]


def wait_until_applied(settings: Settings, ends: dict[tuple[str, int], int], worker: subprocess.Popen | None = None,
                       timeout: float = 600.0, poll: float = 0.5) -> None:
    """Block until Redis records every (topic, partition) offset in ``ends`` as applied (checked every ``poll`` s)."""
    import asyncio

    from state import Store
    from state.keys import KeySpace

    async def applied() -> dict[tuple[str, int], int]:
        store = Store.from_url(settings.redis_url, cluster=settings.redis_cluster, keys=KeySpace(settings.key_prefix))
        try:
            return {(topic, p): o for topic in {t for t, _ in ends}
                    for p, o in (await store.resume_offsets(topic)).items()}
        finally:
            await store.close()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = asyncio.run(applied())
        if all(done.get(tp, -1) >= offset for tp, offset in ends.items()):
            return
        if worker is not None and worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker.returncode} before applying the replay")
        time.sleep(poll)
    raise TimeoutError(f"the worker did not apply the replay within {timeout:.0f}s")


def wait_until_nothing_pending(settings: Settings, timeout: float = 120.0, poll: float = 0.1) -> None:
    """Block until no user is marked pending on any partition (every applied event's user was published)."""
    import asyncio

    from state import Store
    from state.keys import KeySpace

    async def pending() -> bool:
        store = Store.from_url(settings.redis_url, cluster=settings.redis_cluster, keys=KeySpace(settings.key_prefix))
        try:
            for topic in (settings.topic_clicks, settings.topic_texts):
                if await store.pending_users(topic, range(settings.partitions)):
                    return True
            return False
        finally:
            await store.close()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not asyncio.run(pending()):
            return
        time.sleep(poll)
    raise TimeoutError(f"users were still pending after {timeout:.0f}s")


def wait_until_idle(metrics_port: int, timeout: float = 60.0, poll: float = 0.05) -> None:
    """Block until the worker on ``metrics_port`` has published every batch it took (``iu_batches_in_flight`` 0)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _metric(url, "iu_batches_in_flight") == 0:
            return
        time.sleep(poll)
    raise TimeoutError(f"the worker on metrics port {metrics_port} was still busy after {timeout:.0f}s")


def wait_for_metric(metrics_port: int, name: str, at_least: float, timeout: float = 120.0, **labels: str) -> None:
    """Block until the sum of metric ``name`` (with ``labels``) on the worker's /metrics reaches ``at_least``."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (_metric(url, name, **labels) or 0.0) >= at_least:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{name} on metrics port {metrics_port} did not reach {at_least} within {timeout:.0f}s")


def _metric(url: str, name: str, **labels: str) -> float | None:
    """A metric's sum, or None while the worker does not serve /metrics yet (still loading its models)."""
    try:
        return total(scrape(url), name, **labels)
    except OSError:
        return None


def wait_ready(metrics_port: int, timeout: float = 90.0) -> None:
    """Block until the worker serving ``metrics_port`` answers /readyz with 200 (partitions assigned)."""
    _wait_for_readyz(metrics_port, 200, timeout, 0.3, "was not ready")


def wait_not_ready(metrics_port: int, timeout: float = 30.0) -> None:
    """Block until the worker serving ``metrics_port`` answers /readyz with 503 (it is stopping)."""
    _wait_for_readyz(metrics_port, 503, timeout, 0.05, "still answered ready")


def _wait_for_readyz(metrics_port: int, status: int, timeout: float, poll: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _readyz(metrics_port) == status:
            return
        time.sleep(poll)
    raise TimeoutError(f"the worker on metrics port {metrics_port} {failure} within {timeout:.0f}s")


def _readyz(metrics_port: int) -> int | None:
    from urllib.error import HTTPError
    from urllib.request import urlopen

    try:
        with urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2) as reply:
            return reply.status
    except HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_for_fault(meeting: Path, point: str, worker: subprocess.Popen, timeout: float = 120.0) -> dict:
    """Block until ``worker`` reaches the fault point ``point`` (streams/faults.py); return what it wrote."""
    reached = meeting / f"{point}.reached"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reached.exists():
            try:
                return orjson.loads(reached.read_bytes())
            except orjson.JSONDecodeError:
                pass  # still being written
        if worker.poll() is not None and not reached.exists():
            raise RuntimeError(f"the worker exited with code {worker.returncode} before reaching {point}")
        time.sleep(0.05)
    raise TimeoutError(f"the worker did not reach fault point {point} within {timeout:.0f}s")


@contextlib.contextmanager
def worker_process(settings: Settings, log_path: Path, extra_env: dict | None = None) -> Iterator[subprocess.Popen]:
    """A worker in a child process, stopped with SIGTERM (then SIGKILL) on exit."""
    argv = [sys.executable, "-m", "streams", "worker", *settings_argv(settings)]
    env = {**os.environ, **secret_env(settings), **(extra_env or {})}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                   cwd=Path(__file__).resolve().parents[1], preexec_fn=die_with_parent)
    try:
        yield process
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------- /metrics
def scrape(url: str, timeout: float = 5.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of a /metrics endpoint by sample name: [(labels, value), ...]."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of a sample's values over the series whose labels include ``labels``."""
    return sum(value for found, value in samples.get(name, [])
               if all(found.get(k) == v for k, v in labels.items()))


def histogram_quantile(samples: dict, name: str, q: float) -> float | None:
    """Upper-bound estimate of quantile ``q`` from a histogram's cumulative buckets."""
    buckets = sorted((float(labels["le"]), value) for labels, value in samples.get(name + "_bucket", []))
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            # Linear within the bucket, as PromQL's histogram_quantile does.
            share = (rank - previous_count) / max(count - previous_count, 1e-12)
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, count
    return previous_bound


def since(after: dict, before: dict) -> dict:
    """Samples of ``after`` minus ``before`` (counters and histograms over an interval)."""
    def key(labels: dict[str, str]) -> tuple:
        return tuple(sorted(labels.items()))

    delta = {}
    for name, series in after.items():
        earlier = {key(labels): value for labels, value in before.get(name, [])}
        delta[name] = [(labels, value - earlier.get(key(labels), 0.0)) for labels, value in series]
    return delta


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (user + system, from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """A process's resident memory in MiB (from /proc; NaN when /proc has no figure)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
