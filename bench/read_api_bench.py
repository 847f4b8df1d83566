"""Read API throughput and latency: wrk against GET /v1/users/{id} over many users in a real Valkey.

Starts Valkey (`streams.embedded.start_redis`), writes --users profiles
through the real `state.Store` (the worker's write script: d=64 vectors, 10
items, categories, next action), serves the API and runs wrk (``apt-get
install wrk``) for --seconds with --connections connections, each request for
a random one of the users. --server worker serves it the way a worker does
(`streams.metrics.serve_http` with `streams.read_api.ReadApi`, in this
process's threads); --server read-api starts an ``interest-updater read-api``
process (`streams.read_server`, one event loop); both (the default) runs one
after the other. Plain wrk cannot hold a fixed rate (wrk2 is not in Debian):
the figures are the most the server answers at that concurrency, with wrk's
latency distribution (p50, p99) and the server's own (``iu_api_seconds``,
bucket-interpolated). Prints one summary line a server.

    python bench/read_api_bench.py                         # 10,000 users, 2 connections, 20 s, both servers
    python bench/read_api_bench.py --connections 8 --vectors --server read-api
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry  # noqa: E402

from state import Profile, Store  # noqa: E402
from state.layout import id_hash  # noqa: E402
from state.reader import Reader  # noqa: E402
from streams.embedded import free_port, start_redis  # noqa: E402
from streams.harness import histogram_quantile, scrape, since, wait_ready  # noqa: E402
from streams.metrics import Health, serve_http  # noqa: E402
from streams.read_api import ReadApi  # noqa: E402

DIM, TOP_K, CHUNK = 64, 10, 1000

# wrk runs this in each of its threads: every request asks for a random one of the users written.
WRK_SCRIPT = """
local users, query
function init(args)
  users, query = tonumber(args[1]), args[2] or ""
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)
end
function request()
  return wrk.format("GET", "/v1/users/u" .. math.random(0, users - 1) .. query)
end
"""


# The same at a fixed pace, for `bench/load.py --read-rate`: each connection waits args[3] ms before each
# request, and asks for one of the user ids listed in the file args[1].
PACED_SCRIPT = """
local users, query, pause = {}, "", 0
function init(args)
  for line in io.lines(args[1]) do users[#users + 1] = line end
  query, pause = args[2] or "", tonumber(args[3] or "0")
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)
end
function delay()
  return pause
