"""The thread pool and the process pool of one serving process.

    request thread                 thread pool (I/O)                   sources
    --------------                 -----------------                   -------
    gather(calls, deadline) --> admit (else Saturated: 503)
                                submit all calls but the last --> file | SQL
        run the last call itself ----------------------------------> HTTP
        wait until done or deadline <-- Future per call <------------ value or error
        cancel what has not started

    request thread                 process pool (CPU, forkserver)
    --------------                 ------------------------------
    map_cpu(fn, chunks, deadline) --> admit (else Saturated: 503)
                                      submit one chunk per task --> fn(chunk) in a child
        join in chunk order, or TimeoutError at the deadline <----- results
        BrokenProcessPool: drop the broken pool (PoolRestarted: 503); the next call builds anew

The stdlib executors queue without bound, so each pool has a gate that admits at most
`size + queue_limit` tasks and refuses the rest at once: under overload a client gets a quick 503
instead of a wait that grows. Both executors are created on first use in the process that uses
them, never inherited across fork: gunicorn forks workers from its master (with --preload after
importing the app), and an executor's threads and pipes do not survive a fork.
"""
import contextvars
import multiprocessing
import os
import threading
import time
import weakref
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import pool_child
import telemetry

_instances = weakref.WeakSet()


@dataclass
class Outcome:
    """What one source call gave: a value, or the error that replaced it, and how long it took."""

    value: object = None
    error: BaseException | None = None
    elapsed_ms: float = 0.0


class Saturated(Exception):
    """A pool already holds all the work it may; the caller should answer 503."""

    def __init__(self, pool):
        super().__init__(f"the {pool} pool is full; retry shortly")
        self.pool = pool


class PoolRestarted(RuntimeError):
    """The process pool died under a call (a child was killed) and has been replaced."""


class _Gate:
    """Counts a pool's tasks, refuses those beyond its capacity, and publishes the counts."""

    def __init__(self, pool, size, queue_limit):
        self.pool = pool
        self.size = size
        self.capacity = size + queue_limit
        self._held = 0
        self._lock = threading.Lock()

    def enter(self, n):
        with self._lock:
            if self._held + n > self.capacity:
                telemetry.REJECTED.labels(f"{self.pool}_pool_full").inc()
                raise Saturated(self.pool)
            self._held += n
            self._publish()

    def leave(self, _future=None):
        with self._lock:
            self._held -= 1
            self._publish()

    def _publish(self):
        # An executor starts a task as soon as one of its `size` workers is free, so the
        # tasks beyond `size` are exactly the ones waiting in its queue.
        telemetry.POOL_BUSY.labels(self.pool).set(min(self._held, self.size))
        telemetry.POOL_QUEUED.labels(self.pool).set(max(0, self._held - self.size))


