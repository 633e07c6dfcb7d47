"""gunicorn's gthread worker, whose poller thread owns each connection's bytes, both ways.

Reading ahead. gthread hands a new or kept-alive connection to a request thread, which waits up to
5 s for its first byte and then reads the head and body with a blocking socket and no deadline:
a slow or silent client holds a thread as long as it likes. Here the poller thread reads every
request without blocking (runtime/reader.py: llhttp, the one framing) and under deadlines,
answers 408 to a client too slow, 400/413/431/501/505 to a request that cannot be served, and
closes a silent connection; a request thread gets a request only once all of it is in memory,
and gunicorn's parser reads its canonical copy, never the socket. What a client pipelined waits
unparsed until its turn. Request bytes held by the readers are bounded by MAX_BUFFERED_BYTES a
worker (past it, the largest incomplete request is refused). When a worker holds
WORKER_CONNECTIONS, a new connection makes it close the one that has waited longest for its
request instead of no longer accepting, so idle sockets cannot keep new clients out. A connection
answered here is closed as nginx's lingering close does: half-closed, then drained for up to
LINGER_S without blocking, so the client reads the answer instead of a reset.

Writing. A request thread writes its answer to the connection's Outbox (runtime/outbox.py), which
sends what the socket takes at once and keeps the rest; the thread is then free. The poller sends
the rest when the socket is writable, drops a connection whose client takes nothing for
SEND_TIMEOUT_S, and drops those holding the most once a worker holds MAX_UNSENT_BYTES; only then
does it read the connection's next request (issue 23).

Arrival stamps. gthread hands every readable connection to a ThreadPoolExecutor whose queue has
no bound; a request that waits there is invisible to the app, so under overload latency would
grow with no sign. `get_thread_pool` returns an executor that stamps each hand-off with when the
request arrived: when the kernel received its last bytes (TCP_INFO), for under load they wait
in the socket for the poller thread too (hundreds of ms at 2000 clients here; uncounted, they
made 200s that reached the client after its deadline). The app counts the wait (`arrived_at`)
against the request's deadline and sheds what is already too late.

Admission. The same executor's queue (runtime/overload.AdaptiveLifoQueue) lets a thread take a
request only while fewer than the in-flight limit run (runtime/limit.py: it follows the latency
requests see against their deadline), serves the oldest first while it keeps emptying and the
newest once it is congested, and bounds each request's wait (CoDel: MAX_QUEUE_WAIT_S, 5 ms once
the queue stands). A request refused is refused before the app runs: a plain keep-alive GET by
this worker's poller thread, at hand-off when the queue is full or after each turn of its loop
once it waited too long; anything else by a request thread. runtime/overload.py decides who is
refused, and how; this worker only calls it.

Accept hold-back. Workers share one listening socket and the quickest to wake wins each
connection, so a worker pinned beside the load generator got 31 of 200 kept-alive connections
here and the other 169, more than its threads: those requests queued and were shed. A worker
that holds as many requests as its in-flight limit therefore stops accepting for ACCEPT_YIELD_S,
leaving new connections to the others, and then takes every connection still waiting.
`_yield_until` is the whole state (0 when not holding back), and three of gthread's methods act
on it:

    accept                        busy: start a hold-back; after one: drain the backlog
    set_accept_enabled            gthread's loop re-enables accepting every turn: not before
                                  the hold-back ends
    wait_for_and_dispatch_events  gthread's loop waits up to 1 s for events; during a hold-back
                                  only until it ends, so a hold-back lasts ACCEPT_YIELD_S

Settings. The worker takes its settings from the app it serves (`app.config`, filled by
config.settings() as for the routes), once gunicorn has loaded it (load_wsgi).

Private state. This class overrides gthread's methods and uses its attributes (nr_conns, poller,
tpool, keepalived_conns, pending_conns; TConn's sock, client, parser, initialized, data_ready;
reader, request, outbox, arrived and keep_alive are ours). What is private to gunicorn or the
stdlib (the executor's queue and work items, _accepting) is reached only through
runtime/internals.py, which names all of it and is tested against the installed versions. TLS
and HTTP/2 with prior knowledge are left to gthread's own reading (the bytes are not plain HTTP/1).
"""
import contextlib
import ctypes
import fcntl
import selectors
import socket
import struct
import termios
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from gunicorn import http
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, ThreadWorker

