"""A connection's bytes, both ways, have one owner: the worker's poller thread (issue 23). Each
connection's state is a Channel; Channels reads every request whole under deadlines, sends what a
request thread's answer left, and closes, so no thread ever waits on a client.

    accept --> open: reading  (llhttp, runtime/wire.py; deadlines; MAX_BUFFERED_BYTES)
                 |  whole: hand_off, to the executor        refused, too slow: 4xx, linger
                 v
               a request thread writes the answer to the channel's Outbox (runtime/outbox.py)
                 |  finish_request: answered(keep_alive)
                 v
               sending    (what the socket did not take; SEND_TIMEOUT_S; MAX_UNSENT_BYTES)
                 |  all sent
                 v
               keep-alive: reading the next request (pipelined ones wait their turn unparsed);
               else lingering close (half-closed, drained up to LINGER_S), then closed

Reading ahead. gthread hands a new or kept-alive connection to a request thread, which waits for
its first byte and then reads the head and body with a blocking socket and no deadline: a slow or
silent client holds a thread as long as it likes. Here the poller reads without blocking, answers
408 to a client too slow and 400/413/431/501/505 to a request that cannot be served, and closes a
silent connection; a thread gets a request only once all of it is in memory, and gunicorn's
parser reads its canonical copy, never the socket. Request bytes held are bounded by
MAX_BUFFERED_BYTES a worker (past it, the largest incomplete request is refused). When a worker
holds WORKER_CONNECTIONS, a new connection closes the one that has waited longest for its request,
so idle sockets cannot keep new clients out. A connection answered here is closed as nginx's
lingering close does, so the client reads the answer instead of a reset.

Writing. The poller sends the rest of an answer when the socket is writable, drops a connection
whose client takes nothing for SEND_TIMEOUT_S, and drops those holding the most once a worker
holds MAX_UNSENT_BYTES; only then does it read the connection's next request.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import selectors
import socket
import struct
import termios
import time
from collections.abc import Mapping
from functools import partial
from typing import Any, Protocol

from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn

import telemetry
from runtime.clock import Monotonic, monotonic
from runtime.outbox import Outbox
from runtime.stamps import arrival
from runtime.wire import Limits, Refusal, Request, RequestReader, closing_error

# Read deadlines are checked this often (and the poller wakes this often while a read is open).
SWEEP_S = 0.25
# The kernel takes at most about this many bytes of answers a client has not taken yet
# (TCP_NOTSENT_LOWAT); the rest waits in the Outbox, under SEND_TIMEOUT_S and MAX_UNSENT_BYTES.
# Without it the kernel held up to a send buffer (megabytes) for each client that never reads,
# beyond any budget of ours (issue 23).
KERNEL_UNSENT_BYTES = 64 * 1024
# A burst that held this many request and answer bytes is followed by a malloc_trim once over.
TRIM_AFTER_BYTES = 4 * 1024 * 1024
LINGER_S = 2.0  # how long a connection answered by the poller is drained before it is closed
RECV_BYTES = 256 * 1024


class Worker(Protocol):
    """What Channels needs of the gthread worker that owns it."""

    nr_conns: int  # connections counted against WORKER_CONNECTIONS
    alive: bool
    cfg: Any
    log: Any
    poller: selectors.BaseSelector

    def hand_off(self, channel: Channel, now: Monotonic) -> None:
        """Give the channel's request, read whole by `now`, to a request thread."""


