"""gunicorn's gthread worker, telling the app how long each request waited for a thread and
leaving new connections to a less busy worker; and pinning each worker to a CPU of its own.

gthread hands every readable connection to a ThreadPoolExecutor whose queue has no bound; a
request that waits there is invisible to the app, so under overload latency would grow with no
sign. This worker stamps each hand-off (through `get_thread_pool`, the hook gthread offers for
this), so the app can count the wait against the request's deadline and shed what is too late.

A worker runs Python on one core at a time anyway (the GIL), but its threads pass the GIL to one
another hundreds of times a second; when they sit on different cores each pass is a cross-core
wake-up. Pinned to one core, a GET / here costs 1.8 ms of CPU instead of 2.9 and 22 context
switches instead of 71 (README: Performance). gunicorn.conf.py's hooks call the two functions
below: the master picks a CPU for each new worker, and the worker pins itself once started.
"""
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from gunicorn.workers.gthread import ThreadWorker

_local = threading.local()
ACCEPT_YIELD_S = 0.01


def queued_since():
    """Monotonic time at which gunicorn queued the current request, or None outside this worker."""
    return getattr(_local, "queued_since", None)


class QueueTimedThreadWorker(ThreadWorker):
    """gthread, with the queueing time of each request available to the app, and new
    connections left to a worker with a free thread when this one has none."""

    _yield_until = 0.0  # while accepting is paused for the other workers; 0 when not paused

    def get_thread_pool(self):
        """Return gthread's executor, with each task stamped when it is queued."""
        return _StampingExecutor(max_workers=self.cfg.threads, thread_name_prefix="request")

    def accept(self, listener):
        """Accept a connection; when every thread is busy, first give the other workers
        ACCEPT_YIELD_S to take it, then take all that are still waiting."""
        # Workers share one listening socket and the quickest to wake wins each connection,
        # so a worker pinned beside the load generator got 31 of 200 kept-alive connections
        # here and the other 169, more than its threads: those requests queued and were shed.
        if not self._yield_until:
            if self.cfg.workers > 1 and self._busy_threads() >= self.cfg.threads:
                self._yield_until = time.monotonic() + ACCEPT_YIELD_S
                self.set_accept_enabled(False)
                return
            super().accept(listener)
            return
        self._yield_until = 0.0  # the pause is over (set_accept_enabled waited for it)
        while self.nr_conns < self.worker_connections:
            held = self.nr_conns
            super().accept(listener)  # returns quietly when no connection is waiting
            if self.nr_conns == held:
                break

    def set_accept_enabled(self, enabled):
        """Start or stop accepting; gthread's loop asks again each turn, so a yield ends there."""
        if enabled and not self._accepting and time.monotonic() < self._yield_until:
            return
        super().set_accept_enabled(enabled)

    def _busy_threads(self):
        # Connections not waiting in the poller are with the executor: running or queued.
        return self.nr_conns - len(self.keepalived_conns) - len(self.pending_conns)


class _StampingExecutor(ThreadPoolExecutor):
    def submit(self, fn, /, *args, **kwargs):
        return super().submit(_run_stamped, time.monotonic(), fn, *args, **kwargs)


def _run_stamped(stamp, fn, *args, **kwargs):
    _local.queued_since = stamp
    try:
        return fn(*args, **kwargs)
    finally:
        _local.queued_since = None


def least_used_cpu(workers, cpus):
    """Of `cpus`, the one the fewest of these workers (with a `cpu` attribute) are pinned to."""
    used = [getattr(worker, "cpu", None) for worker in workers]
    return min(sorted(cpus), key=used.count)


def pin_process(cpu):
    """Pin every thread of this process, and so every thread it starts later, to `cpu`."""
    # sched_setaffinity(0) pins only the calling thread; a new thread inherits its creator's.
    for thread_id in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread_id), {cpu})
        except ProcessLookupError:  # the thread has just exited
            pass
