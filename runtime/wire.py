"""HTTP/1 on the wire, in one place: how a request is framed and checked as its bytes arrive
(llhttp), and the bytes of the answers the poller thread writes without gunicorn.

    poller thread (runtime/channel.py)                RequestReader of one connection
    ---------------------------------                 -------------------------------
    accept, or a connection answered      --------->  waiting for a first byte (idle)
    readable: recv what is there, feed()  --------->  llhttp (httptools) parses a piece at a
                                                        time: head, then the body, decoded
                                                        (Content-Length, or chunks with their
                                                        extensions and trailers), counting
                                                        every byte on the wire against the
                                                        limits: 431, 413; bad syntax 400, an
                                                        unknown method 501, a version 505
    a Request is ready: take() it        <---------   method, target, headers, decoded body;
      canonical(): the bytes gunicorn's                what was pipelined behind it waits,
      parser reads (Content-Length only)              unparsed past a piece, for its turn
    every sweep: past its deadline        --------->  408 (or a plain close if it sent nothing)

One framing (issue 23, item 2). The worker used to find where a request ends with its own
framing code here, then gunicorn's parser parsed the same bytes again with its own: where the two
disagreed (a chunk size "3   ", data not followed by CRLF, a trailer line without a colon) a
request got a 500 with a traceback or two answers (200, then 400: a request-smuggling primitive
behind a proxy), and gunicorn's chunked reader took time in the square of the body's size
(docs/security.md). Now llhttp, Node.js's parser, strict by default, is the
only one that reads the wire; gunicorn's parser gets a canonical copy of one request with its
decoded body framed by Content-Length (Request.canonical), so it cannot see framing of its own.
httptools is the binding uvicorn uses; h11 (pure Python) would take several microseconds a
chunk, and gunicorn's own parser is the one being replaced; llhttp's time is linear in the
bytes (docs/security.md).

Deadlines (issue 15) are Apache mod_reqtimeout's: the head within READ_HEAD_TIMEOUT_S of its
first byte, extended by a second for each READ_MIN_RATE_BPS bytes received, up to
READ_HEAD_MAX_S; the body likewise from the end of the head, up to READ_BODY_MAX_S. A connection
that sends nothing is closed after READ_IDLE_TIMEOUT_S (new) or KEEPALIVE (kept alive).

Raw answers. What the poller thread writes itself, without gunicorn (the 408/400/413/431/501/505
above, a 503 of runtime/overload.py, gunicorn's parser refusing a request), is built here as a
JSON {"error", "status"} body like app.py's errors, with a request id.
"""
from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import NamedTuple

import httptools

import telemetry
from runtime.clock import Monotonic

# llhttp parses this much at a time (HEAD_FEED_BYTES until a request's head is in): what is
# pipelined behind a complete request waits unparsed beyond it, and the limits are checked at
# least this often. A larger piece of pipelined requests would make Request objects ahead of
# their turn, which stayed with the worker after their connections closed (docs/security.md).
FEED_BYTES = 8192
HEAD_FEED_BYTES = 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_VERSIONS = ("1.0", "1.1")
# Framing and hop-by-hop fields that Request.canonical sets itself.
_REFRAMED = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})
Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Limits:
    """How much a request may hold and how long reading it may take (Config's READ_*)."""

    idle_s: float
    head_s: float
    head_max_s: float
    body_s: float
    body_max_s: float
    min_rate_bps: float
    max_head_bytes: int
    max_body_bytes: int

    @classmethod
    def from_settings(cls, settings: Mapping[str, float]) -> Limits:
        """The limits of config.py's settings (a dict, or app.config)."""
        return cls(*(settings[name] for name in (  # type: ignore[arg-type]
            "READ_IDLE_TIMEOUT_S", "READ_HEAD_TIMEOUT_S", "READ_HEAD_MAX_S", "READ_BODY_TIMEOUT_S",
            "READ_BODY_MAX_S", "READ_MIN_RATE_BPS", "READ_MAX_HEAD_BYTES", "MAX_BODY_BYTES")))

    def deadline(self, phase: str, start: Monotonic, received: int) -> Monotonic | None:
        """When the head or body begun at `start`, `received` bytes in, must be whole (Apache
        mod_reqtimeout's rule); None while idle."""
        if phase == "body":
            base, most = self.body_s, self.body_max_s
        elif phase == "head":
            base, most = self.head_s, self.head_max_s
        else:
            return None
        return Monotonic(start + min(most, base + received / self.min_rate_bps))