class Channel:
    """One connection this worker holds: gunicorn's TConn, its reader and outbox, the request a
    thread serves, when it arrived, whether to keep the connection after its answer."""

    __slots__ = ("conn", "reader", "outbox", "request", "arrived", "keep_alive", "counted")

    def __init__(self, conn: TConn, limits: Limits, now: Monotonic) -> None:
        self.conn = conn
        self.reader = RequestReader(limits, now)
        self.outbox = Outbox(conn.sock)  # emptied by each answer's sending
        self.request: Request | None = None
        self.arrived = now
        self.keep_alive = False
        self.counted = 0  # request bytes counted against MAX_BUFFERED_BYTES

    @property
    def sock(self) -> socket.socket:
        """The connection's socket."""
        return self.conn.sock

    @property
    def peer(self) -> str:
        """host:port of the client, for the log."""
        client = self.conn.client
        host, port = client[:2] if isinstance(client, tuple) else (client, "")
        return f"{host}:{port}"

    def write(self, data: bytes) -> bool:
        """Write an answer the poller made (a few hundred bytes; a rest goes as any answer's);
        False if the client went away."""
        try:
            self.outbox.sendall(data)
        except OSError:
            return False
        return True

    def send_continue(self) -> None:
        """Send "100 Continue" if the client waits for it before its body."""
        interim = self.reader.take_continue()
        if interim:
            with contextlib.suppress(OSError):  # the read that follows finds the client gone
                self.sock.send(interim)  # 25 bytes on a socket with nothing else to send

    def release(self) -> None:
        """Drop what the connection held for its requests, with its last answer: not when a
        draining close ends, nor when the cyclic garbage collector finds its reader."""
        self.reader.close()
        self.request = None
        self.conn.parser = None

    def reset_on_close(self) -> None:
        """Close with a reset, as nginx's reset_timedout_connection: a plain close would leave
        the unsent bytes, and the FIN behind them, in the kernel for a client that does not
        read."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def unsent_in_kernel(self) -> int:
        """Bytes written that the peer has not acknowledged (SIOCOUTQ); 0 if unknown."""
        try:
            return struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ,
                                                  b"\0" * 4))[0]
        except (OSError, ValueError):
            return 0


class Channels:
    """Every connection of one worker, in its poller thread: reading, sending, closing."""

    def __init__(self, worker: Worker, settings: Mapping[str, Any]) -> None:
        self.worker = worker
        self.settings = settings  # app.config: read when used, as the routes do
        self.limits = Limits.from_settings(settings)
        self._of: dict[TConn, Channel] = {}
        self.scratch = memoryview(bytearray(RECV_BYTES))  # what the last recv read
        self.reading = _Reading(self)
        self.sending = _Sending(self)
        self.closing = _Closing(self)
        self._next_sweep = 0.0
        self._peak_held = 0  # the most request and answer bytes held since the last malloc_trim

    def of(self, conn: TConn) -> Channel:
        """The channel of a connection this worker holds."""
        return self._of[conn]

    def open(self, conn: TConn) -> None:
        """A new connection: read its first request, closing the longest waiting one if this
        worker holds WORKER_CONNECTIONS."""
        channel = self._of[conn] = Channel(conn, self.limits, monotonic())
        with contextlib.suppress(OSError, AttributeError):  # not TCP, or not Linux
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT,
                                 KERNEL_UNSENT_BYTES)
        self.reading.start(channel, self.limits.idle_s)  # TConn left its socket non-blocking
        if self.worker.nr_conns >= self.worker.cfg.worker_connections:
            self.reading.evict_longest_waiting()

    def answered(self, channel: Channel, keep_alive: bool) -> None:
        """The channel's answer is written to its Outbox: send the rest, then go on to its next
        request or close it."""
        channel.keep_alive = keep_alive
        if channel.outbox.pending:  # the client has not taken all of its answer yet
            self.sending.start(channel)
        else:
            self.sent(channel)

    def sent(self, channel: Channel) -> None:
        """The channel's answer is all sent: read its next request (keep-alive), or close it."""
        assert channel.request is not None
        if not channel.keep_alive or channel.request.upgrade:
            self.linger(channel)
            return
        cfg = self.worker.cfg
        self.reading.start(channel, cfg.keepalive if self.worker.alive
                           else min(cfg.keepalive, STOP_KEEPALIVE_LINGER))

    def linger(self, channel: Channel) -> None:
        """Close after the answer, draining what the client still sends."""
        self._of.pop(channel.conn, None)
        self.closing.start(channel)

    def close(self, channel: Channel) -> None:
        """Close the connection now."""
        self._of.pop(channel.conn, None)
        self.closing.close(channel)

    def sweep(self, force: bool = False) -> bool:
        """Act on what is past its deadline (every SWEEP_S, and return True; all of it, if
        `force`): 408 to a request too slow, a close to a silent connection, a drop to a client
        that takes no answer, the end of a lingering close."""
        now = time.monotonic()
        if not force and now < self._next_sweep:
            return False
        self._next_sweep = now + SWEEP_S
        self._trim_after_burst()
        self.reading.sweep(now, force)
        self.sending.sweep(now, force)
        self.closing.sweep(now, force)
        return True

    def wait_bound(self, timeout: float) -> float:
        """gthread's wait for events, short enough to keep the deadlines."""
        busy = self.reading or self.sending or self.closing
        return min(timeout, SWEEP_S) if busy else timeout

    def _trim_after_burst(self) -> None:
        # Request and answer bytes are freed when a burst ends, but glibc keeps the freed heap
        # (and each request thread's arena) for reuse; malloc_trim gives it back once a burst
        # has held TRIM_AFTER_BYTES and ended (issue 23, item 3; docs/security.md).
        held = self.reading.buffered + self.sending.unsent
        self._peak_held = max(self._peak_held, held)
        if self._peak_held >= TRIM_AFTER_BYTES and held <= TRIM_AFTER_BYTES // 8:
            self._peak_held = held
            malloc_trim()


