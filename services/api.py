"""The API source: an HTTP GET to a remote JSON API, each thread over a keep-alive connection."""
from __future__ import annotations

import http.client
import json
import math
import socket
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import telemetry
from runtime.clock import Monotonic
from runtime.per_process import PerThread
from services import remaining

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
# What a kept-alive connection that the server closed meanwhile raises on its next use.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class _DeadlineSocket(socket.socket):
    """A socket whose every receive waits only until `deadline`: a socket timeout bounds each
    recv, so an upstream that drips its answer a byte at a time would outlast any deadline
    (issue 23, item 5; docs/performance.md). http.client reads through socket.SocketIO,
    which calls recv_into."""

    deadline = math.inf

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        """recv_into, with a timeout of what is left until the deadline."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the read passed its deadline")
        self.settimeout(left)
        return super().recv_into(buffer, nbytes, flags)


class _DeadlineConnection(http.client.HTTPConnection):
    """An HTTPConnection over a _DeadlineSocket."""

    deadline = math.inf  # the current read's

    def connect(self) -> None:
        """Connect as HTTPConnection does, then make the socket keep the read's deadline."""
        super().connect()
        plain = self.sock
        self.sock = _DeadlineSocket(plain.family, plain.type, plain.proto, plain.detach())
        self.sock.settimeout(self.timeout)
        self.sock.deadline = self.deadline


class ApiSource:
    """GETs one URL per read; every thread keeps its own connection open between reads."""

    name = "api"

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self._https = parts.scheme == "https"
        self._address = (parts.hostname or "", parts.port or (443 if self._https else 80))
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # http.client, one connection per thread, rather than a shared pool (urllib3, requests):
        # a pool's locks and bookkeeping cost a GET about three times the CPU, and every thread
        # that reads the API needs a connection at once anyway (docs/performance.md).
        self._connection = PerThread(self._connect)

    def read(self, deadline: Monotonic) -> Any:
        """Return the API's JSON body; the timeout is what is left of the request's budget."""
        timeout = remaining(deadline)
        conn = self._connection.get()
        reused = conn.sock is not None  # http.client opens its socket on the first request
        try:
            try:
                response, body = self._get(conn, deadline, timeout)
            except _STALE:
                if not reused:
                    raise
                # The server closed the idle connection first; a GET is safe to send again.
                conn.close()
                response, body = self._get(conn, deadline, remaining(deadline))
        except TimeoutError as exc:
            conn.close()
            raise TimeoutError(f"no answer from {self.url} within the deadline") from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ConnectionError(f"{self.url}: {type(exc).__name__}: {exc}") from exc
        if response.status >= 400:
            raise ConnectionError(f"{self.url} answered {response.status} {response.reason}")
        return json.loads(body)

    def _connect(self) -> _DeadlineConnection | http.client.HTTPSConnection:
        # HTTPS keeps a per-recv timeout: an SSLSocket reads in C, past recv_into.
        factory = http.client.HTTPSConnection if self._https else _DeadlineConnection
        return factory(*self._address)

    def _get(self, conn: Any, deadline: Monotonic,
             timeout: float) -> tuple[http.client.HTTPResponse, bytes]:
        conn.timeout, conn.deadline = timeout, deadline
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
            conn.sock.deadline = deadline
        headers = {"Accept": "application/json"}
        trace = telemetry.traceparent()
        if trace:  # the request's W3C trace goes on to the upstream
            headers[telemetry.TRACEPARENT_HEADER] = trace
        conn.request("GET", self._target, headers=headers)
        response = conn.getresponse()
        return response, response.read()

    def check(self, deadline: Monotonic) -> None:
        """The API's host accepts a TCP connection (a GET would wait out its latency)."""
        socket.create_connection(self._address, timeout=remaining(deadline)).close()