import config
import telemetry
from runtime import internals, overload
from runtime.limit import AdaptiveLimit
from runtime.outbox import Outbox
from runtime.reader import Limits, Refusal, RequestReader

_local = threading.local()
ACCEPT_YIELD_S = 0.01
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
# struct tcp_info (linux/tcp.h): 8 one-byte fields, then u32s; tcpi_last_data_recv is the 12th.
_TCPI_LAST_DATA_RECV = 8 + 11 * 4
_TCP_INFO_BYTES = 104


def arrived_at():
    """Monotonic time at which the current request arrived (see Arrival stamps), or None outside
    this worker."""
    return getattr(_local, "arrived_at", None)


def condemned():
    """Whether the current request waited in the queue past its bound, and is to be refused."""
    return getattr(_local, "condemned", False)


class GuardedThreadWorker(ThreadWorker):
    """gthread, guarded: its poller thread reads each request whole under deadlines and refuses
    what waited too long, each request's queueing time is available to the app, and new
    connections are left to a worker with a free thread when this one has none."""

    _yield_until = 0.0

    def load_wsgi(self):
        """Load the app, then set up reading requests with its settings and its work routes."""
        super().load_wsgi()
        self.init_reading(getattr(self.wsgi, "config", None) or config.settings(),
                          overload.work_test_of(self.wsgi))

    def init_reading(self, settings, is_work):
        """The state of reading requests in the poller thread, empty."""
        self._settings = settings  # app.config: read when used, as the routes do
        self._is_work = is_work
        self._readers = {}  # conn -> RequestReader, the longest waiting first
        self._sending = {}  # conn -> when to drop it if the client takes no more of its answer
        self._closing = {}  # conn -> when to close it: answered here, half-closed, draining
        self._in_threads = 0  # connections with the executor: queued or running
        self._buffered = 0  # request bytes the readers hold (MAX_BUFFERED_BYTES)
        self._unsent = 0  # answer bytes the outboxes of _sending hold (MAX_UNSENT_BYTES)
        self._next_sweep = 0.0
        self._peak_held = 0  # the most _buffered + _unsent since the last malloc_trim
        self._received = memoryview(bytearray(RECV_BYTES))  # what the last recv read
        self._limits = Limits.from_settings(settings)
        self._reads_ahead = not self.cfg.is_ssl and getattr(
            self.cfg, "http2_cleartext", None) not in ("prior-knowledge", "both")
        self._work_queue = self.tpool.work_queue
        self._work_queue.max_wait_s = settings["MAX_QUEUE_WAIT_S"]
        self._work_queue.target_s = settings["QUEUE_TARGET_MS"] / 1000
        if settings["ADAPTIVE_LIMIT"]:
            self._work_queue.limit = AdaptiveLimit(
                min(settings["MIN_LIMIT"], self.cfg.threads), self.cfg.threads,
                settings["LIMIT_TARGET"] * settings["REQUEST_TIMEOUT_S"])
        if self._reads_ahead:
            self._publish_admission()

    def get_thread_pool(self):
        """Return gthread's executor: each task stamped with when its request arrived, and queued
        in an AdaptiveLifoQueue."""
        return _StampingExecutor(max_workers=self.cfg.threads, thread_name_prefix="request")

    def accept(self, listener):
        """Accept a connection; when every thread is busy, first give the other workers
        ACCEPT_YIELD_S to take it, then take all that are still waiting."""
        if self._yield_until:
            self._yield_until = 0.0  # set_accept_enabled let this call through: it has ended
            self._drain(listener)
        elif self.cfg.workers > 1 and self._is_full():
            self._yield_until = time.monotonic() + ACCEPT_YIELD_S
            self.set_accept_enabled(False)
        else:
            super().accept(listener)

    def set_accept_enabled(self, enabled):
        """Start or stop accepting, but do not start again during a hold-back."""
        if enabled and not internals.accepting(self) and time.monotonic() < self._yield_until:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout):
        """Wait for events as gthread does, but wake up when a hold-back ends; then refuse the
        requests that waited too long."""
        left = self._yield_until - time.monotonic()
        if left > 0:
            timeout = min(timeout, left)
        if self._readers or self._closing or self._sending:
            timeout = min(timeout, SWEEP_S)
        expiry = self._work_queue.next_expiry() if self._reads_ahead else None
        if expiry is not None:  # refuse what waited too long within a millisecond of it
            timeout = min(timeout, max(0.0, expiry - time.monotonic()) + 0.001)
        super().wait_for_and_dispatch_events(timeout)
        self._refuse_expired()

    def finish_request(self, conn, fs):
        """A request thread is done with `conn`: read its next request (keep-alive), or close it
        without blocking the poller."""
        if not self._reads_ahead:
            return super().finish_request(conn, fs)
        self._in_threads -= 1
        try:
            keep_alive = not fs.cancelled() and fs.result()
        except Exception:  # noqa: BLE001 - gthread's handle has logged it
            keep_alive = False
        self._after_answer(conn, bool(keep_alive) and not conn.outbox.closed)

    def _after_answer(self, conn, keep_alive):
        """`conn`'s answer is written to its Outbox: send the rest, or go on to its next request
        (or close it)."""
        conn.keep_alive = keep_alive
        if conn.outbox.pending:  # the client has not taken all of its answer yet
            self._send(conn)
        else:
            self._answered(conn)

    def handle(self, conn):
        """Serve a request in a request thread (gthread's handle), its answer written to the
        connection's Outbox: the thread never waits for the client to read."""
        if not self._reads_ahead:
            return super().handle(conn)
        sock, conn.sock = conn.sock, conn.outbox
        try:
            return super().handle(conn)
        finally:
            conn.sock = sock

    def handle_error(self, req, client, addr, exc):
        """Answer a request gunicorn's parser refused, or that failed before its answer began,
        with a JSON error; the exception's text goes to the log only."""
        if not self._reads_ahead:
            return super().handle_error(req, client, addr, exc)
        status, message = _error_of(exc)
        if status >= 500:
            self.log.error("Error handling request: %s", telemetry.describe(exc),
                           exc_info=exc)
        try:
            client.sendall(overload.closing_error(status, message))
        except OSError:
            pass
        return None

    def _answered(self, conn):
        """`conn`'s answer is all sent: read its next request (keep-alive), or close it."""
        if not conn.keep_alive or conn.request.upgrade:
            self._linger_close(conn)
            return
        idle_s = self.cfg.keepalive if self.alive else min(self.cfg.keepalive,
                                                           STOP_KEEPALIVE_LINGER)
        self._read(conn, idle_s)

    def _send(self, conn):
        self._sending[conn] = time.monotonic() + self._settings["SEND_TIMEOUT_S"]
        self._unsent += conn.outbox.pending
        self.poller.register(conn.sock, selectors.EVENT_WRITE, partial(self._on_writable, conn))
        while self._unsent > self._settings["MAX_UNSENT_BYTES"]:
            largest = max(self._sending, key=lambda c: c.outbox.pending)
            self._drop_sending(largest, "send_budget")

    def _on_writable(self, conn, sock):
        if conn not in self._sending:
            return  # dropped earlier in the same batch of events
        try:
            sent = conn.outbox.flush()
        except OSError:  # the client went away
            self._drop_sending(conn, "send_failed")
            return
        self._unsent -= sent
        if sent:
            self._sending[conn] = time.monotonic() + self._settings["SEND_TIMEOUT_S"]
        if not conn.outbox.pending:
            self._stop_sending(conn)
            self._answered(conn)

    def _stop_sending(self, conn):
        del self._sending[conn]
        self._unsent -= conn.outbox.pending
        self._unregister(conn)

    def _drop_sending(self, conn, reason):
        self._stop_sending(conn)
        telemetry.READS_ENDED.labels(reason).inc()
        _reset_on_close(conn.sock)
        self._close(conn)

    def murder_keepalived(self, force=False):
        """Answer 408 to (or close) the connections past their read deadline; all, if `force`.
        gthread's loop calls this every turn; the deadlines are checked every SWEEP_S."""
        if not self._reads_ahead:
            return super().murder_keepalived(force)
        now = time.monotonic()
        if not force and now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_S
        self._publish_admission()
        self._trim_after_burst()
        for conn, reader in list(self._readers.items()):
            if force or now >= reader.deadline:
                self._stop_reading(conn)
                self._read_timed_out(conn, reader)
        for conn, drop_at in list(self._sending.items()):
            if force or now >= drop_at:
                self._drop_sending(conn, "send_timeout")
        for conn, close_at in list(self._closing.items()):
            if force or now >= close_at:
                self._close(conn)

    def _publish_admission(self):
        telemetry.OPEN_READS.set(len(self._readers))
        telemetry.IN_FLIGHT_LIMIT.set(self._admits_at_once())
        telemetry.IN_FLIGHT.set(self._work_queue.in_flight)

    def _trim_after_burst(self):
        # Request and answer bytes are freed when a burst ends, but glibc keeps the freed heap
        # (and each request thread's arena) for reuse; malloc_trim gives it back once a burst
        # has held TRIM_AFTER_BYTES and ended (issue 23, item 3; figures: docs/security.md).
        held = self._buffered + self._unsent
        self._peak_held = max(self._peak_held, held)
        if self._peak_held >= TRIM_AFTER_BYTES and held <= TRIM_AFTER_BYTES // 8:
            self._peak_held = held
            malloc_trim()

    def _cap_keepalive(self, deadline):
        """A stopping worker keeps connections awaiting a request until `deadline` at most."""
        super()._cap_keepalive(deadline)
        for reader in self._readers.values():
            if not reader.received:
                reader.deadline = min(reader.deadline, deadline)

    def enqueue_req(self, conn):
        """gthread's accept hands each new connection here: read its request first (when it
        is complete, _hand_off gives it to the executor)."""
        if not self._reads_ahead:
            return super().enqueue_req(conn)
        conn.reader = RequestReader(self._limits, time.monotonic())
        conn.outbox = Outbox(conn.sock)  # the connection's, emptied by each answer's sending
        with contextlib.suppress(OSError, AttributeError):  # not TCP, or not Linux
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT,
                                 KERNEL_UNSENT_BYTES)
        self._read(conn, self._limits.idle_s)  # TConn left its socket non-blocking
        if self.nr_conns >= self.worker_connections and self._readers:
            self._evict_longest_waiting()
        return None

    def _read(self, conn, idle_s):
        """Read `conn`'s next request: from what the client pipelined, or as it arrives."""
        reader = conn.reader
        try:
            complete = reader.resume(time.monotonic(), idle_s)
        except Refusal as refusal:
            self._answer(conn, refusal.status, str(refusal), refusal.reason)
            return
        if complete:
            self._hand_off(conn, reader)
            return
        self._send_continue(conn, reader)
        self._readers[conn] = reader
        self._account(reader)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn, sock):
        reader = self._readers.get(conn)
        if reader is None:
            # Evicted by an accept earlier in the same batch of events: select() returned
            # this event before the connection was closed.
            return
        try:
            # Into one buffer a worker: no allocation a recv (the reader copies what it keeps).
            data = self._received[:sock.recv_into(self._received)]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client closed or reset the connection
            self._stop_reading(conn)
            self._close(conn)
            return
        try:
            complete = reader.feed(data, time.monotonic())
        except Refusal as refusal:
            self._stop_reading(conn)
            self._answer(conn, refusal.status, str(refusal), refusal.reason)
            return
        self._send_continue(conn, reader)
        if complete:
            self._stop_reading(conn)
            self._hand_off(conn, reader)
            return
        self._account(reader)
        while self._buffered > self._settings["MAX_BUFFERED_BYTES"]:
            largest = max(self._readers, key=lambda c: self._readers[c].counted)
            self._stop_reading(largest)
            self._answer(largest, 503, "the server holds too many request bytes; retry later",
                         "buffer_budget")

    def _account(self, reader):
        """Count what `reader` holds now against MAX_BUFFERED_BYTES."""
        held = reader.buffered
        self._buffered += held - reader.counted
        reader.counted = held

    @staticmethod
    def _send_continue(conn, reader):
        interim = reader.take_continue()
        if interim:
            try:
                conn.sock.send(interim)  # 25 bytes on a socket with nothing else to send
            except OSError:
                pass  # the read that follows finds the connection gone

    def _hand_off(self, conn, reader):
        # gunicorn's parser reads the request's canonical bytes, never the socket (one framing:
        # runtime/reader.py). A request that waited behind another starts its clock now.
        conn.request = reader.take()
        now = time.monotonic()
        conn.arrived = now if conn.request.pipelined else arrival(conn.sock, now)
        if self._work_queue.full(now) and self._refuse_at_once(conn, now):
            return
        conn.parser = http.get_parser(self.cfg, [conn.request.canonical()], conn.client)
        conn.initialized = conn.data_ready = True
        self._in_threads += 1
        super().enqueue_req(conn)

    def _refuse_at_once(self, conn, now):
        # The cheapest refusal: a 503 written here, no hand-off, no queue, no thread (issue 24).
        answer = overload.plain_refusal(conn.request, now - conn.arrived,
                                        self._settings["RETRY_AFTER_S"], self._is_work)
        if not answer:
            return False
        try:
            conn.outbox.sendall(answer)
        except OSError:  # the client went away
            self._close(conn)
            return True
        self._after_answer(conn, True)
        return True

    def _stop_reading(self, conn):
        reader = self._readers.pop(conn)
        self._buffered -= reader.counted
        reader.counted = 0
        self._unregister(conn)

    def _unregister(self, conn):
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _read_timed_out(self, conn, reader):
        if not reader.received:  # nothing sent: no request to answer
            telemetry.READS_ENDED.labels("idle").inc()
            if _unsent_in_kernel(conn.sock):  # it did not read its last answers either
                _reset_on_close(conn.sock)
            self._close(conn)
            return
        self._answer(conn, 408, f"the request {reader.phase} took too long to arrive",
                     f"{reader.phase}_timeout")

    def _evict_longest_waiting(self):
        conn = next(iter(self._readers))
        self._stop_reading(conn)
        telemetry.READS_ENDED.labels("evicted").inc()
        self._close(conn)  # at once: a lingering close would hold the place it is to free

    def _answer(self, conn, status, message, reason):
        """Answer a request the poller will not hand to a thread, log it once, count it, and
        close the connection."""
        telemetry.READS_ENDED.labels(reason).inc()
        self.log.info("%s %s from %s: %s", status, reason, _peer(conn), message)
        try:
            # A few hundred bytes: never blocks.
            conn.sock.send(overload.closing_error(status, message))
        except OSError:
            pass
        self._linger_close(conn)

    def _linger_close(self, conn):
        # gthread closes with util.close_graceful, which waits up to 2 s in the poller thread
        # for the client's FIN: here the poller drains the connection between other work. A
        # draining connection no longer counts against WORKER_CONNECTIONS.
        _forget(conn)
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
            self.poller.register(conn.sock, selectors.EVENT_READ,
                                 partial(self._on_closing_readable, conn))
        except (OSError, ValueError, KeyError):
            self._close(conn)
            return
        self.nr_conns -= 1
        self._closing[conn] = time.monotonic() + LINGER_S

    def _on_closing_readable(self, conn, sock):
        try:
            if sock.recv_into(self._received):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close(conn)

    def _close(self, conn):
        if self._closing.pop(conn, None) is None:
            self.nr_conns -= 1
        else:
            self._unregister(conn)
        _forget(conn)
        conn.close()

    def _refuse_expired(self):
        # A refusal here costs a look at the request's bytes and a write; through a request
        # thread, gunicorn's parser and the WSGI middleware, several times that
        # (docs/performance.md).
        for queued_at, item in self._work_queue.pop_expired():
            future, (*_, conn) = internals.task_of(item)  # _run_stamped(..., handle, conn)
            answer = self._reads_ahead and overload.plain_refusal(
                conn.request, time.monotonic() - queued_at, self._settings["RETRY_AFTER_S"],
                self._is_work)
            if not answer:
                self._work_queue.put_back(item)  # a request thread refuses it
                continue
            try:
                conn.outbox.sendall(answer)  # a few hundred bytes; a rest goes as any answer's
                keep_alive = True
            except OSError:  # the client went away
                keep_alive = False
            if future.set_running_or_notify_cancel():
                future.set_result(keep_alive)  # finish_request acts on it

    def _drain(self, listener):
        while self.nr_conns < self.worker_connections:
            held = self.nr_conns
            super().accept(listener)  # returns quietly when no connection is waiting
            if self.nr_conns == held:
                break

    def _is_full(self):
        if not self._reads_ahead:
            # Connections not waiting in the poller are with the executor: running or queued.
            busy = self.nr_conns - len(self.keepalived_conns) - len(self.pending_conns)
            return busy >= self.cfg.threads
        # Past the in-flight limit, a request would wait for room, not for a thread.
        return self._in_threads >= self._admits_at_once()

    def _admits_at_once(self):
        """Requests this worker lets run at once now: its in-flight limit, else its threads."""
        limit = self._work_queue.limit
        return limit.current if limit else self.cfg.threads


