"""A request read whole in the worker's poller thread, before any request thread sees it.

    poller thread (runtime/worker.py)                     RequestReader of one connection
    ---------------------------------                     -------------------------------
    accept, or a kept-alive connection back   --------->  waiting for a first byte (IDLE)
    readable: recv what is there, feed()      --------->  head: until CRLF CRLF, at most
                                                            READ_MAX_HEAD_BYTES (else 431)
                                                          body: Content-Length bytes, or
                                                            chunks to the last (bad size: 400;
                                                            past MAX_BODY_BYTES: 413)
    COMPLETE: a request thread gets the bytes <---------  the request, and anything pipelined
    every turn: expired() past its deadline   --------->  408 (or a plain close if it sent
                                                            nothing), logged and counted once

gthread waits up to 5 s in a request thread for a new connection's first byte, then reads the
head and body with a blocking socket and no deadline, so each slow client holds a thread for as
long as it likes (issue 15). Servers trusted without a proxy in front read the request off their
request threads and bound how long that may take: Apache's mod_reqtimeout (header=20-40,
MinRate=500 body=20,MinRate=500), nginx's client_header_timeout / client_body_timeout, Puma's
reactor, waitress's channels. The deadlines here are mod_reqtimeout's: the head within
READ_HEAD_TIMEOUT_S of its first byte, extended by a second for each READ_MIN_RATE_BPS bytes
received, up to READ_HEAD_MAX_S; the body likewise from the end of the head, up to
READ_BODY_MAX_S. A connection that sends nothing is closed after READ_IDLE_TIMEOUT_S (new) or
KEEPALIVE (kept alive).

Only the framing is read here; the request is parsed by gunicorn's parser in a request thread,
which rejects what this module lets through unframed (two Content-Lengths, Content-Length with
Transfer-Encoding, a Transfer-Encoding that does not end in chunked: 400, as before).
"""
import re
from dataclasses import dataclass

# A chunk size of more hex digits than this cannot be a size within any body limit here.
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
_CHUNK_LINE_BYTES = 1024  # a chunk-size line with its extensions
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


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


