"""The read API over HTTP on a real Valkey (a single server and a Cluster): users written by the real
pipeline and a real trained encoder, read back as their last recommendation event said. Every test
runs on both servers: the worker's threads (`serve_http`) and the read-api process's event loop
(`ReadServer`)."""

import asyncio
import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import orjson
import pytest
from prometheus_client import generate_latest
from redis.asyncio.cluster import RedisCluster

from state.keys import KeySpace
from state.reader import AsyncReader, Reader
from streams.metrics import Health, Metrics, serve_http
from streams.pipeline import Pipeline, RawRecord
from streams.read_api import ReadApi
from streams.read_server import ReadServer
from streams.refresh import Refresher

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "streams" / "schemas" / "user.schema.json").read_text())
NOW = int(time.time() * 1000)
TOKEN = "t0ken-for-tests"


@pytest.fixture()
def pipeline(store, synthetic_checkpoint, keeping_publisher):
    from encoders.inference import InterestEncoder

    encoder = InterestEncoder.from_checkpoint(synthetic_checkpoint, device="cpu")
    built = Pipeline(store, Refresher(encoder, None, top_k=5), keeping_publisher, Metrics(), click_topic="clicks")
    yield built
    built.close()


@contextlib.contextmanager
def threaded_server(url, cluster, keys, registry, token):
    """The API as the worker serves it: `serve_http`'s threads, a synchronous `Reader`. Yields the port."""
    reader = Reader.from_url(url, cluster=cluster, keys=keys)
    server = serve_http(0, registry, Health(), ReadApi(reader, registry, token))
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        reader.close()


@contextlib.contextmanager
def event_loop_server(url, cluster, keys, registry, token):
    """The API as ``read-api`` serves it: `ReadServer` and an `AsyncReader` on a loop in a thread. Yields the port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="read-server", daemon=True)
    thread.start()

    def on_loop(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)

    api = ReadApi(AsyncReader.from_url(url, cluster=cluster, keys=keys), registry, token)
    server = ReadServer(api, registry, Health())
    try:
        yield on_loop(server.start(0, "127.0.0.1"))
    finally:
        on_loop(server.close())
        on_loop(api.reader.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


@pytest.fixture(params=["threads", "event-loop"])
def serve(store, request):
    """Start the API over the store's Redis on a free port: ``serve(token)`` -> (base URL, Metrics)."""
    cluster = isinstance(store.client, RedisCluster)
    url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    server = threaded_server if request.param == "threads" else event_loop_server
    with contextlib.ExitStack() as started:
        def start(token=None):
            metrics = Metrics()
            port = started.enter_context(server(url, cluster, store.keys, metrics.registry, token))
            return f"http://127.0.0.1:{port}", metrics

        yield start