class _Reading:
    """Channels waiting for (the rest of) a request, the longest waiting first; the request bytes
    they hold count against MAX_BUFFERED_BYTES."""

    def __init__(self, channels: Channels) -> None:
        self._channels = channels
        self._poller = channels.worker.poller
        self._waiting: dict[Channel, None] = {}  # an ordered set
        self.buffered = 0  # request bytes the readers hold (MAX_BUFFERED_BYTES)

    def __len__(self) -> int:
        return len(self._waiting)

    def start(self, channel: Channel, idle_s: float) -> None:
        """Read the channel's next request: from what the client pipelined, or as it arrives;
        wait `idle_s` for its first byte."""
        try:
            complete = channel.reader.resume(monotonic(), idle_s)
        except Refusal as refusal:
            self._refuse(channel, refusal)
            return
        if complete:
            self._complete(channel)
            return
        channel.send_continue()
        self._waiting[channel] = None
        self._account(channel)
        self._poller.register(channel.sock, selectors.EVENT_READ,
                              partial(self._on_readable, channel))

    def _on_readable(self, channel: Channel, sock: socket.socket) -> None:
        if channel not in self._waiting:
            # Evicted by an accept earlier in the same batch of events: select() returned
            # this event before the connection was closed.
            return
        scratch = self._channels.scratch
        data: bytes | memoryview
        try:
            data = scratch[:sock.recv_into(scratch)]  # the reader copies what it keeps
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client closed or reset the connection
            self._stop(channel)
            self._channels.close(channel)
            return
        try:
            complete = channel.reader.feed(data, monotonic())
        except Refusal as refusal:
            self._stop(channel)
            self._refuse(channel, refusal)
            return
        channel.send_continue()
        if complete:
            self._stop(channel)
            self._complete(channel)
            return
        self._account(channel)
        while self.buffered > self._channels.settings["MAX_BUFFERED_BYTES"]:
            largest = max(self._waiting, key=lambda c: c.counted)
            self._stop(largest)
            self._refuse(largest, Refusal(
                503, "the server holds too many request bytes; retry later", "buffer_budget"))

    def _complete(self, channel: Channel) -> None:
        # A request that waited behind another starts its clock now.
        request = channel.request = channel.reader.take()
        now = monotonic()
        channel.arrived = now if request.pipelined else arrival(channel.sock, now)
        self._channels.worker.hand_off(channel, now)

    def _account(self, channel: Channel) -> None:
        held = channel.reader.buffered
        self.buffered += held - channel.counted
        channel.counted = held

    def _stop(self, channel: Channel) -> None:
        del self._waiting[channel]
        self.buffered -= channel.counted
        channel.counted = 0
        _unregister(self._poller, channel.sock)

    def evict_longest_waiting(self) -> None:
        """Close the connection that has waited longest for its request, at once: a lingering
        close would hold the place it is to free."""
        if self._waiting:
            evicted = next(iter(self._waiting))
            self._stop(evicted)
            telemetry.READS_ENDED.labels("evicted").inc()
            self._channels.close(evicted)

    def _refuse(self, channel: Channel, refusal: Refusal) -> None:
        # A request the poller will not hand to a thread: logged once, counted, closed.
        telemetry.READS_ENDED.labels(refusal.reason).inc()
        self._channels.worker.log.info("%s %s from %s: %s", refusal.status, refusal.reason,
                                       channel.peer, refusal)
        with contextlib.suppress(OSError):  # a few hundred bytes: never blocks
            channel.sock.send(closing_error(refusal.status, str(refusal)))
        self._channels.linger(channel)

    def sweep(self, now: float, force: bool) -> None:
        """408 to a request past its deadline, a close to a silent connection (all, if
        `force`)."""
        for channel in list(self._waiting):
            if force or now >= channel.reader.deadline:
                self._stop(channel)
                self._timed_out(channel)

    def _timed_out(self, channel: Channel) -> None:
        reader = channel.reader
        if not reader.received:  # nothing sent: no request to answer
            telemetry.READS_ENDED.labels("idle").inc()
            if channel.unsent_in_kernel():  # it did not read its last answers either
                channel.reset_on_close()
            self._channels.close(channel)
            return
        self._refuse(channel, Refusal(408, f"the request {reader.phase} took too long to arrive",
                                      f"{reader.phase}_timeout"))

    def cap_idle(self, deadline: float) -> None:
        """A stopping worker waits for a first byte until `deadline` at most."""
        for channel in self._waiting:
            if not channel.reader.received:
                channel.reader.deadline = Monotonic(min(channel.reader.deadline, deadline))