end
function request()
  return wrk.format("GET", "/v1/users/" .. users[math.random(1, #users)] .. query)
end
"""
PACED_CONNECTIONS = 32


def profile(user: int, rng: np.random.Generator) -> Profile:
    """A profile shaped like a refresh's (`streams.refresh.Refresher._result`), with random numbers."""
    vectors = {name: rng.standard_normal(DIM).astype(np.float32) for name in ("current", "long_term", "session")}
    items = [f"item-{i}" for i in rng.choice(100_000, TOP_K, replace=False)]
    body = {"items": [[item, round(float(s), 6)] for item, s in zip(items, np.sort(rng.random(TOP_K))[::-1])],
            "categories": [[f"cat-{c}", 0.2] for c in range(5)],
            "next_action": {"view": 0.7, "cart": 0.2, "buy": 0.1}, "drift": 0.05, "model_version": "bench",
            "last_event_ts": int(time.time() * 1000), "texts": 0, "updated_at": int(time.time() * 1000)}
    return Profile(f"u{user}", vectors, tuple(id_hash(i) for i in items), body,
                   changed=("current", "long_term", "session", "categories"))


async def write_users(url: str, users: int) -> None:
    store = Store.from_url(url)
    rng = np.random.default_rng(0)
    try:
        for start in range(0, users, CHUNK):
            await store.write_profiles([profile(u, rng) for u in range(start, min(users, start + CHUNK))])
    finally:
        await store.close()


@contextlib.contextmanager
def worker_server(url: str) -> Iterator[str]:
    """The base URL of the API served as a worker serves it: `serve_http`'s threads, in this process."""
    registry = CollectorRegistry()
    reader = Reader.from_url(url)
    server = serve_http(0, registry, Health(), ReadApi(reader, registry))
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        reader.close()


@contextlib.contextmanager
def read_api_process(url: str, key_prefix: str | None, log_path: Path, nice: int = 0) -> Iterator[str]:
    """The base URL of an ``interest-updater read-api`` process on ``url`` at nice value ``nice``, stopped
    (SIGTERM) on leaving."""
    port = free_port()
    argv = [sys.executable, "-m", "streams", "read-api", "--redis", url, "--metrics-port", str(port)]
    argv += ["--key-prefix", key_prefix] if key_prefix else []
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=(lambda: os.setpriority(os.PRIO_PROCESS, 0, nice)) if nice else None)
    try:
        wait_ready(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def run_wrk(base: str, users: int, query: str, connections: int, seconds: int, folder: Path) -> str:
    script = folder / "users.lua"
    script.write_text(WRK_SCRIPT)
    threads = min(connections, 2)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), base,
            "--", str(users), query]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout


def paced_wrk(base: str, user_ids: list[str], rate: float, seconds: int, folder: Path) -> subprocess.Popen:
    """wrk asking for random ones of ``user_ids`` at about ``rate`` requests/s, started (read its stdout).

    Each of PACED_CONNECTIONS connections waits its share of the interval
    before each request (wrk's ``delay()``), less three milliseconds for the
    answer: plain wrk has no fixed-rate mode, and an answer slower than that
    lowers the rate rather than queueing (compare the rate it reports).
    """
    (folder / "users.txt").write_text("\n".join(user_ids) + "\n")
    script = folder / "paced.lua"
    script.write_text(PACED_SCRIPT)
    pause = max(0, round(PACED_CONNECTIONS * 1000 / rate) - 3)
    argv = ["wrk", "-t2", f"-c{PACED_CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script), base,
            "--", str(folder / "users.txt"), "", str(pause)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wrk_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def summary(out: str) -> dict[str, float]:
    """Requests/s, p50/p99 (ms), requests and non-2xx answers from wrk's --latency report."""
    found = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
             "p50": wrk_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M)[1]),
             "p99": wrk_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M)[1]),
             "requests": int(re.search(r"(\d+) requests in", out)[1])}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    found["failed"] = (int(non_2xx[1]) if non_2xx else 0) + (sum(map(int, re.findall(r"\d+", errors[1])))
                                                               if errors else 0)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000, help="profiles written and asked for [default: 10000]")
    parser.add_argument("--connections", type=int, default=2, help="wrk connections [default: 2]")
    parser.add_argument("--seconds", type=int, default=20, help="wrk duration [default: 20]")
    parser.add_argument("--vectors", action="store_true", help="ask for ?vectors=true (three 64-d vectors more)")
    parser.add_argument("--server", choices=("worker", "read-api", "both"), default="both",
                        help="the worker's threaded server, a read-api process, or one after the other "
                             "[default: both]")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install -y wrk)")

    servers = ("worker", "read-api") if args.server == "both" else (args.server,)
    query = "?vectors=true" if args.vectors else ""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis = start_redis(folder)
        try:
            url = f"redis://127.0.0.1:{redis.port}/0"
            asyncio.run(write_users(url, args.users))
            for name in servers:
                serving = worker_server(url) if name == "worker" else read_api_process(url, None, folder / "api.log")
                with serving as base:
                    print(_measure(name, base, query, args, folder), flush=True)
        finally:
            redis.stop()
    return 0


def _measure(name: str, base: str, query: str, args, folder: Path) -> str:
    with urllib.request.urlopen(f"{base}/v1/users/u0{query}", timeout=5) as check:  # raises unless 200
        size = len(check.read())
    before = scrape(f"{base}/metrics")
    wrk = summary(run_wrk(base, args.users, query, args.connections, args.seconds, folder))
    served = since(scrape(f"{base}/metrics"), before)
    p50, p99 = (1000 * histogram_quantile(served, "iu_api_seconds", q) for q in (0.5, 0.99))
    return (f"read API ({name}){' with vectors' if args.vectors else ''}: {args.users} users, "
            f"{args.connections} connections, {args.seconds} s: {wrk['rps']:.0f} requests/s, p50 {wrk['p50']:.2f} ms, "
            f"p99 {wrk['p99']:.2f} ms (wrk); server side p50 {p50:.2f} ms, p99 {p99:.2f} ms; {wrk['requests']} "
            f"requests, {wrk['failed']} failed; {size} bytes an answer")


if __name__ == "__main__":
    raise SystemExit(main())