class Refusal(Exception):
    """A request refused while it is read: the status to answer, why, and the metric's reason."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass
class Request:
    """One request as llhttp parsed it, its body decoded."""

    method: bytes
    target: bytes
    version: str
    headers: Headers
    body: bytes = b""
    keep_alive: bool = True
    upgrade: bool = False  # asked to switch protocols: answered, then the connection closes
    framed: bool = False  # it had Content-Length or Transfer-Encoding
    pipelined: bool = False  # completed from bytes that waited behind another

    def header(self, name: bytes) -> bytes | None:
        """The value of the field `name` (lower-case bytes), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def head_size(self) -> int:
        """About how many bytes its head took on the wire: its line and fields, CRLFs."""
        return (len(self.method) + len(self.target) + 12 + 2
                + sum(len(name) + len(value) + 4 for name, value in self.headers))

    @property
    def path(self) -> str:
        """The target's path, as text."""
        return self.target.partition(b"?")[0].decode("latin-1")

    @property
    def plain_get(self) -> bool:
        """A keep-alive HTTP/1.1 GET without a body: what the poller may answer itself."""
        return (self.method == b"GET" and self.version == "1.1" and not self.body
                and self.keep_alive and not self.upgrade)

    def canonical(self) -> bytes:
        """The request as gunicorn's parser reads it: the same line and fields, its body framed
        by Content-Length alone, and Connection: close if it asked for an upgrade."""
        dropped = _REFRAMED | {b"connection"} if self.upgrade else _REFRAMED
        lines = [b"%s %s HTTP/%s" % (self.method, self.target, self.version.encode())]
        lines += [b"%s: %s" % (name, value) for name, value in self.headers
                  if name.lower() not in dropped]
        if self.framed or self.body:
            lines.append(b"Content-Length: %d" % len(self.body))
        if self.upgrade:
            lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


class Framing(NamedTuple):
    """What a request's head says of its body, once checked against the limits."""

    length: int | None  # Content-Length, if it had one
    chunked: bool
    send_continue: bool  # the client waits for "100 Continue" before its body

    @classmethod
    def of_head(cls, version: str, headers: Headers, limits: Limits) -> Framing:
        """Check what llhttp leaves to the server (the version, one Host, the body's size)."""
        if version not in _VERSIONS:
            raise Refusal(505, f"HTTP/{version} is not supported: send HTTP/1.1 or 1.0",
                          "bad_request")
        hosts, fields = 0, {}
        for name, value in headers:
            name = name.lower()
            if name == b"host":
                hosts += 1
            elif name in (b"content-length", b"transfer-encoding", b"expect"):
                fields[name] = value
        if hosts > 1 or (version == "1.1" and hosts == 0):
            # RFC 9112, section 3.2: a request without exactly one Host is a 400.
            raise Refusal(400, "an HTTP/1.1 request needs exactly one Host field", "bad_request")
        raw_length = fields.get(b"content-length")
        length = None if raw_length is None else int(raw_length)
        if length is not None and length > limits.max_body_bytes:
            raise body_too_large(limits)
        chunked = b"transfer-encoding" in fields
        return cls(length, chunked, send_continue=(
            (chunked or bool(length)) and version == "1.1"
            and fields.get(b"expect", b"").lower() == b"100-continue"))