class _Sending:
    """Channels whose client has not taken all of its answer: each dropped when it takes nothing
    for SEND_TIMEOUT_S, the largest first while they hold over MAX_UNSENT_BYTES."""

    def __init__(self, channels: Channels) -> None:
        self._channels = channels
        self._settings = channels.settings
        self._poller = channels.worker.poller
        self._drop_at: dict[Channel, float] = {}
        self.unsent = 0  # answer bytes the outboxes hold (MAX_UNSENT_BYTES)

    def __len__(self) -> int:
        return len(self._drop_at)

    def start(self, channel: Channel) -> None:
        """Send the rest of the channel's answer as its client takes it."""
        self._drop_at[channel] = time.monotonic() + self._settings["SEND_TIMEOUT_S"]
        self.unsent += channel.outbox.pending
        self._poller.register(channel.sock, selectors.EVENT_WRITE,
                              partial(self._on_writable, channel))
        while self.unsent > self._settings["MAX_UNSENT_BYTES"]:
            largest = max(self._drop_at, key=lambda c: c.outbox.pending)
            self._drop(largest, "send_budget")

    def _on_writable(self, channel: Channel, sock: socket.socket) -> None:
        if channel not in self._drop_at:
            return  # dropped earlier in the same batch of events
        try:
            sent = channel.outbox.flush()
        except OSError:  # the client went away
            self._drop(channel, "send_failed")
            return
        self.unsent -= sent
        if sent:
            self._drop_at[channel] = time.monotonic() + self._settings["SEND_TIMEOUT_S"]
        if not channel.outbox.pending:
            self._stop(channel)
            self._channels.sent(channel)

    def _stop(self, channel: Channel) -> None:
        del self._drop_at[channel]
        self.unsent -= channel.outbox.pending
        _unregister(self._poller, channel.sock)

    def _drop(self, channel: Channel, reason: str) -> None:
        self._stop(channel)
        telemetry.READS_ENDED.labels(reason).inc()
        channel.reset_on_close()
        self._channels.close(channel)

    def sweep(self, now: float, force: bool) -> None:
        """Drop the clients that took nothing for SEND_TIMEOUT_S (all, if `force`)."""
        for channel, drop_at in list(self._drop_at.items()):
            if force or now >= drop_at:
                self._drop(channel, "send_timeout")


class _Closing:
    """Connections answered and half-closed, drained without blocking for up to LINGER_S before
    they close. gthread's close waits up to 2 s in the poller thread for the client's FIN; here
    the poller drains between other work, and a draining connection no longer counts against
    WORKER_CONNECTIONS."""

    def __init__(self, channels: Channels) -> None:
        self._poller = channels.worker.poller
        self._worker = channels.worker
        self._scratch = channels.scratch
        self._close_at: dict[Channel, float] = {}

    def __len__(self) -> int:
        return len(self._close_at)

    def start(self, channel: Channel) -> None:
        """Half-close the connection and drain it."""
        channel.release()
        try:
            channel.sock.setblocking(False)
            channel.sock.shutdown(socket.SHUT_WR)
            self._poller.register(channel.sock, selectors.EVENT_READ,
                                  partial(self._on_readable, channel))
        except (OSError, ValueError, KeyError):
            self.close(channel)
            return
        self._worker.nr_conns -= 1
        self._close_at[channel] = time.monotonic() + LINGER_S

    def _on_readable(self, channel: Channel, sock: socket.socket) -> None:
        try:
            if sock.recv_into(self._scratch):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self.close(channel)

    def close(self, channel: Channel) -> None:
        """Close the connection now."""
        if self._close_at.pop(channel, None) is None:
            self._worker.nr_conns -= 1
        else:
            _unregister(self._poller, channel.sock)
        channel.release()
        channel.conn.close()

    def sweep(self, now: float, force: bool) -> None:
        """Close the connections drained for LINGER_S (all, if `force`)."""
        for channel, close_at in list(self._close_at.items()):
            if force or now >= close_at:
                self.close(channel)


def _unregister(poller: selectors.BaseSelector, sock: socket.socket) -> None:
    with contextlib.suppress(KeyError, ValueError, OSError):
        poller.unregister(sock)


def malloc_trim() -> bool:
    """Return the C heap's free memory to the system (glibc's malloc_trim); False elsewhere."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False
