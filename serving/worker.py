"""gunicorn's gthread worker with three additions, each made through methods gthread offers.

Queue stamps. gthread hands every readable connection to a ThreadPoolExecutor whose queue has no
bound; a request that waits there is invisible to the app, so under overload latency would grow
with no sign. `get_thread_pool` returns an executor that stamps each hand-off: the app counts the
wait (`queued_since`) against the request's deadline and sheds what is already too late.

Adaptive LIFO. The same executor's queue serves the oldest request first while it keeps
emptying, and the newest once it is congested. A request that waited past MAX_QUEUE_WAIT_S is
refused before the app runs: by this worker's poller thread after each turn of its loop when it
is a plain keep-alive GET, or else by a request thread (serving/admission.py).

Accept hold-back. Workers share one listening socket and the quickest to wake wins each
connection, so a worker pinned beside the load generator got 31 of 200 kept-alive connections
here and the other 169, more than its threads: those requests queued and were shed. A worker whose
threads are all busy therefore stops accepting for ACCEPT_YIELD_S, leaving new connections to the
others, and then takes every connection still waiting. `_yield_until` is the whole state (0 when
not holding back), and three of gthread's methods act on it:

    accept                        busy: start a hold-back; after one: drain the backlog
    set_accept_enabled            gthread's loop re-enables accepting every turn: not before
                                  the hold-back ends
    wait_for_and_dispatch_events  gthread's loop waits up to 1 s for events; during a hold-back
                                  only until it ends, so a hold-back lasts ACCEPT_YIELD_S
"""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from gunicorn.workers.gthread import ThreadWorker

from config import Config
from serving import admission

_local = threading.local()
ACCEPT_YIELD_S = 0.01


def queued_since():
    """Monotonic time at which gunicorn queued the current request, or None outside this worker."""
    return getattr(_local, "queued_since", None)


class QueueTimedThreadWorker(ThreadWorker):
    """gthread, with the queueing time of each request available to the app, and new
    connections left to a worker with a free thread when this one has none."""

    _yield_until = 0.0

    def get_thread_pool(self):
        """Return gthread's executor: each task stamped when it is queued, and queued in an
        AdaptiveLifoQueue."""
        return _StampingExecutor(max_workers=self.cfg.threads, thread_name_prefix="request")

    def accept(self, listener):
        """Accept a connection; when every thread is busy, first give the other workers
        ACCEPT_YIELD_S to take it, then take all that are still waiting."""
        if self._yield_until:
            self._yield_until = 0.0  # set_accept_enabled let this call through: it has ended
            self._drain(listener)
        elif self.cfg.workers > 1 and self._busy_threads() >= self.cfg.threads:
            self._yield_until = time.monotonic() + ACCEPT_YIELD_S
            self.set_accept_enabled(False)
        else:
            super().accept(listener)

    def set_accept_enabled(self, enabled):
        """Start or stop accepting, but do not start again during a hold-back."""
        if enabled and not self._accepting and time.monotonic() < self._yield_until:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout):
        """Wait for events as gthread does, but wake up when a hold-back ends; then refuse the
        requests that waited too long."""
        left = self._yield_until - time.monotonic()
        if left > 0:
            timeout = min(timeout, left)
        super().wait_for_and_dispatch_events(timeout)
        self._refuse_expired()

    def _refuse_expired(self):
        # A refusal here costs a peek, a read and a write; through a request thread, gunicorn's
        # parser and the WSGI middleware, several times that (docs/performance.md).
        work_queue = self.tpool._work_queue
        for queued_at, item in work_queue.pop_expired():
            _, _, conn = item.args  # _run_stamped(stamp, self.handle, conn)
            try:
                if not (conn.initialized and not conn.parser.unreader.buf.getvalue()
                        and admission.refuse_plain_request(
                            conn.sock, time.monotonic() - queued_at, Config.RETRY_AFTER_S)):
                    work_queue.put_back(item)  # a request thread refuses it
                    continue
                keep_alive = True
            except OSError:  # the client went away
                keep_alive = False
            if item.future.set_running_or_notify_cancel():
                item.future.set_result(keep_alive)  # gthread's finish_request acts on it

    def _drain(self, listener):
        while self.nr_conns < self.worker_connections:
            held = self.nr_conns
            super().accept(listener)  # returns quietly when no connection is waiting
            if self.nr_conns == held:
                break

    def _busy_threads(self):
        # Connections not waiting in the poller are with the executor: running or queued.
        return self.nr_conns - len(self.keepalived_conns) - len(self.pending_conns)


class _StampingExecutor(ThreadPoolExecutor):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # The stdlib offers no hook for the queue: its threads take work from _work_queue
        # (put, get, get_nowait), which no thread has touched yet.
        self._work_queue = admission.AdaptiveLifoQueue(Config.MAX_QUEUE_WAIT_S)

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(_run_stamped, time.monotonic(), fn, *args, **kwargs)


def _run_stamped(stamp, fn, *args, **kwargs):
    _local.queued_since = stamp
    try:
        return fn(*args, **kwargs)
    finally:
        _local.queued_since = None
