"""``interest-updater read-api``: the read API and the operations endpoints on one event loop.

The worker serves the API from a thread per connection (`streams.metrics.serve_http`):
its event loop is busy with batches, and the stdlib server is enough beside them.
A process that only answers reads does better on one event loop: no GIL handed
between sixteen connection threads on every request, no email-package header
parsing, one write per answer, and Redis read through `state.reader.AsyncReader`
(README, "Read API", has the figures side by side).

It speaks the HTTP/1.1 an API client, a load balancer or a scraper sends: GET
and HEAD, kept-alive connections (an HTTP/1.0 client keeps one only when it
asks), pipelined requests answered in order. What it does not take gets a
status and the connection closed: 400 for a malformed request or one with a
body, 405 for another method, 431 for a head over 16 KiB. An idle connection
is closed after 60 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from http import HTTPStatus
from typing import NamedTuple

from prometheus_client import CollectorRegistry

from streams.metrics import TEXT_PLAIN, Health, ops_answer, ops_hint
from streams.read_api import ReadApi

__all__ = ["ReadServer"]

MAX_HEAD_BYTES = 16 * 1024
IDLE_SECONDS = 60.0
LINGER_SECONDS = 2.0
_WRITE_BUFFER = 256 * 1024  # bytes queued on a connection before the server waits for the client to read


class _Request(NamedTuple):
    method: str
    target: str
    keep_alive: bool
    http10: bool
    authorization: str | None


class _Refused(Exception):
    """A request the server answers with an error status and then closes the connection."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers


class ReadServer:
    """The HTTP server of a read-api process: ``/v1/users/ID``, ``/metrics``, ``/healthz``, ``/readyz``."""

    def __init__(self, api: ReadApi, registry: CollectorRegistry, health: Health) -> None:
        self.api = api
        self.registry = registry
        self.health = health
        self._hint = ops_hint(True)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._date = (0, "")

    async def start(self, port: int, host: str = "0.0.0.0") -> int:
        """Listen on ``port`` (0: a free one); the port listened on. `OSError` when it cannot bind."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD_BYTES)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and close every open connection (answers already written are flushed)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._connections):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE_SECONDS):
                        head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, TimeoutError):
                    return  # the client closed (or went quiet): nothing to answer
                except asyncio.LimitOverrunError:
                    raise _Refused(431, f"the request head is over {MAX_HEAD_BYTES} bytes") from None
                request = _parse(head)
                status, body, content_type, headers = await self._route(request)
                writer.write(self._response(request, status, body, content_type, headers))
                if not request.keep_alive:
                    await writer.drain()
                    return
                if writer.transport.get_write_buffer_size() > _WRITE_BUFFER:
                    await writer.drain()  # a client pipelining without reading: wait for it
        except _Refused as refused:
            body = (refused.args[0] + "\n").encode()
            headers = (*refused.headers, ("Connection", "close"))
            writer.write(_head(refused.status, len(body), TEXT_PLAIN, headers, self._http_date()) + body)
            await _linger(reader, writer)
        except ConnectionError:
            pass  # the client went away mid-answer
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _route(self, request: _Request) -> tuple[int, bytes, str, tuple[tuple[str, str], ...]]:
        if request.target.startswith("/v1/"):
            reply = await self.api.answer(request.target, request.authorization)
            return reply.status, reply.body, "application/json", reply.headers
        status, body, content_type = ops_answer(request.target, self.registry, self.health, self._hint)
        return status, body, content_type, ()

    def _response(self, request: _Request, status: int, body: bytes, content_type: str,
                  headers: tuple[tuple[str, str], ...]) -> bytes:
        if request.http10 and request.keep_alive:
            headers += (("Connection", "keep-alive"),)
        elif not request.keep_alive:
            headers += (("Connection", "close"),)
        head = _head(status, len(body), content_type, headers, self._http_date())
        return head if request.method == "HEAD" else head + body  # one write: Nagle never holds a body back

    def _http_date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:  # formatting a date costs more than the rest of an answer's head
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        return self._date[1]


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Finish sending, then drop what the client still sends until it closes (at most LINGER_SECONDS).

    Closing a socket with unread input resets the connection, and the client
    could then lose an error answer it had not read yet (a head over the limit
    arrives in pieces).
    """
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER_SECONDS):
            while await reader.read(65536):
                pass


def _head(status: int, length: int, content_type: str, headers: tuple[tuple[str, str], ...], date: str) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Date: {date}", f"Content-Type: {content_type}",
             f"Content-Length: {length}", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse(head: bytes) -> _Request:
    """The request in ``head`` (request line and headers); `_Refused` for what this server does not take."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].startswith("/"):
        raise _Refused(400, f"malformed request line {lines[0][:100]!r}: expected 'GET /path HTTP/1.1'")
    method, target, version = parts
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _Refused(400, f"malformed header line {line[:100]!r}")
        fields[name.lower()] = value.strip()
    if method not in ("GET", "HEAD"):
        raise _Refused(405, f"method {method[:20]!r} not allowed: the read API answers GET and HEAD",
                       (("Allow", "GET, HEAD"),))
    if fields.get("content-length", "0") != "0" or "transfer-encoding" in fields:
        raise _Refused(400, "a request with a body: the read API takes GET requests without one")
    tokens = {token.strip().lower() for token in fields.get("connection", "").split(",")}
    http10 = version == "HTTP/1.0"
    keep_alive = "keep-alive" in tokens if http10 else "close" not in tokens
    return _Request(method, target, keep_alive, http10, fields.get("authorization"))