class _Message:
    """llhttp's callbacks (httptools calls them during feed_data): the parts of each request as
    they are parsed, its bytes on the wire counted against the limits, until it is whole."""

    def __init__(self, limits: Limits, now: Monotonic) -> None:
        self.limits = limits
        self.phase = "idle"
        self.started = now  # when the phase began (a pipelined request's when its turn came)
        self.now = now
        self.ready: deque[Request] = deque()  # complete requests, oldest first
        self.send_continue = False  # the client waits for "100 Continue" before its body
        self.head_bytes = 0  # on the wire, of the request being read
        self.body_bytes = 0
        # llhttp hands over each piece of the decoded body; one bytearray holds them, not an
        # object a piece: freed whole, a large one goes back to the system.
        self.body = bytearray()
        self.on_body = self.body.extend
        self._headers: Headers = []
        self._target = b""
        self._request: Request | None = None
        self._chunked = False
        self.parser = httptools.HttpRequestParser(self)  # it looks up the callbacks now

    def count(self, before: str, size: int) -> None:
        """Count a piece of `size` bytes parsed in phase `before`, and check the limits: every
        byte on the wire counts, framing included."""
        if self.phase == "head":
            self.head_bytes += size
        elif self.phase == "body":
            # llhttp does not say where in a piece the head ended: the head's size is counted
            # from its parts.
            assert self._request is not None
            self.body_bytes += size if before == "body" else max(
                0, self.head_bytes + size - self._request.head_size())
        # A Content-Length body was checked whole against the limit with the head; a chunked
        # one is counted on the wire: sizes, extensions, CRLFs and trailers.
        if self._chunked and self.body_bytes > self.limits.max_body_bytes:
            raise body_too_large(self.limits)
        if self.phase == "head" and self.head_bytes > self.limits.max_head_bytes:
            raise Refusal(431, f"the request head is over {self.limits.max_head_bytes} bytes",
                          "head_too_large")

    def deadline(self) -> Monotonic | None:
        """When the head or body being read must be whole; None while idle."""
        received = self.body_bytes if self.phase == "body" else self.head_bytes
        return self.limits.deadline(self.phase, self.started, received)

    def close(self) -> None:
        """Free the bodies and requests held, and the parser, which refers back to this."""
        self.body.clear()
        self.ready.clear()
        del self.parser

    def on_message_begin(self) -> None:
        """A request's first byte."""
        self.phase, self.started = "head", self.now
        self._headers = []
        self._target = b""

    def on_url(self, url: bytes) -> None:
        """A piece of the request target."""
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """A field of the head (or of the trailer, which is read and dropped)."""
        if self.phase == "head":
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        """The head is in: check it, and expect the body."""
        version = self.parser.get_http_version()
        framing = Framing.of_head(version, self._headers, self.limits)
        self.send_continue = framing.send_continue
        self._request = Request(self.parser.get_method(), self._target, version, self._headers,
                                framed=framing.length is not None or framing.chunked)
        self.phase, self.started = "body", self.now
        self._chunked = framing.chunked
        self.body_bytes = 0

    def on_message_complete(self) -> None:
        """The request is whole: it is ready, and the next one starts from nothing."""
        request = self._request
        assert request is not None
        request.body = bytes(self.body)
        request.keep_alive = self.parser.should_keep_alive()
        request.upgrade = self.parser.should_upgrade()
        self.body.clear()
        self.ready.append(request)
        self.send_continue = False
        self.phase = "idle"
        self._chunked = False
        self.head_bytes = self.body_bytes = 0


