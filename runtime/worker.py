"""gunicorn's gthread worker, guarded: what each of its jobs is, and the module that does it.

    gthread's loop (poller thread)       job                          module
    ------------------------------       ---                          ------
    accept                               the accept hold-back         runtime/accept.py
    enqueue_req, handle, finish_request  a connection's bytes, both   runtime/channel.py
    murder_keepalived (every turn)         ways, under deadlines      (framing: runtime/wire.py)
    hand-off, after each turn            refusals the poller writes   runtime/overload.py
    the executor's queue                 admission, LIFO, CoDel       runtime/lifo_queue.py
    tpool.submit                         arrival stamps               runtime/stamps.py

StampedThreadWorker is gthread with stamps, admission and the hold-back: the worker for TLS and
HTTP/2 with prior knowledge, whose bytes gthread reads itself. GuardedThreadWorker, the default,
adds Channels: its poller thread owns every plain HTTP/1 connection's bytes, both ways.

Settings. The worker takes its settings from the app it serves (`app.config`, filled by
config.settings() as for the routes), once gunicorn has loaded it (load_wsgi).

Private state. These classes override gthread's methods and use its attributes (nr_conns,
poller, tpool, method_queue, keepalived_conns, pending_conns; TConn's sock, parser, initialized,
data_ready). What is private to gunicorn or the stdlib (the executor's queue and work items,
_accepting) is reached only through runtime/internals.py, which names all of it and is tested
against the installed versions.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from gunicorn import http
from gunicorn.workers.gthread import TConn, ThreadWorker

import config
import telemetry
from runtime import internals, overload
from runtime.accept import Accept, HoldBack
from runtime.channel import Channel, Channels
from runtime.clock import Monotonic
from runtime.limit import AdaptiveLimit
from runtime.stamps import StampingExecutor
from runtime.wire import closing_error


class StampedThreadWorker(ThreadWorker):
    """gthread whose requests are stamped with their arrival, admitted under an in-flight limit,
    and whose new connections are left to another worker while it is busy."""

    tpool: StampingExecutor
    settings: Mapping[str, Any]

    def load_wsgi(self) -> None:
        """Load the app, then set up admission with its settings and its work routes."""
        super().load_wsgi()
        self.init_admission(getattr(self.wsgi, "config", None) or config.settings(),
                            overload.work_test_of(self.wsgi))

    def init_admission(self, settings: Mapping[str, Any], is_work: overload.IsWork) -> None:
        """The queue's bounds and in-flight limit, from the settings; no hold-back yet."""
        self.settings = settings
        self.hold_back = HoldBack()
        self.work_queue = self.tpool.work_queue
        self.work_queue.max_wait_s = settings["MAX_QUEUE_WAIT_S"]
        self.work_queue.target_s = settings["QUEUE_TARGET_MS"] / 1000
        if settings["ADAPTIVE_LIMIT"]:
            self.work_queue.limit = AdaptiveLimit(
                min(settings["MIN_LIMIT"], self.cfg.threads), self.cfg.threads,
                settings["LIMIT_TARGET"] * settings["REQUEST_TIMEOUT_S"])

    def get_thread_pool(self) -> StampingExecutor:
        """gthread's executor, stamping each task (runtime/stamps.py)."""
        return StampingExecutor(max_workers=self.cfg.threads, thread_name_prefix="request")

    def accept(self, listener: Any) -> None:
        """Accept a connection, unless this worker holds back (runtime/accept.py)."""
        busy = self.cfg.workers > 1 and self.busy()
        action = self.hold_back.on_readable(time.monotonic(), busy)
        if action is Accept.HOLD_BACK:
            self.set_accept_enabled(False)
        elif action is Accept.DRAIN:
            while self.nr_conns < self.worker_connections:
                held = self.nr_conns
                super().accept(listener)  # returns quietly when no connection is waiting
                if self.nr_conns == held:
                    break
        else:
            super().accept(listener)

    def set_accept_enabled(self, enabled: bool) -> None:
        """Start or stop accepting, but do not start again during a hold-back."""
        if enabled and not internals.accepting(self) and self.hold_back.holds(time.monotonic()):
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """Wait for events as gthread does, but no longer than a hold-back, a deadline or the
        oldest request's bound in the queue; then refuse what waited too long."""
        now = time.monotonic()
        timeout = self.hold_back.bound(timeout, now)
        expiry = self.work_queue.next_expiry()
        if expiry is not None:  # refuse what waited too long within a millisecond of it
            timeout = min(timeout, max(0.0, expiry - now) + 0.001)
        super().wait_for_and_dispatch_events(timeout)
        self.refuse_expired()

    def refuse_expired(self) -> None:
        """Hand what waited past its bound to the next free thread, to refuse."""
        for _, item in self.work_queue.pop_expired():
            self.work_queue.put_back(item)

    def busy(self) -> bool:
        """Whether this worker holds as many requests as it lets run at once: past it, a request
        would wait for room, not for a thread."""
        # Connections not waiting on their client are with the executor: running or queued.
        return self.nr_conns - self.waiting_on_clients() >= self.admits_at_once()

    def waiting_on_clients(self) -> int:
        """Connections this worker holds that wait on their client, not on a thread."""
        return len(self.keepalived_conns) + len(self.pending_conns)

    def admits_at_once(self) -> int:
        """Requests this worker lets run at once now: its in-flight limit, else its threads."""
        limit = self.work_queue.limit
        return limit.current if limit else self.cfg.threads

    def publish_admission(self) -> None:
        """The in-flight limit and what runs under it, in /metrics."""
        telemetry.IN_FLIGHT_LIMIT.set(self.admits_at_once())
        telemetry.IN_FLIGHT.set(self.work_queue.in_flight)


