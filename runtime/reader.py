"""A connection's requests read in the worker's poller thread, framed once, before any request
thread sees them.

    poller thread (runtime/worker.py)                 RequestReader of one connection
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
(800 KB in 1-byte chunks: 88 s of CPU). Now llhttp, Node.js's parser, strict by default, is the
only one that reads the wire; gunicorn's parser gets a canonical copy of one request with its
decoded body framed by Content-Length (Request.canonical), so it cannot see framing of its own.
httptools is the binding uvicorn uses; h11 (pure Python) would take several microseconds a
chunk, and gunicorn's own parser is the one being replaced. 1 MB in 1-byte chunks costs llhttp
about 15 ms here (docs/security.md).

Deadlines (issue 15) are Apache mod_reqtimeout's: the head within READ_HEAD_TIMEOUT_S of its
first byte, extended by a second for each READ_MIN_RATE_BPS bytes received, up to
READ_HEAD_MAX_S; the body likewise from the end of the head, up to READ_BODY_MAX_S. A connection
that sends nothing is closed after READ_IDLE_TIMEOUT_S (new) or KEEPALIVE (kept alive).
"""
from collections import deque
from dataclasses import dataclass

import httptools

# llhttp parses this much at a time (HEAD_FEED_BYTES until a request's head is in): what is
# pipelined behind a complete request waits unparsed beyond it, and the limits are checked at
# least this often. llhttp parses all it is given, so a larger piece of pipelined requests
# would make Request objects ahead of their turn: 1000 connections pipelining small GETs held
# 200 each (8 KiB), 100 MB of small objects that stayed with the worker after they closed.
FEED_BYTES = 8192
HEAD_FEED_BYTES = 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_VERSIONS = ("1.0", "1.1")
# Framing and hop-by-hop fields that Request.canonical sets itself.
_REFRAMED = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})


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
    def from_settings(cls, settings):
        """The limits of config.py's settings (a dict, or app.config)."""
        return cls(*(settings[name] for name in (
            "READ_IDLE_TIMEOUT_S", "READ_HEAD_TIMEOUT_S", "READ_HEAD_MAX_S", "READ_BODY_TIMEOUT_S",
            "READ_BODY_MAX_S", "READ_MIN_RATE_BPS", "READ_MAX_HEAD_BYTES", "MAX_BODY_BYTES")))


class Refusal(Exception):
    """A request refused while it is read: the status to answer, why, and the metric's reason."""

    def __init__(self, status, message, reason):
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass
class Request:
    """One request as llhttp parsed it, its body decoded."""

    method: bytes
    target: bytes
    version: str
    headers: list
    body: bytes = b""
    keep_alive: bool = True
    upgrade: bool = False  # asked to switch protocols: answered, then the connection closes
    framed: bool = False  # it had Content-Length or Transfer-Encoding
    pipelined: bool = False  # completed from bytes that waited behind another

    def header(self, name):
        """The value of the field `name` (lower-case bytes), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def head_size(self):
        """About how many bytes its head took on the wire: its line and fields, CRLFs."""
        return (len(self.method) + len(self.target) + 12 + 2
                + sum(len(name) + len(value) + 4 for name, value in self.headers))

    @property
    def path(self):
        """The target's path, as text."""
        return self.target.partition(b"?")[0].decode("latin-1")

    def canonical(self):
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


