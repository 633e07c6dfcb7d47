"""A connection's answer bytes: a request thread writes them without ever waiting for the client,
and the worker's poller thread sends what the socket did not take.

    request thread (gunicorn's Response)       Outbox                     poller thread
    ------------------------------------       ------                     -------------
    sendall(head), sendall(body) ...   ---->   send() what the socket     finish_request:
      never blocks: the socket is                takes at once; keep the    pending? wait for
      non-blocking, the rest is kept             rest, in order             writable, flush();
    returns, free for the next request                                     no progress for
                                                                           SEND_TIMEOUT_S, or
                                                                           over the worker's
                                                                           MAX_UNSENT_BYTES:
                                                                           close

gthread's request threads wrote with sendall on a blocking socket, so a client that never reads
held a thread as long as it liked, and a few hundred such clients held nearly every thread
(issue 23, item 1; docs/performance.md). Here the thread writes once, without waiting, while it
owns the connection (the poller does not touch it then), and hands the remainder to the poller,
which owns it from there. The thread's own write keeps the common case, an answer the socket
takes whole, free of a hand-off: the poller thread may be slow to wake under load
(docs/performance.md), and every answer would pay it.
"""
import socket
from collections import deque
from typing import Any, BinaryIO

SENDFILE_BLOCK = 64 * 1024


class Outbox:
    """Stands in for a connection's socket in a request thread: writes never block, and closing
    only marks the connection to be closed by its owner."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._chunks: deque[bytes | memoryview] = deque()
        self.pending = 0  # bytes written and not yet sent
        self.closed = False  # the request thread asked to close the connection

    def sendall(self, data: bytes | memoryview) -> None:
        """Send what the socket takes now; keep the rest for the poller, in order."""
        if not self._chunks:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self._chunks.append(bytes(data))
        self.pending += len(data)

    def send(self, data: bytes | memoryview) -> int:
        """sendall(data), and all of it counts as sent."""
        self.sendall(data)
        return len(data)

    def sendfile(self, file: BinaryIO, offset: int = 0, count: int | None = None) -> None:
        """Write a file's bytes as sendall does (gunicorn's wsgi.file_wrapper)."""
        file.seek(offset)
        left = count
        while left is None or left > 0:
            block = file.read(SENDFILE_BLOCK if left is None else min(left, SENDFILE_BLOCK))
            if not block:
                break
            self.sendall(block)
            if left is not None:
                left -= len(block)

    def flush(self) -> int:
        """Send kept bytes until the socket takes no more (poller thread); return how many were
        sent. Raises OSError when the client is gone."""
        sent_total = 0
        while self._chunks:
            chunk = self._chunks[0]
            try:
                sent = self._sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                break
            sent_total += sent
            if sent < len(chunk):
                self._chunks[0] = memoryview(chunk)[sent:]
                break
            self._chunks.popleft()
        self.pending -= sent_total
        return sent_total

    def close(self) -> None:
        """Mark the connection to be closed once its answer is sent."""
        self.closed = True

    def shutdown(self, how: int) -> None:
        """As close(): the connection's owner shuts it down."""
        self.closed = True

    def recv(self, size: int) -> bytes:
        """Nothing: a request thread reads no socket (gunicorn's close_graceful drains with it)."""
        return b""

    def setblocking(self, flag: bool) -> None:
        """Nothing: the socket stays non-blocking."""

    def settimeout(self, timeout: float | None) -> None:
        """Nothing: writes never wait."""

    def gettimeout(self) -> None:
        """No timeout: writes never wait."""
        return None

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self._sock.fileno()

    def getpeername(self) -> Any:
        """The client's address."""
        return self._sock.getpeername()

    def getsockname(self) -> Any:
        """This end's address."""
        return self._sock.getsockname()
