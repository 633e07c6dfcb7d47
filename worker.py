"""gunicorn's gthread worker, telling the app how long each request waited for a thread.

gthread hands every readable connection to a ThreadPoolExecutor whose queue has no bound; a
request that waits there is invisible to the app, so under overload latency would grow with no
sign. This worker stamps each hand-off (through `get_thread_pool`, the hook gthread offers for
this), so the app can count the wait against the request's deadline and shed what is too late.
"""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from gunicorn.workers.gthread import ThreadWorker

_local = threading.local()


def queued_since():
    """Monotonic time at which gunicorn queued the current request, or None outside this worker."""
    return getattr(_local, "queued_since", None)


class QueueTimedThreadWorker(ThreadWorker):
    """gthread, with the queueing time of each request available to the app."""

    def get_thread_pool(self):
        """Return gthread's executor, with each task stamped when it is queued."""
        return _StampingExecutor(max_workers=self.cfg.threads, thread_name_prefix="request")


class _StampingExecutor(ThreadPoolExecutor):
    def submit(self, fn, /, *args, **kwargs):
        return super().submit(_run_stamped, time.monotonic(), fn, *args, **kwargs)


def _run_stamped(stamp, fn, *args, **kwargs):
    _local.queued_since = stamp
    try:
        return fn(*args, **kwargs)
    finally:
        _local.queued_since = None