class RequestReader:
    """A connection's requests as their bytes arrive, and the deadline to finish the next by."""

    def __init__(self, limits: Limits, now: Monotonic, idle_s: float | None = None) -> None:
        self.deadline = Monotonic(now + (limits.idle_s if idle_s is None else idle_s))
        self._pending = bytearray()  # received, not yet parsed
        self._upgraded = False
        self._message = _Message(limits, now)  # closed with the reader, never used after
        self._closed = False

    @property
    def phase(self) -> str:
        """What the next request's bytes are: "idle" (none yet), "head" or "body"."""
        return self._message.phase

    @property
    def received(self) -> bool:
        """Whether any byte of the next request has arrived."""
        return self.phase != "idle" or bool(self._pending)

    @property
    def buffered(self) -> int:
        """Bytes this reader holds: received and not parsed, and the body read so far."""
        return len(self._pending) + self._message.body_bytes

    def feed(self, data: bytes | memoryview, now: Monotonic) -> bool:
        """Add bytes read from the socket; return whether a request is complete. Raises Refusal
        for a malformed request or one past its limits."""
        self._pending += data
        return self.parse(now)

    def parse(self, now: Monotonic) -> bool:
        """Parse what is pending while no request is complete; return whether one is."""
        message = self._message
        message.now = now
        while not message.ready and self._pending and not self._upgraded:
            size = FEED_BYTES if message.phase == "body" else HEAD_FEED_BYTES
            piece = bytes(self._pending[:size])
            del self._pending[:size]
            before = message.phase
            self._feed(piece)
            if not message.ready:
                message.count(before, len(piece))
        if self._upgraded:
            self._pending.clear()  # what follows an upgrade request is not HTTP/1
        if not message.ready:
            self.deadline = message.deadline() or self.deadline
        return bool(message.ready)

    def take(self) -> Request:
        """The oldest complete request."""
        return self._message.ready.popleft()

    def resume(self, now: Monotonic, idle_s: float) -> bool:
        """The previous request is answered: the next one's clock starts now (its bytes may have
        waited behind it), and a connection with nothing pending waits `idle_s` for them."""
        self._message.started = now
        self.deadline = Monotonic(now + idle_s)
        complete = self.parse(now)
        for request in self._message.ready:
            request.pipelined = True
        return complete

    def close(self) -> None:
        """Free what the reader holds now: the parser and its callbacks refer to each other, so
        without this a connection's bytes would wait for the cyclic garbage collector."""
        self._pending.clear()
        if not self._closed:  # a connection's close may come after its lingering close began
            self._closed = True
            self._message.close()

    def take_continue(self) -> bytes:
        """The interim answer to send now, once (b"" if none is due)."""
        message = self._message
        if not message.send_continue:
            return b""
        message.send_continue = False
        return _CONTINUE

    def _feed(self, piece: bytes) -> None:
        try:
            self._message.parser.feed_data(piece)
        except httptools.HttpParserUpgrade:
            self._upgraded = True
        except httptools.HttpParserInvalidMethodError:
            raise Refusal(501, "the method is not one this server knows", "bad_request") from None
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, Refusal):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserError as exc:
            if str(exc) == "Invalid HTTP version":
                raise Refusal(505, "the HTTP version is not supported: send HTTP/1.1 or 1.0",
                              "bad_request") from None
            # llhttp's reason is a fixed text about the request's syntax ("Invalid character in
            # chunk size"), never the request's own bytes.
            raise Refusal(400, f"malformed request: {exc}", "bad_request") from None


def body_too_large(limits: Limits) -> Refusal:
    """The refusal of a body over MAX_BODY_BYTES."""
    return Refusal(413, f"the body is too large: the limit is {limits.max_body_bytes} bytes on "
                        "the wire", "body_too_large")


def json_error(status: int, message: str,
               headers: Sequence[tuple[str, str]] = ()) -> tuple[list[tuple[str, str]], bytes]:
    """(headers, body) of an error answered before Flask, JSON {"error", "status"} as app.py's
    errors are; the caller adds the request id."""
    body = json.dumps({"error": message, "status": status}).encode()
    return [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            *headers], body


def raw_response(status: int, headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    """The bytes of an HTTP/1.1 answer written by the poller thread, without gunicorn."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n{head}\r\n".encode("latin-1") + body


def closing_error(status: int, message: str) -> bytes:
    """The bytes of an error answered without gunicorn that closes the connection, with a new
    request id (the poller's 408/400/413/431/501/505, gunicorn's parser refusing a request)."""
    headers, body = json_error(status, message, [
        (telemetry.REQUEST_ID_HEADER, telemetry.set_request_id(None)), ("Connection", "close")])
    return raw_response(status, headers, body)