def _forget(conn):
    # What a connection held for its requests goes with its last answer, not when a draining
    # close ends, nor when the cyclic garbage collector finds its reader (docs/security.md).
    if getattr(conn, "reader", None) is not None:
        conn.reader.close()
    conn.reader = conn.request = conn.outbox = conn.parser = None


def _reset_on_close(sock):
    # A reset, as nginx's reset_timedout_connection: a plain close would leave the unsent bytes,
    # and the FIN behind them, in the kernel for a client that does not read.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _unsent_in_kernel(sock):
    """Bytes written to `sock` that its peer has not acknowledged (SIOCOUTQ); 0 if unknown."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except (OSError, ValueError):
        return 0


def malloc_trim():
    """Return the C heap's free memory to the system (glibc's malloc_trim); False elsewhere."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False


def arrival(sock, now):
    """When the last bytes read from `sock` reached this host, on the monotonic clock: `now`
    less the milliseconds TCP_INFO says have passed since (Linux), else `now`."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
        return now - struct.unpack_from("I", info, _TCPI_LAST_DATA_RECV)[0] / 1000
    except (AttributeError, OSError, struct.error):  # no TCP_INFO here, or not a TCP socket
        return now


def _error_of(exc):
    """(status, message) for an exception gthread's handle caught: gunicorn's parser refusing
    the request (which llhttp already let through, so rarely), or anything else (500)."""
    if isinstance(exc, http.errors.LimitRequestLine):
        return 414, "the request line is too long"
    if isinstance(exc, http.errors.LimitRequestHeaders):
        return 431, "the request has too many or too large header fields"
    if isinstance(exc, http.errors.ParseException):
        return 400, f"malformed request: {type(exc).__name__}"
    return 500, "internal error"


def _peer(conn):
    host, port = conn.client[:2] if isinstance(conn.client, tuple) else (conn.client, "")
    return f"{host}:{port}"


class _StampingExecutor(ThreadPoolExecutor):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # No thread has started yet. The waits that expire a request, and the in-flight limit,
        # are set with the settings.
        self.work_queue = overload.AdaptiveLifoQueue()
        internals.set_work_queue(self, self.work_queue)

    def submit(self, fn, /, *args, **kwargs):
        # gthread submits (handle, conn); a connection read here knows when it arrived.
        stamp = getattr(args[0], "arrived", None) if args else None
        return super().submit(_run_stamped, self.work_queue, stamp or time.monotonic(), fn,
                              *args, **kwargs)


def _run_stamped(work_queue, stamp, fn, *args, **kwargs):
    _local.arrived_at = stamp
    _local.condemned = work_queue.condemned()
    try:
        return fn(*args, **kwargs)
    finally:
        _local.arrived_at = None
        # The limit learns from what the client waited: from arrival, not from this start.
        work_queue.finished(time.monotonic() - stamp)