def get(url, token=None):
    """(status, headers, JSON body) of a GET, error statuses included."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, orjson.loads(exc.read())


def click(offset, user, item, ts):
    body = {"event_id": f"e{offset}", "user_id": user, "item_id": item, "action": "click", "ts": ts}
    return RawRecord("clicks", 0, offset, user.encode(), orjson.dumps(body), NOW)


def text(offset, user, body, ts):
    value = {"event_id": f"t{offset}", "user_id": user, "kind": "search", "text": body, "ts": ts}
    return RawRecord("texts", 0, offset, user.encode(), orjson.dumps(value), NOW)


def refresh_user(pipeline, run, user="u1"):
    """Two refreshes by clicks, then one by a text: interests of three different versions. The last event."""
    run(pipeline.process([click(0, user, "i1", NOW - 9000), click(1, user, "i2", NOW - 8000)]))
    run(pipeline.process([click(2, user, "i3", NOW - 7000)]))
    run(pipeline.process([text(0, user, "jazz records", NOW - 6000)]))
    return orjson.loads(pipeline.publisher.recs[-1].to_json())


def samples(metrics, name):
    from prometheus_client.parser import text_string_to_metric_families

    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
            for s in family.samples if s.name == name}


def test_a_refreshed_user_reads_back_as_their_last_recommendation_event(pipeline, serve, run):
    event = refresh_user(pipeline, run)
    base, metrics = serve()
    status, headers, user = get(f"{base}/v1/users/u1")
    assert status == 200 and headers["Content-Type"] == "application/json"
    jsonschema.Draft202012Validator(SCHEMA).validate(user)
    for field in ("user_id", "version", "items", "interests", "next_action", "model_version", "last_event_ts"):
        assert user[field] == event[field], field
    assert user["version"] == 3 and user["interests"] == ["current", "text"]
    assert user["drift"] is None and user["updated_at"] >= NOW
    for name, interest in user["interest_profile"].items():
        assert interest["version"] == event["interest_profile"][name]["version"], name
        assert "vector" not in interest  # only when asked
    assert user["interest_profile"]["long_term"]["version"] == 2
    assert user["interest_profile"]["text"]["texts"] == event["interest_profile"]["text"]["texts"] == 1
    assert user["interest_profile"]["categories"]["top"] == event["interest_profile"]["categories"]["top"]
    assert samples(metrics, "iu_api_requests_total") == {(("status", "200"),): 1.0}
    assert samples(metrics, "iu_api_seconds_count") == {(): 1.0}


def test_vectors_come_only_when_asked_and_equal_the_events(pipeline, serve, run):
    event = refresh_user(pipeline, run)
    base, _ = serve()
    status, _, user = get(f"{base}/v1/users/u1?vectors=true")
    assert status == 200
    jsonschema.Draft202012Validator(SCHEMA).validate(user)
    for name in ("current", "long_term", "session"):
        vector = user["interest_profile"][name]["vector"]
        assert vector == event["interest_profile"][name]["vector"]
        assert len(vector) == pipeline.refresher.encoder.dim
    assert "vector" not in get(f"{base}/v1/users/u1?vectors=false")[2]["interest_profile"]["current"]
    status, _, body = get(f"{base}/v1/users/u1?vectors=maybe")
    assert status == 400 and "vectors" in body["error"]


def test_unknown_users_malformed_ids_and_other_paths_are_json_errors(serve):
    base, metrics = serve()
    status, _, body = get(f"{base}/v1/users/nobody")
    assert status == 404 and "'nobody'" in body["error"] and "not refreshed" in body["error"]
    # An id may hold '/' (as events allow): it is an unknown user, not a malformed id or another path.
    assert get(f"{base}/v1/users/a/b")[0] == get(f"{base}/v1/users/a%2Fb")[0] == 404
    for bad in ("u%20b", "a%7Bb%7D", "x" * 129, "", "caf%C3%A9"):
        status, _, body = get(f"{base}/v1/users/{bad}")
        assert status == 400 and "user id must be" in body["error"], bad
    status, _, body = get(f"{base}/v1/recommendations")
    assert status == 404 and "/v1/users/" in body["error"]
    assert samples(metrics, "iu_api_requests_total") == {(("status", "404"),): 4.0, (("status", "400"),): 5.0}


def test_the_connection_is_kept_alive_between_requests_without_waiting_on_acks(serve):
    base, _ = serve()
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    try:
        for path in ("/v1/users/nobody", "/metrics", "/v1/users/x%20y"):
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            assert response.status in (404, 200, 400) and not response.will_close
        started = time.perf_counter()
        for _ in range(25):
            connection.request("GET", "/v1/users/nobody")
            connection.getresponse().read()
        # With Nagle on, each body would wait for the client's delayed ACK: 40 ms a request, 1 s in all.
        assert time.perf_counter() - started < 0.75
    finally:
        connection.close()


def test_a_token_is_required_once_configured(pipeline, serve, run):
    refresh_user(pipeline, run)
    base, metrics = serve(token=TOKEN)
    for token in (None, "wrong-token", TOKEN + "x"):
        status, headers, body = get(f"{base}/v1/users/u1", token)
        assert status == 401 and "error" in body and headers["WWW-Authenticate"].startswith("Bearer ")
    # Refused before the id is looked at: a stranger cannot probe which ids are valid or known.
    assert get(f"{base}/v1/users/x%20y")[0] == 401
    request = urllib.request.Request(f"{base}/v1/users/u1", headers={"Authorization": f"Basic {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(request, timeout=10)
    status, _, user = get(f"{base}/v1/users/u1", TOKEN)
    assert status == 200 and user["user_id"] == "u1"
    assert samples(metrics, "iu_api_requests_total") == {(("status", "401"),): 5.0, (("status", "200"),): 1.0}


def test_redis_out_of_reach_is_a_503_not_a_dropped_connection():
    api = ReadApi(Reader.from_url("redis://127.0.0.1:1/0"), Metrics().registry)
    status, body, _ = api("/v1/users/u1", None)
    assert status == 503 and "Redis" in orjson.loads(body)["error"]

    async def on_a_loop():
        api = ReadApi(AsyncReader.from_url("redis://127.0.0.1:1/0"), Metrics().registry)
        try:
            return await api.answer("/v1/users/u1", None)
        finally:
            await api.reader.close()

    status, body, _ = asyncio.run(on_a_loop())
    assert status == 503 and "Redis" in orjson.loads(body)["error"]


def test_the_token_setting_is_a_secret_and_an_empty_one_is_refused():
    import argparse

    from streams.settings import Settings, add_arguments, secret_env, settings_argv, settings_from_args

    def parse(argv, environ):
        parser = argparse.ArgumentParser()
        add_arguments(parser, environ)
        return settings_from_args(parser.parse_args(argv))

    assert parse([], {}).api_token is None
    settings = parse([], {"IU_API_TOKEN": TOKEN})
    assert settings.api_token == TOKEN and TOKEN not in repr(settings)
    assert TOKEN not in " ".join(settings_argv(settings)) and secret_env(settings)["IU_API_TOKEN"] == TOKEN
    assert parse(settings_argv(settings), secret_env(settings)) == settings
    for bad in ("", "two words", "semi;colon"):
        with pytest.raises(ValueError, match="--api-token") as refused:
            parse(["--api-token", bad], {})
        assert not bad or bad not in str(refused.value)  # a secret is never echoed
    assert Settings().api_token is None


def test_the_read_api_runs_as_a_process_of_its_own_and_stops_on_sigterm(pipeline, store, redis_url, run, tmp_path):
    import signal
    import subprocess
    import sys

    from streams.embedded import free_port
    from streams.harness import wait_ready

    if isinstance(store.client, RedisCluster):
        pytest.skip("the single server is enough: the process reads through the same Reader")
    expected = refresh_user(pipeline, run)
    port = free_port()
    with open(tmp_path / "read-api.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "streams", "read-api", "--redis", redis_url,
                                    "--key-prefix", store.keys.prefix, "--metrics-port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(port, timeout=60)
        status, _, body = get(f"http://127.0.0.1:{port}/v1/users/u1")
        assert status == 200 and body["version"] == expected["version"] and body["items"] == expected["items"]
        assert get(f"http://127.0.0.1:{port}/v1/users/nobody")[0] == 404
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert "read API stopped" in (tmp_path / "read-api.log").read_text()


@pytest.fixture()
def loop_port(redis_url):
    """The port of a `ReadServer` (the read-api process's server) on the single Valkey."""
    with event_loop_server(redis_url, False, KeySpace(), Metrics().registry, None) as port:
        yield port


def exchange(port, data, answers):
    """Send ``data`` on a new connection and end it; the answers read back as (status, headers, body), one
    for each flag in ``answers`` (True: a HEAD request's, no body), and whether the server then closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        stream = sock.makefile("rb")
        read = []
        for head_only in answers:
            status = int(stream.readline().split()[1])
            headers = {}
            while (line := stream.readline().decode("latin-1").strip()):
                name, _, value = line.partition(":")
                headers[name.lower()] = value.strip()
            body = b"" if head_only else stream.read(int(headers["content-length"]))
            read.append((status, headers, body))
        closed = stream.read(1) == b""  # blocks until the server closes (or the 10 s timeout fails the test)
        return read, closed


def test_the_event_loop_server_answers_pipelined_requests_in_order(loop_port):
    requests = (b"GET /v1/users/nobody HTTP/1.1\r\nHost: t\r\n\r\n"
                b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /v1/users/x%20y HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    (missing, head, bad, metrics), closed = exchange(loop_port, requests, (False, True, False, False))
    assert missing[0] == 404 and "'nobody'" in orjson.loads(missing[2])["error"]
    assert head[0] == 200 and head[1]["content-length"] == "3" and head[2] == b""  # HEAD: the length, no body
    assert bad[0] == 400 and "user id must be" in orjson.loads(bad[2])["error"]
    assert metrics[0] == 200 and b"iu_api_requests_total" in metrics[2] and metrics[1]["connection"] == "close"
    assert closed and all("date" in headers for _, headers, _ in (missing, head, bad, metrics))


def test_http_10_keeps_the_connection_only_when_asked(loop_port):
    (answer,), closed = exchange(loop_port, b"GET /healthz HTTP/1.0\r\n\r\n", (False,))
    assert answer[0] == 200 and answer[2] == b"ok\n" and closed
    asked = b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /readyz HTTP/1.0\r\n\r\n"
    (first, second), closed = exchange(loop_port, asked, (False, False))
    assert first[1]["connection"] == "keep-alive" and second[0] == 503 and closed  # not ready: a bare Health


@pytest.mark.parametrize("request_bytes, status, reason", [
    (b"POST /v1/users/u1 HTTP/1.1\r\nHost: t\r\n\r\n", 405, "GET and HEAD"),
    (b"GET /v1/users/u1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400, "without one"),
    (b"GET /v1/users/u1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "without one"),
    (b"hello there\r\n\r\n", 400, "malformed request line"),
    (b"GET /v1/users/u1 HTTP/2.0\r\n\r\n", 400, "malformed request line"),
    (b"GET /v1/users/u1 HTTP/1.1\r\nno colon here\r\n\r\n", 400, "malformed header line"),
    (b"GET /v1/users/u1 HTTP/1.1\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n", 431, "over 16384 bytes"),
])
def test_what_the_event_loop_server_does_not_take_gets_a_status_and_the_connection_closed(
        loop_port, request_bytes, status, reason):
    (answer,), closed = exchange(loop_port, request_bytes, (False,))
    assert answer[0] == status and reason in answer[2].decode() and answer[1]["connection"] == "close" and closed
    if status == 405:
        assert answer[1]["allow"] == "GET, HEAD"


def test_the_read_api_process_names_the_port_it_cannot_serve_on(redis_url):
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "streams", "read-api", "--redis", redis_url,
                                 "--metrics-port", str(port)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"interest-updater: error: --metrics-port {port} (IU_METRICS_PORT): cannot serve the read API" \
        in result.stderr
