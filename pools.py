"""The pools of one serving process: the event loop and thread pool for reads, the process pool
(or a Dask cluster) for CPU work, each made on first use in the process that uses it and never
inherited across a fork (runtime.per_process). Pools is the front: the I/O fan-out is
runtime/fanout.py, the CPU admission runtime/cpu_queue.py.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import (
    BrokenExecutor,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from flask import Flask, current_app

import telemetry
from runtime import dask_executor, fanout, pool_child
from runtime.clock import Monotonic
from runtime.cpu_queue import CpuQueue, ExecutorFailed, PoolRestarted
from runtime.loop_thread import LoopThread
from runtime.overload import Saturated
from runtime.per_process import PerProcess

C = TypeVar("C")  # a chunk of CPU work
R = TypeVar("R")  # what fn makes of it
E = TypeVar("E", bound=Exception)
# The front: app.py takes the pools and the errors it answers from here alone.
__all__ = ["ExecutorFailed", "PoolRestarted", "Pools", "Saturated", "get_pools", "init_app",
           "shutdown_all"]
_instances: weakref.WeakSet[Pools] = weakref.WeakSet()
# The estimated CPU seconds of a chunk whose caller gives no estimate (/readyz's check, tests).
NOMINAL_COST_S = 0.001
_CHILD_DIED = "a prime-check process died; the pool was rebuilt"
# What a client is told when the Dask cluster fails a check; the details (its address, the
# workers' error) go to the log with the request id (issue 23, item 6).
_DASK_LOST = "the Dask cluster is unavailable or lost the check; retry shortly"
_DASK_FAILED = "Dask workers cannot run the prime check"


class Pools:
    """Owns one ThreadPoolExecutor and one CPU executor per process, created lazily: a
    ProcessPoolExecutor, or a Dask cluster's executor (CPU_EXECUTOR)."""

    def __init__(self, thread_size: int, process_size: int, thread_queue: int = 0,
                 process_preload: Sequence[str] = (), cpu_executor: str = "process",
                 connect_timeout_s: float = 1.0, reconnect_after_s: float = 2.0) -> None:
        self.thread_size = thread_size
        self.process_size = process_size
        # The Dask scheduler's address, or None for this process's own pool (ValueError if the
        # setting is neither).
        self.dask_address = dask_executor.parse(cpu_executor)
        self._cpu_tasks = telemetry.CPU_TASKS.labels(
            "process" if self.dask_address is None else dask_executor.SCHEME)
        # The modules the work needs: preloaded by the forkserver, shipped by value to Dask.
        self._work_modules = list(process_preload)
        self._connect_dask = None if self.dask_address is None else dask_executor.Connector(
            self.dask_address, connect_timeout_s, reconnect_after_s, ship=self._work_modules)
        # The CPUs this process may use now, before gunicorn.conf.py pins a worker to one of them.
        self._cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        self._thread_gate = PerProcess(lambda: fanout.Gate("thread", thread_size, thread_queue))
        # A Dask cluster's cores are not this host's: only the per-worker bound applies then.
        host_cores = math.inf if self.dask_address is not None else (
            len(self._cpus) if self._cpus else (os.cpu_count() or 1))
        self._cpu_queue = PerProcess(lambda: CpuQueue(process_size, self.process_pool,
                                                       host_cores))
        self._threads: PerProcess[Executor] = PerProcess(self._new_thread_pool)
        self._processes: PerProcess[Executor] = PerProcess(self._new_cpu_executor)
        self._loop = PerProcess(lambda: LoopThread("read-loop", self.thread_pool()))
        _instances.add(self)

    def _new_thread_pool(self) -> ThreadPoolExecutor:
        telemetry.POOL_SIZE.labels("thread").set(self.thread_size)
        return ThreadPoolExecutor(self.thread_size, thread_name_prefix="read")

    def _new_cpu_executor(self) -> Executor:
        if self._connect_dask is not None:
            return self._connect_dask()
        # forkserver, not fork: forking a multi-threaded gunicorn worker can copy a lock held by
        # another thread into the child, which then deadlocks.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([pool_child.__name__, *self._work_modules])
        telemetry.POOL_SIZE.labels("process").set(self.process_size)
        return ProcessPoolExecutor(self.process_size, mp_context=context,
                                   initializer=pool_child.init, initargs=(os.getpid(), self._cpus))

    def thread_pool(self) -> Executor:
        """Return this process's thread pool, creating it on first use."""
        return self._threads.get()

    def process_pool(self) -> Executor:
        """Return this process's CPU executor (its process pool, or a Dask cluster's executor),
        creating it on first use."""
        return self._processes.get()

    def event_loop(self) -> LoopThread:
        """Return this process's event loop thread (runtime/loop_thread.py), starting it on first
        use; its executor is the thread pool."""
        return self._loop.get()

    def gather(self, calls: fanout.Calls, deadline: Monotonic, *, run_here: str | None = None,
               sequential: bool = False) -> dict[str, fanout.Outcome]:
        """runtime/fanout.gather with this process's thread pool, gate and event loop."""
        return fanout.gather(calls, deadline, thread_pool=self.thread_pool,
                             gate=self._thread_gate.get, event_loop=self.event_loop,
                             run_here=run_here, sequential=sequential)

    def map_cpu(self, fn: Callable[[C], R], chunks: Sequence[C], deadline: Monotonic, *,
                costs: Sequence[float] | None = None, priority: float = 0.0) -> list[R]:
        """Return [fn(chunk) for chunk in chunks], each chunk in a pool process.

        `costs` are the chunks' estimated CPU seconds (by default NOMINAL_COST_S each) and
        `priority` orders batches (the lower, the sooner: a batch's cost). A chunk running at the
        deadline runs on unless fn stops itself by then. Raises TimeoutError at the deadline
        (cancelling chunks not started), Saturated when the work queued ahead leaves no time for
        this batch, PoolRestarted when a child died or the Dask cluster lost the task or cannot
        be reached, ExecutorFailed when the Dask cluster fails it otherwise.
        """
        try:
            pool = self.process_pool()
        except BrokenExecutor as exc:  # no Dask scheduler now
            raise _failed(PoolRestarted, _DASK_LOST, exc) from exc
        if costs is None:
            costs = [NOMINAL_COST_S] * len(chunks)
        futures = self._cpu_queue.get().submit_all(fn, chunks, costs, priority, deadline)
        self._cpu_tasks.inc(len(chunks))
        try:
            return _results_by(futures, deadline)
        except BrokenExecutor as exc:  # a child died, or the Dask Client gave up: build anew
            died = isinstance(exc, BrokenProcessPool)
            if self._drop(pool) and died:
                telemetry.POOL_REBUILDS.inc()
            raise _failed(PoolRestarted, _CHILD_DIED if died else _DASK_LOST, exc) from exc
        except dask_executor.TaskLost as exc:
            raise _failed(PoolRestarted, _DASK_LOST, exc) from exc
        except dask_executor.WorkersFailed as exc:
            raise _failed(ExecutorFailed, _DASK_FAILED, exc) from exc
        except RuntimeError as exc:
            # "cannot schedule new futures after shutdown": another thread found this pool
            # broken and replaced it between our process_pool() and submit().
            if self._processes.peek() is not pool:
                raise PoolRestarted(_CHILD_DIED) from exc
            raise

    def _drop(self, pool: Executor) -> bool:
        """Forget a CPU executor that failed, so the next call builds one anew; whether this
        call did (when several threads find the same one broken, one replaces it)."""
        if not self._processes.discard(pool):
            return False
        pool.shutdown(wait=False, cancel_futures=True)
        return True

    def warm(self) -> None:
        """Start both pools and the event loop, and the process pool's forkserver and all its
        children, now (or connect to the Dask scheduler, if it is there yet)."""
        self.event_loop()
        self._thread_gate.get()
        if self.dask_address is not None:
            try:
                self.process_pool()
            except BrokenExecutor as exc:  # no Dask scheduler yet: the next request tries again
                telemetry.log.warning("%s", exc)
            return
        # The executor starts a child for each task that finds none idle, so as many tasks at
        # once start every child: the first CPU-heavy requests need not wait for them.
        pool = self.process_pool()
        for future in [pool.submit(os.getpid) for _ in range(self.process_size)]:
            future.result()

    def shutdown(self) -> None:
        """Stop the event loop (cancelling its reads) and both executors of this process,
        waiting for the work they hold."""
        queue = self._cpu_queue.peek()
        if queue is not None:
            queue.cancel_all()
        loop = self._loop.peek()
        if loop is not None and self._loop.discard(loop):
            loop.stop()
        for executors in (self._threads, self._processes):
            executor = executors.peek()
            if executor is not None and executors.discard(executor):
                executor.shutdown(wait=True, cancel_futures=True)


def init_app(app: Flask, pools: Pools) -> None:
    """Give `app` its Pools, for get_pools (as flaskr's db.init_app)."""
    app.extensions["pools"] = pools


def get_pools(app: Flask | None = None) -> Pools:
    """The Pools of `app`, by default of the app handling this request (as flaskr's get_db)."""
    return (app or current_app).extensions["pools"]


def shutdown_all() -> None:
    """Shut down every Pools of this process (gunicorn's worker_exit hook calls this)."""
    for pools in list(_instances):
        pools.shutdown()


def _results_by(futures: list[Future[Any]], deadline: Monotonic) -> list[Any]:
    # Every result in order, or TimeoutError at the deadline with the chunks not started
    # cancelled.
    _, pending = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
    if pending:
        for future in pending:
            future.cancel()
        raise TimeoutError("the prime check did not finish within the deadline")
    return [future.result() for future in futures]


def _failed(kind: type[E], public: str, cause: BaseException) -> E:
    """kind(public), for the client; what caused it is logged with the request id."""
    telemetry.log.warning("%s: %s", public, telemetry.describe(cause))
    return kind(public)