class RequestReader:
    """The bytes of a connection's next request as they arrive, and the deadline to finish by."""

    def __init__(self, limits, now, data=b"", idle_s=None):
        self._limits = limits
        self.buf = bytearray()
        self.phase = "idle"
        self.deadline = now + (limits.idle_s if idle_s is None else idle_s)
        self.complete_at = None  # where the request ends in buf, once it is complete
        self.send_continue = False  # the client waits for "100 Continue" before its body
        self._phase_start = now
        self._head_end = None
        self._body_end = None  # Content-Length framing: where the body ends
        self._chunk_at = None  # chunked framing: where the next chunk-size line starts
        self._chunked_bytes = 0  # chunked framing: the sizes of the chunks so far
        self._searched = 0  # the head's end is not before this
        if data:
            self.feed(data, now)

    @property
    def received(self):
        """Whether any byte of the request has arrived."""
        return bool(self.buf)

    def feed(self, data, now):
        """Add bytes read from the socket; return whether the request is now complete. Raises
        Refusal for a head or body past its limit or a bad chunk size."""
        if self.phase == "idle":
            self.phase, self._phase_start = "head", now
        self.buf += data
        if self.phase == "head":
            self._read_head(now)
        if self.phase == "body":
            self._read_body()
        if self.complete_at is None:
            self.deadline = self._deadline(now)
        return self.complete_at is not None

    def take_continue(self):
        """The interim answer to send now, once (b"" if none is due)."""
        if not self.send_continue:
            return b""
        self.send_continue = False
        return _CONTINUE

    def _deadline(self, now):
        limits = self._limits
        if self.phase == "head":
            base, most, received = limits.head_s, limits.head_max_s, len(self.buf)
        else:
            base, most, received = limits.body_s, limits.body_max_s, len(self.buf) - self._head_end
        return self._phase_start + min(most, base + received / limits.min_rate_bps)

    def _read_head(self, now):
        # Search only what arrived since the last search (and 3 bytes before): a head sent a
        # byte at a time is searched once, not once per byte.
        end = self.buf.find(b"\r\n\r\n", self._searched)
        self._searched = max(0, len(self.buf) - 3)
        if (end + 4 if end >= 0 else len(self.buf)) > self._limits.max_head_bytes:
            raise Refusal(431, f"the request head is over {self._limits.max_head_bytes} bytes",
                          "head_too_large")
        if end < 0:
            return
        self._head_end = end + 4
        framing, length, expects_continue = _framing(bytes(self.buf[:end]))
        if framing is None:  # no body, or framing gunicorn's parser will refuse
            self.complete_at = self._head_end
            return
        if framing == "length" and length > self._limits.max_body_bytes:
            raise self._body_too_large()
        if expects_continue and len(self.buf) == self._head_end:
            self.send_continue = True
            # Answered here, so gunicorn must not answer it again: the line goes.
            self._drop_expect_line()
        self.phase, self._phase_start = "body", now
        if framing == "length":
            self._body_end = self._head_end + length
        else:
            self._chunk_at = self._head_end

    def _read_body(self):
        if self._body_end is not None:
            if len(self.buf) >= self._body_end:
                self.complete_at = self._body_end
            return
        while self.complete_at is None:
            line_end = self.buf.find(b"\r\n", self._chunk_at)
            if line_end < 0:
                if len(self.buf) - self._chunk_at > _CHUNK_LINE_BYTES:
                    raise Refusal(400, "a chunk-size line is too long", "bad_chunk")
                return
            size_text = bytes(self.buf[self._chunk_at:line_end]).split(b";", 1)[0].strip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise Refusal(400, f"bad chunk size {size_text[:20]!r}: expected up to 15 hex "
                                   "digits", "bad_chunk")
            size = int(size_text, 16)
            limit = self._limits.max_body_bytes
            if size > limit:
                raise Refusal(400, f"a chunk of {size} bytes is over the body limit, {limit}",
                              "bad_chunk")
            if self._chunked_bytes + size > limit:
                raise self._body_too_large()
            if size == 0:  # the last chunk, then trailer fields and an empty line
                if self.buf[line_end + 2:line_end + 4] == b"\r\n":
                    self.complete_at = line_end + 4
                elif (trailer_end := self.buf.find(b"\r\n\r\n", line_end)) >= 0:
                    self.complete_at = trailer_end + 4
                elif len(self.buf) - line_end > self._limits.max_head_bytes:
                    raise Refusal(431, "the trailer fields are too large", "head_too_large")
                return
            data_end = line_end + 2 + size
            if len(self.buf) < data_end + 2:
                return
            self._chunked_bytes += size
            self._chunk_at = data_end + 2

    def _body_too_large(self):
        return Refusal(413, f"the body is too large: the limit is "
                            f"{self._limits.max_body_bytes} bytes", "body_too_large")

    def _drop_expect_line(self):
        head = bytes(self.buf[:self._head_end])
        kept = b"\r\n".join(line for line in head[:-4].split(b"\r\n")
                            if not line.lower().startswith(b"expect:"))
        self.buf[:self._head_end] = kept + b"\r\n\r\n"
        self._head_end = len(kept) + 4


def _framing(head):
    """("length", n, expects_continue), ("chunked", None, ...) or (None, None, False) when the
    request has no body, or framing that gunicorn's parser refuses (it then answers 400)."""
    lines = head.split(b"\r\n")
    version = lines[0].rsplit(b" ", 1)[-1]
    lengths, codings, expects = [], [], False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            return None, None, False
        name = name.lower()
        if name == b"content-length":
            lengths.append(value.strip(b" \t"))
        elif name == b"transfer-encoding":
            codings += [c.strip(b" \t").lower() for c in value.split(b",")]
        elif name == b"expect":
            expects = value.strip(b" \t").lower() == b"100-continue"
    expects = expects and version == b"HTTP/1.1"
    if codings:
        if lengths or codings[-1] != b"chunked" or version != b"HTTP/1.1":
            return None, None, False
        return "chunked", None, expects
    if len(lengths) != 1 or not lengths[0].isdigit():
        return None, None, False
    length = int(lengths[0])
    return ("length", length, expects) if length else (None, None, False)