class GuardedThreadWorker(StampedThreadWorker):
    """StampedThreadWorker whose poller thread owns each connection's bytes (runtime/channel.py)
    and writes the cheapest refusals itself (runtime/overload.PollerRefusals)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The bytes of TLS or HTTP/2 are not plain HTTP/1: gthread reads them, and this worker is
        # its parent. Decided here, where every start goes through (gunicorn's, a HUP reload's,
        # a test's), not in a hook that one of them could miss.
        self.__class__ = fitting(type(self), self.cfg)

    def init_admission(self, settings: Mapping[str, Any], is_work: overload.IsWork) -> None:
        """Admission as StampedThreadWorker's, the channels empty, no request with a thread."""
        super().init_admission(settings, is_work)
        self.channels = Channels(self, settings)
        self.refusals = overload.PollerRefusals(self.work_queue, settings, is_work)
        self.publish_admission()

    def enqueue_req(self, conn: TConn) -> None:
        """gthread's accept hands each new connection here: read its request first."""
        self.channels.open(conn)

    def hand_off(self, channel: Channel, now: Monotonic) -> None:
        """Give a request read whole to a request thread, unless the queue is full and it can be
        refused here (no hand-off, no queue, no thread: issue 24)."""
        request = channel.request
        assert request is not None
        answer = self.refusals.at_hand_off(request, channel.arrived, now)
        if answer and channel.write(answer):
            self.channels.answered(channel, True)
            return
        if answer:  # the client went away
            self.channels.close(channel)
            return
        # gunicorn's parser reads the request's canonical bytes, never the socket (one framing:
        # runtime/wire.py).
        conn = channel.conn
        conn.parser = http.get_parser(self.cfg, [request.canonical()], conn.client)
        conn.initialized = conn.data_ready = True
        future = self.tpool.submit_at(channel.arrived, self.handle, conn)
        future.add_done_callback(
            lambda done: self.method_queue.defer(self.finish_request, conn, done))

    def handle(self, conn: TConn) -> Any:
        """Serve a request in a request thread (gthread's handle), its answer written to the
        connection's Outbox: the thread never waits for the client to read."""
        sock, conn.sock = conn.sock, self.channels.of(conn).outbox
        try:
            return super().handle(conn)
        finally:
            conn.sock = sock

    def finish_request(self, conn: TConn, fs: Future[Any]) -> None:
        """A request thread is done with `conn`: send the rest of its answer, then read its next
        request (keep-alive) or close it, without blocking the poller."""
        channel = self.channels.of(conn)
        try:
            keep_alive = not fs.cancelled() and fs.result()
        except Exception:  # noqa: BLE001 - gthread's handle has logged it
            keep_alive = False
        self.channels.answered(channel, bool(keep_alive) and not channel.outbox.closed)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer a request gunicorn's parser refused, or that failed before its answer began,
        with a JSON error; the exception's text goes to the log only."""
        status, message = _error_of(exc)
        if status >= 500:
            self.log.error("Error handling request: %s", telemetry.describe(exc),
                           exc_info=exc)
        try:
            client.sendall(closing_error(status, message))
        except OSError:
            pass

    def murder_keepalived(self, force: bool = False) -> None:
        """gthread's loop calls this every turn: act on the channels' deadlines."""
        if self.channels.sweep(force):
            telemetry.OPEN_READS.set(len(self.channels.reading))
            self.publish_admission()

    def _cap_keepalive(self, deadline: float) -> None:
        """A stopping worker keeps connections awaiting a request until `deadline` at most."""
        super()._cap_keepalive(deadline)
        self.channels.reading.cap_idle(deadline)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """As StampedThreadWorker's, waking in time for the channels' deadlines."""
        super().wait_for_and_dispatch_events(self.channels.wait_bound(timeout))

    def refuse_expired(self) -> None:
        """Refuse here each plain GET that waited past its bound; a thread refuses the rest."""
        self.refusals.expired(self.channels.of)

    def waiting_on_clients(self) -> int:
        """Connections waiting for (the rest of) a request, or taking their answer."""
        return len(self.channels.reading) + len(self.channels.sending)


def fitting(worker_class: type, cfg: Any) -> type:
    """The worker class to run: GuardedThreadWorker reads plain HTTP/1 only, so with TLS or
    HTTP/2 with prior knowledge its parent, whose bytes gthread reads."""
    foreign = cfg.is_ssl or getattr(cfg, "http2_cleartext", None) in ("prior-knowledge", "both")
    if foreign and issubclass(worker_class, GuardedThreadWorker):
        return StampedThreadWorker
    return worker_class


def _error_of(exc: BaseException) -> tuple[int, str]:
    """(status, message) for an exception gthread's handle caught: gunicorn's parser refusing
    the request (which llhttp already let through, so rarely), or anything else (500)."""
    if isinstance(exc, http.errors.LimitRequestLine):
        return 414, "the request line is too long"
    if isinstance(exc, http.errors.LimitRequestHeaders):
        return 431, "the request has too many or too large header fields"
    if isinstance(exc, http.errors.ParseException):
        return 400, f"malformed request: {type(exc).__name__}"
    return 500, "internal error"