class Pools:
    """Owns one ThreadPoolExecutor and one ProcessPoolExecutor per process, created lazily."""

    def __init__(self, thread_size, process_size, thread_queue=0, process_queue=0,
                 process_preload=()):
        self.thread_size = thread_size
        self.process_size = process_size
        self._thread_queue = thread_queue
        self._process_queue = process_queue
        self._process_preload = ["pool_child", *process_preload]
        # The CPUs this process may use now, before gunicorn.conf.py pins a worker to one of them.
        self._cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        self._reset()
        _instances.add(self)

    def _reset(self):
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._threads = None
        self._processes = None
        self._thread_gate = _Gate("thread", self.thread_size, self._thread_queue)
        self._process_gate = _Gate("process", self.process_size, self._process_queue)

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
                    telemetry.POOL_SIZE.labels("thread").set(self.thread_size)
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
                        self.process_size, mp_context=context,
                        initializer=pool_child.init, initargs=(os.getpid(), self._cpus),
                    )
                    telemetry.POOL_SIZE.labels("process").set(self.process_size)
        return self._processes

    def gather(self, calls, deadline, concurrent=True):
        """Run each call(deadline) of a {name: call} dict and return {name: Outcome}.

        Concurrently (all but the last on the thread pool, the last in this thread), or one after
        another in this thread. A pooled call still running at the deadline is reported as
        TimeoutError and one not yet started is cancelled; the calls bound their own I/O by the
        deadline, so the one in this thread returns by then too.
        """
        start = time.monotonic()
        if not concurrent:
            return {name: _timed(name, call, deadline) for name, call in calls.items()}
        # The last call runs in this thread, which would otherwise only wait: one hand-off fewer.
        *pooled, (own_name, own_call) = calls.items()
        # Each task runs in a copy of this context, so its log lines carry the request id.
        tasks = [(contextvars.copy_context().run, _timed, name, call, deadline)
                 for name, call in pooled]
        futures = dict(zip([name for name, _ in pooled],
                           self._submit_all(self.thread_pool(), self._thread_gate, tasks)))
        own = _timed(own_name, own_call, deadline)
        wait(futures.values(), timeout=max(0.0, deadline - time.monotonic()))
        outcomes = {}
        for name, future in futures.items():
            if future.done() and not future.cancelled():
                outcomes[name] = future.result()
            else:
                future.cancel()
                outcomes[name] = Outcome(error=TimeoutError("no answer within the deadline"),
                                         elapsed_ms=(time.monotonic() - start) * 1000)
                _record(name, "timeout", outcomes[name])
        outcomes[own_name] = own
        return {name: outcomes[name] for name in calls}

    def map_cpu(self, fn, chunks, deadline):
        """Return [fn(chunk) for chunk in chunks], each chunk in a pool process.

        Raises TimeoutError at the deadline (cancelling chunks not started), Saturated when the
        pool is full, PoolRestarted when a child died.
        """
        pool = self.process_pool()
        try:
            futures = self._submit_all(pool, self._process_gate, [(fn, chunk) for chunk in chunks])
            _, pending = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
            if pending:
                for future in pending:
                    future.cancel()
                raise TimeoutError("the prime check did not finish within the deadline")
            return [future.result() for future in futures]
        except RuntimeError as exc:  # BrokenProcessPool, or "cannot schedule new futures after
            # shutdown" when another thread replaced this broken pool first.
            if not isinstance(exc, BrokenProcessPool) and pool is self._processes:
                raise
            self._replace_broken(pool)
            raise PoolRestarted("a prime-check process died; the pool was rebuilt") from exc

    @staticmethod
    def _submit_all(pool, gate, tasks):
        """Admit len(tasks) through `gate` (or raise Saturated), submit each (fn, *args) task,
        and return their futures; each frees its place in the gate when it is done."""
        gate.enter(len(tasks))
        futures = []
        try:
            for fn, *args in tasks:
                futures.append(pool.submit(fn, *args))
                futures[-1].add_done_callback(gate.leave)
        finally:
            for _ in range(len(tasks) - len(futures)):  # admitted but never submitted
                gate.leave()
        return futures

    def _replace_broken(self, broken):
        with self._lock:
            # Several requests see the same broken pool; only the first one replaces it.
            if self._processes is not broken:
                return
            self._processes = None
        telemetry.POOL_REBUILDS.inc()
        broken.shutdown(wait=False, cancel_futures=True)

    def warm(self):
        """Start both pools, and the process pool's forkserver and all its children, now."""
        self.thread_pool()
        # The executor starts a child for each task that finds none idle, so as many tasks at
        # once start every child: the first CPU-heavy requests need not wait for them.
        pool = self.process_pool()
        for future in [pool.submit(os.getpid) for _ in range(self.process_size)]:
            future.result()

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


def _timed(name, call, deadline):
    start = time.perf_counter()
    try:
        outcome = Outcome(value=call(deadline))
    except Exception as exc:  # a source's failure is reported, not raised, so the others survive
        outcome = Outcome(error=exc)
    outcome.elapsed_ms = (time.perf_counter() - start) * 1000
    _record(name, "ok" if outcome.error is None else "error", outcome)
    return outcome


def _record(name, result, outcome):
    telemetry.SOURCE_SECONDS.labels(name, result).observe(outcome.elapsed_ms / 1000)
    if outcome.error is not None:
        telemetry.log.warning("source %s: %s after %.0f ms: %s", name, result,
                              outcome.elapsed_ms, outcome.error)