class RequestReader:
    """A connection's requests as their bytes arrive, and the deadline to finish the next by."""

    def __init__(self, limits, now, idle_s=None):
        self._limits = limits
        self.phase = "idle"
        self.deadline = now + (limits.idle_s if idle_s is None else idle_s)
        self.send_continue = False  # the client waits for "100 Continue" before its body
        self._phase_start = now
        self._pending = bytearray()  # received, not yet parsed
        self._ready = deque()  # complete requests, oldest first
        self.counted = 0  # what the worker counts this reader holding (MAX_BUFFERED_BYTES)
        self._head_bytes = 0  # on the wire, of the request being read
        self._body_bytes = 0
        # llhttp hands over each piece of the decoded body; one bytearray holds them, not an
        # object a piece: freed whole, a large one goes back to the system (worker.py).
        self._body = bytearray()
        self.on_body = self._body.extend
        self._headers = []
        self._upgraded = False
        self._now = now
        self._target = b""
        self._request = None
        self._chunked = False
        self._parser = httptools.HttpRequestParser(self)

    @property
    def received(self):
        """Whether any byte of the next request has arrived."""
        return self.phase != "idle" or bool(self._pending)

    @property
    def buffered(self):
        """Bytes this reader holds: received and not parsed, and the body read so far."""
        return len(self._pending) + self._body_bytes

    def feed(self, data, now):
        """Add bytes read from the socket; return whether a request is complete. Raises Refusal
        for a malformed request or one past its limits."""
        self._pending += data
        return self.parse(now)

    def parse(self, now):
        """Parse what is pending while no request is complete; return whether one is."""
        self._now = now
        while not self._ready and self._pending and not self._upgraded:
            size = FEED_BYTES if self.phase == "body" else HEAD_FEED_BYTES
            piece = bytes(self._pending[:size])
            del self._pending[:size]
            before = self.phase
            self._feed(piece)
            if self._ready:
                break
            if self.phase == "head":
                self._head_bytes += len(piece)
            elif self.phase == "body":
                # llhttp does not say where in a piece the head ended: the head's size is
                # counted from its parts.
                self._body_bytes += len(piece) if before == "body" else max(
                    0, self._head_bytes + len(piece) - self._request.head_size())
            # A Content-Length body was checked whole against the limit with the head; a
            # chunked one is counted on the wire: sizes, extensions, CRLFs and trailers.
            if self._chunked and self._body_bytes > self._limits.max_body_bytes:
                raise self._body_too_large()
            if self.phase == "head" and self._head_bytes > self._limits.max_head_bytes:
                raise Refusal(431, f"the request head is over {self._limits.max_head_bytes} "
                                   "bytes", "head_too_large")
        if self._upgraded:
            self._pending.clear()  # what follows an upgrade request is not HTTP/1
        if not self._ready:
            self.deadline = self._deadline()
        return bool(self._ready)

    def take(self):
        """The oldest complete request."""
        return self._ready.popleft()

    def resume(self, now, idle_s):
        """The previous request is answered: the next one's clock starts now (its bytes may have
        waited behind it), and a connection with nothing pending waits `idle_s` for them."""
        self._phase_start = now
        self.deadline = now + idle_s
        complete = self.parse(now)
        for request in self._ready:
            request.pipelined = True
        return complete

    def close(self):
        """Free what the reader holds now: the parser and the reader refer to each other, so
        without this a connection's bytes would wait for the cyclic garbage collector."""
        self._pending.clear()
        self._body.clear()
        self._ready.clear()
        self._parser = None

    def take_continue(self):
        """The interim answer to send now, once (b"" if none is due)."""
        if not self.send_continue:
            return b""
        self.send_continue = False
        return _CONTINUE

    def _feed(self, piece):
        try:
            self._parser.feed_data(piece)
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

    def _deadline(self):
        limits = self._limits
        if self.phase == "body":
            base, most, received = limits.body_s, limits.body_max_s, self._body_bytes
        elif self.phase == "head":
            base, most, received = limits.head_s, limits.head_max_s, self._head_bytes
        else:
            return self.deadline
        return self._phase_start + min(most, base + received / limits.min_rate_bps)

    # llhttp's callbacks (httptools calls them during feed_data).

    def on_message_begin(self):
        """A request's first byte."""
        self.phase, self._phase_start = "head", self._now
        self._headers = []
        self._target = b""

    def on_url(self, url):
        """A piece of the request target."""
        self._target += url

    def on_header(self, name, value):
        """A field of the head (or of the trailer, which is read and dropped)."""
        if self.phase == "head":
            self._headers.append((name, value))

    def on_headers_complete(self):
        """The head is in: check what llhttp leaves to the server, and expect the body."""
        version = self._parser.get_http_version()
        if version not in _VERSIONS:
            raise Refusal(505, f"HTTP/{version} is not supported: send HTTP/1.1 or 1.0",
                          "bad_request")
        hosts, framing = 0, {}
        for name, value in self._headers:
            name = name.lower()
            if name == b"host":
                hosts += 1
            elif name in (b"content-length", b"transfer-encoding", b"expect"):
                framing[name] = value
        if hosts > 1 or (version == "1.1" and hosts == 0):
            # RFC 9112, section 3.2: a request without exactly one Host is a 400.
            raise Refusal(400, "an HTTP/1.1 request needs exactly one Host field", "bad_request")
        length = framing.get(b"content-length")
        if length is not None and int(length) > self._limits.max_body_bytes:
            raise self._body_too_large()
        has_body = b"transfer-encoding" in framing or (length is not None and int(length) > 0)
        self.send_continue = (has_body and version == "1.1"
                              and framing.get(b"expect", b"").lower() == b"100-continue")
        self._request = Request(self._parser.get_method(), self._target, version, self._headers,
                                framed=length is not None or b"transfer-encoding" in framing)
        self.phase, self._phase_start = "body", self._now
        self._chunked = b"transfer-encoding" in framing
        self._body_bytes = 0

    def on_message_complete(self):
        """The request is whole: it is ready, and the next one starts from nothing."""
        request = self._request
        request.body = bytes(self._body)
        request.keep_alive = self._parser.should_keep_alive()
        request.upgrade = self._parser.should_upgrade()
        self._body.clear()
        self._ready.append(request)
        self.send_continue = False
        self.phase = "idle"
        self._chunked = False
        self._head_bytes = self._body_bytes = 0

    def _body_too_large(self):
        return Refusal(413, f"the body is too large: the limit is "
                            f"{self._limits.max_body_bytes} bytes on the wire", "body_too_large")
