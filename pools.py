"""The thread pool and the process pool of one serving process.

    request thread                thread pool (I/O)                   sources
    --------------                -----------------                   -------
    gather(calls, deadline) --> submit one call per source --> file | SQL | HTTP
        wait until done or deadline <-- Future per source <--------- value or error
        cancel what has not started

    request thread                process pool (CPU, forkserver)
    --------------                ------------------------------
    map_cpu(fn, chunks) --> submit one chunk per task --> fn(chunk) in a child process
        join in chunk order <-- Future per chunk <------- results
        BrokenProcessPool: drop the broken pool; the next call builds a new one

Both executors are created on first use in the process that uses them, never inherited across
fork: gunicorn forks workers from its master (with --preload after importing the app), and an
executor's threads and queues do not survive a fork.
"""
import multiprocessing
import os
import signal
import threading
import time
import weakref
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

_instances = weakref.WeakSet()


@dataclass
class Outcome:
    """What one source call gave: a value, or the error that replaced it, and how long it took."""

    value: object = None
    error: BaseException | None = None
    elapsed_ms: float = 0.0


class PoolRestarted(RuntimeError):
    """The process pool died under a call (a child was killed) and has been replaced."""


class Pools:
    """Owns one ThreadPoolExecutor and one ProcessPoolExecutor per process, created lazily."""

    def __init__(self, thread_size, process_size, process_preload=()):
        self.thread_size = thread_size
        self.process_size = process_size
        self._process_preload = list(process_preload)
        self._reset()
        _instances.add(self)

    def _reset(self):
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._threads = None
        self._processes = None

    def _check_pid(self):
        # After fork the child holds copies of the parent's executor objects whose threads and
        # pipes belong to the parent: forget them (without shutting them down) and start afresh.
        if self._pid != os.getpid():
            self._reset()

    def thread_pool(self):
        """Return this process's thread pool, creating it on first use."""
        self._check_pid()
        if self._threads is None:
            with self._lock:
                if self._threads is None:
                    self._threads = ThreadPoolExecutor(self.thread_size, thread_name_prefix="read")
        return self._threads

    def process_pool(self):
        """Return this process's process pool, creating it on first use."""
        self._check_pid()
        if self._processes is None:
            with self._lock:
                if self._processes is None:
                    # forkserver, not fork: forking a multi-threaded gunicorn worker can copy a
                    # lock held by another thread into the child, which then deadlocks.
                    context = multiprocessing.get_context("forkserver")
                    context.set_forkserver_preload(self._process_preload)
                    self._processes = ProcessPoolExecutor(
                        self.process_size, mp_context=context, initializer=_ignore_sigint
                    )
        return self._processes

    def gather(self, calls, deadline, concurrent=True):
        """Run each call(deadline) of a {name: call} dict and return {name: Outcome}.

        Concurrently on the thread pool, or one after another in this thread; a call still
        running at the deadline is reported as TimeoutError and one not yet started is cancelled.
        """
        if not concurrent:
            return {name: _timed(call, deadline) for name, call in calls.items()}
        pool = self.thread_pool()
        futures = {name: pool.submit(_timed, call, deadline) for name, call in calls.items()}
        wait(futures.values(), timeout=max(0.0, deadline - time.monotonic()))
        outcomes = {}
        for name, future in futures.items():
            if future.done():
                outcomes[name] = future.result()
            else:
                future.cancel()
                outcomes[name] = Outcome(error=TimeoutError("no answer within the deadline"))
        return outcomes

    def map_cpu(self, fn, chunks):
        """Return [fn(chunk) for chunk in chunks], each chunk in a pool process."""
        pool = self.process_pool()
        try:
            futures = [pool.submit(fn, chunk) for chunk in chunks]
            return [future.result() for future in futures]
        except BrokenProcessPool as exc:
            self._replace_broken(pool)
            raise PoolRestarted("a prime-check process died; the pool was rebuilt") from exc

    def _replace_broken(self, broken):
        with self._lock:
            # Several requests see the same broken pool; only the first one replaces it.
            if self._processes is broken:
                self._processes = None
        broken.shutdown(wait=False, cancel_futures=True)

    def warm(self):
        """Start the process pool's forkserver and a first child now, not on a first request."""
        self.process_pool().submit(os.getpid).result()

    def shutdown(self):
        """Stop both executors of this process, waiting for the work they hold."""
        if self._pid != os.getpid():
            return
        with self._lock:
            executors, self._threads, self._processes = (self._threads, self._processes), None, None
        for executor in executors:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)


def shutdown_all():
    """Shut down every Pools of this process (gunicorn's worker_exit hook calls this)."""
    for pools in list(_instances):
        pools.shutdown()


def _ignore_sigint():
    # Ctrl-C reaches the whole process group; the gunicorn worker that owns this child shuts
    # the pool down, so the child need not die mid-task with a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _timed(call, deadline):
    start = time.perf_counter()
    try:
        value, error = call(deadline), None
    except Exception as exc:  # a source's failure is reported, not raised, so the others survive
        value, error = None, exc
    return Outcome(value, error, (time.perf_counter() - start) * 1000)
