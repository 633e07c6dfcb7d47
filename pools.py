"""The event loop, the thread pool and the process pool of one serving process.

    request thread                 event loop | thread pool (I/O)      sources
    --------------                 ------------------------------      -------
    gather(calls, deadline,    --> coroutines: one task on the loop --> file | SQLite | waits
           run_here=name)          blocking calls: admit (else 503),
                                   a pool thread each -------------> SQL server | any
        run calls[name] itself ------------------------------------> HTTP
        wait until done or deadline <-- a Future each <------------- value or error
        cancel what has not ended

    request thread                 CPU queue (cheapest batch first)   executor (processes or Dask)
    --------------                 --------------------------------   ----------------------------
    map_cpu(fn, chunks, deadline, --> admit if the work ahead and its
            costs, priority)          own fit by the deadline (else Saturated: 503)
                                      `size` chunks at a time -------> fn(chunk) in a child
        join in chunk order <------------------------------------------ results
        at the deadline: TimeoutError; queued chunks are cancelled, a running fn stops itself
        BrokenExecutor (a child died, no Dask scheduler): drop it (PoolRestarted: 503); build anew

Reads that only wait are coroutines on one event loop thread (runtime/loop_thread.py): a wake-up
of that thread serves every read that is ready, where each pool thread takes a wake-up, and the
GIL, of its own. They pass no gate: the request threads that wait for them bound their number.

The stdlib executors queue without bound and in arrival order, so a flood of big batches would
hold every process for seconds and make a small batch wait behind them. The thread pool has a gate
that admits at most `size + queue_limit` tasks and refuses the rest at once. CPU work waits in a
queue of this module's, which gives the executor no more chunks than it has processes, takes the
cheapest batch first (shortest job first: a small batch waits for one running chunk, not for the
flood), and admits a batch only if its cost and the cost queued ahead of it fit in the cores by
its deadline. The loop, executors, gates and queues are per process (runtime.per_process):
created on first use in the process that uses them, never inherited across a fork.
"""
import asyncio
import contextvars
import heapq
import inspect
import itertools
import math
import multiprocessing
import os
import threading
import time
import weakref
from concurrent.futures import (BrokenExecutor, Future, ProcessPoolExecutor, ThreadPoolExecutor,
                                wait)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import telemetry
from runtime import dask_executor, host_cpu, pool_child
from runtime.loop_thread import LoopThread
from runtime.per_process import PerProcess

_instances = weakref.WeakSet()
# The estimated CPU seconds of a chunk whose caller gives no estimate (/readyz's check, tests).
NOMINAL_COST_S = 0.001
# A chunk still running this long after its deadline is taken as lost (a Dask cluster that went
# away may never resolve its futures) and no longer holds a place in the CPU queue.
LOST_AFTER_S = 1.0
# How a chunk's measured time moves the scale of the estimates, and the scale's bounds.
SCALE_WEIGHT = 0.2
MIN_SCALE, MAX_SCALE = 0.5, 50.0
# Only chunks estimated at this much teach the scale: in a smaller one, the hand-off to a pool
# process (about a millisecond) outweighs the work.
LEARN_FROM_S = 0.005
_CHILD_DIED = "a prime-check process died; the pool was rebuilt"
# What a client is told when the Dask cluster fails a check; the details (its address, the
# workers' error) go to the log with the request id (issue 23, item 6).
_DASK_LOST = "the Dask cluster is unavailable or lost the check; retry shortly"
_DASK_FAILED = "Dask workers cannot run the prime check"


@dataclass
class Outcome:
    """What one source call gave: a value, or the error that replaced it; when it started
    (time.monotonic()) and how long it took."""

    value: object = None
    error: BaseException | None = None
    elapsed_ms: float = 0.0
    started: float = 0.0


class Saturated(Exception):
    """A pool already holds all the work it may; the caller should answer 503."""

    def __init__(self, pool):
        super().__init__(f"the {pool} pool is full; retry shortly")
        self.pool = pool


class PoolRestarted(Exception):
    """The CPU executor failed under a call (a pool process was killed, or the Dask cluster lost
    the task or cannot be reached); the next call gets a fresh one."""


class ExecutorFailed(Exception):
    """The Dask cluster raised an error that is not the task's own answer (its workers cannot
    import what the task needs, say); the caller should answer 502."""


class _Gate:
    """Counts a pool's tasks, refuses those beyond its capacity, and publishes the counts."""

    def __init__(self, pool, size, queue_limit):
        self.pool = pool
        self.size = size
        self.capacity = size + queue_limit
        self._held = 0
        self._lock = threading.Lock()
        self._publish()  # zeros until the first task: a pool that idles is still on /metrics

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


class _CpuQueue:
    """Chunks of CPU work waiting for the executor: the cheapest batch first, at most `size` in
    the executor at once, and a batch admitted only if it can finish by its deadline, both on
    this worker's `size` processes and on the host's `host_cores`, which every worker's pool
    shares (runtime/host_cpu.py)."""

    def __init__(self, size, executor, host_cores):
        self.size = size
        self.host_cores = host_cores
        self._slot = host_cpu.slot()  # None without a host ledger: this worker alone counts
        # Seconds a chunk takes to run per second of its estimate, as measured (an exponential
        # average): estimates made on an idle core, or of numbers cheaper than they look, would
        # otherwise admit batches that end 504 (issue 24).
        self._scale = 1.0
        self._executor = executor  # returns the current executor (a broken one is replaced)
        self._waiting = []  # a heap of (priority, order of arrival, _Chunk)
        self._arrivals = itertools.count()
        self._running = []
        self._lock = threading.Lock()
        self._pumping = threading.local()

    def submit_all(self, fn, chunks, costs, priority, deadline):
        """Queue fn(chunk) for every chunk, or none (Saturated) if the estimated work ahead of
        them and their own `costs` (CPU seconds) cannot be done on `size` processes by the
        deadline; return a Future each."""
        costs = [cost * self._scale for cost in costs]
        with self._lock:
            # Cancelled chunks (their request passed its deadline) leave the queue here.
            self._waiting = [entry for entry in self._waiting
                             if not entry[2].future.cancelled()]
            heapq.heapify(self._waiting)
            self._forget_lost()
            ahead = sum(chunk.cost for chunk in self._running)
            ahead += sum(entry[2].cost for entry in self._waiting if entry[0] <= priority)
            left, own = deadline - time.monotonic(), sum(costs)
            on_host = ahead + own + host_cpu.others(self._slot)
            if (ahead + own) / self.size > left or on_host / self.host_cores > left:
                telemetry.REJECTED.labels("process_pool_full").inc()
                raise Saturated("process")
            new = [_Chunk(fn, chunk, cost, deadline, cost / self._scale)
                   for chunk, cost in zip(chunks, costs)]
            for chunk in new:
                heapq.heappush(self._waiting, (priority, next(self._arrivals), chunk))
            self._publish()
        self._pump()
        return [chunk.future for chunk in new]

    def cancel_all(self):
        """Cancel every chunk still waiting (the executor is shutting down)."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
            self._publish()
        for _, _, chunk in waiting:
            chunk.future.cancel()

    def _pump(self):
        # A chunk that ends at once calls _finish, and so _pump, from inside this loop: the
        # outer call carries on instead, so the stack does not grow with the queue.
        if getattr(self._pumping, "active", False):
            return
        self._pumping.active = True
        try:
            while chunk := self._next():
                try:
                    inner = self._executor().submit(chunk.fn, chunk.arg)
                except BaseException as exc:  # noqa: BLE001 - a broken or unreachable executor
                    self._finish(chunk, exc=exc)
                else:
                    inner.add_done_callback(lambda done, chunk=chunk: self._finish(chunk, done))
        finally:
            self._pumping.active = False

    def _next(self):
        with self._lock:
            self._forget_lost()
            while self._waiting and len(self._running) < self.size:
                _, _, chunk = heapq.heappop(self._waiting)
                if chunk.future.set_running_or_notify_cancel():
                    chunk.started = time.monotonic()
                    self._running.append(chunk)
                    self._publish()
                    return chunk
            return None

    def _finish(self, chunk, done=None, exc=None):
        with self._lock:
            if chunk in self._running:  # else _forget_lost took it out already
                self._running.remove(chunk)
            if chunk.started and chunk.estimate >= LEARN_FROM_S:
                # A chunk stopped by its deadline ran at least this long: a lower bound, but
                # the one that matters (it did not fit).
                taken = (time.monotonic() - chunk.started) / chunk.estimate
                self._scale += (min(MAX_SCALE, max(MIN_SCALE, taken)) - self._scale) * SCALE_WEIGHT
            self._publish()
        if exc is None:
            exc = done.exception() if not done.cancelled() else PoolRestarted("the task was lost")
        if exc is None:
            chunk.future.set_result(done.result())
        else:
            chunk.future.set_exception(exc)
        self._pump()

    def _forget_lost(self):
        now = time.monotonic()
        self._running = [chunk for chunk in self._running
                         if now < chunk.deadline + LOST_AFTER_S]

    def _publish(self):
        telemetry.POOL_BUSY.labels("process").set(len(self._running))
        telemetry.POOL_QUEUED.labels("process").set(len(self._waiting))
        host_cpu.publish(self._slot, sum(chunk.cost for chunk in self._running) + sum(
            chunk.cost for _, _, chunk in self._waiting if not chunk.future.cancelled()))


@dataclass(eq=False)
class _Chunk:
    fn: object
    arg: object
    cost: float  # expected seconds: the estimate, scaled by what chunks took lately
    deadline: float
    estimate: float  # the caller's estimate
    started: float = 0.0
    future: Future = None

    def __post_init__(self):
        self.future = Future()


class Pools:
    """Owns one ThreadPoolExecutor and one CPU executor per process, created lazily: a
    ProcessPoolExecutor, or a Dask cluster's executor (CPU_EXECUTOR)."""

    def __init__(self, thread_size, process_size, thread_queue=0, process_preload=(),
                 cpu_executor="process", connect_timeout_s=1.0, reconnect_after_s=2.0):
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
        self._thread_gate = PerProcess(lambda: _Gate("thread", thread_size, thread_queue))
        # A Dask cluster's cores are not this host's: only the per-worker bound applies then.
        host_cores = math.inf if self.dask_address is not None else (
            len(self._cpus) if self._cpus else (os.cpu_count() or 1))
        self._cpu_queue = PerProcess(lambda: _CpuQueue(process_size, self.process_pool,
                                                       host_cores))
        self._threads = PerProcess(self._new_thread_pool)
        self._processes = PerProcess(self._new_cpu_executor)
        self._loop = PerProcess(lambda: LoopThread("read-loop", self.thread_pool()))
        _instances.add(self)

    def _new_thread_pool(self):
        telemetry.POOL_SIZE.labels("thread").set(self.thread_size)
        return ThreadPoolExecutor(self.thread_size, thread_name_prefix="read")

    def _new_cpu_executor(self):
        if self.dask_address is not None:
            return self._connect_dask()
        # forkserver, not fork: forking a multi-threaded gunicorn worker can copy a lock held by
        # another thread into the child, which then deadlocks.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([pool_child.__name__, *self._work_modules])
        telemetry.POOL_SIZE.labels("process").set(self.process_size)
        return ProcessPoolExecutor(self.process_size, mp_context=context,
                                   initializer=pool_child.init, initargs=(os.getpid(), self._cpus))

    def thread_pool(self):
        """Return this process's thread pool, creating it on first use."""
        return self._threads.get()

    def process_pool(self):
        """Return this process's CPU executor (its process pool, or a Dask cluster's executor),
        creating it on first use."""
        return self._processes.get()

    def event_loop(self):
        """Return this process's event loop thread (runtime/loop_thread.py), starting it on first
        use; its executor is the thread pool."""
        return self._loop.get()

    def gather(self, calls, deadline, *, run_here=None, sequential=False):
        """Run each call(deadline) of a {name: call} dict and return {name: Outcome}, in order.

        A coroutine function runs on the event loop, any other call on the thread pool, while
        this thread runs `calls[run_here]` itself (it would otherwise only wait: one hand-off
        fewer); with sequential=True this thread runs them all, one after another (none may be a
        coroutine function then). A call still running at the deadline is reported as
        TimeoutError and cancelled; the calls bound their own I/O by the deadline, so one run in
        this thread returns by then too.
        """
        start = time.monotonic()
        if sequential:
            return {name: _timed(name, call, deadline) for name, call in calls.items()}
        others = [name for name in calls if name != run_here]
        awaited = {name: calls[name] for name in others if inspect.iscoroutinefunction(calls[name])}
        pooled = [name for name in others if name not in awaited]
        futures = {}
        if pooled:
            # Each task runs in a copy of this context, so its log lines carry the request id
            # (so does a coroutine: run_coroutine_threadsafe copies it).
            tasks = [(contextvars.copy_context().run, _timed, name, calls[name], deadline)
                     for name in pooled]
            futures = dict(zip(pooled, self._submit_all(self.thread_pool(),
                                                        self._thread_gate.get(), tasks)))
        waits = list(futures.values())
        arrived = {}  # the loop's outcomes, each as it ends
        if awaited:
            waits.append(self.event_loop().submit(_gather_async(awaited, deadline, arrived)))
        outcomes = {}
        if run_here is not None:
            outcomes[run_here] = _timed(run_here, calls[run_here], deadline)
        wait(waits, timeout=max(0.0, deadline - time.monotonic()))
        if awaited:
            waits[-1].cancel()  # a no-op once all have ended
            arrived = dict(arrived)  # what ended by now; a later one is a timeout
        for name in others:
            future = futures.get(name)
            if name in arrived:
                outcomes[name] = arrived[name]
            elif future is not None and future.done() and not future.cancelled():
                outcomes[name] = future.result()
            else:
                if future is not None:
                    future.cancel()
                outcomes[name] = _ended(name, start, result="timeout",
                                        error=TimeoutError("no answer within the deadline"))
        return {name: outcomes[name] for name in calls}

    def map_cpu(self, fn, chunks, deadline, *, costs=None, priority=0.0):
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
            _, pending = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
            if pending:
                for future in pending:
                    future.cancel()
                raise TimeoutError("the prime check did not finish within the deadline")
            return [future.result() for future in futures]
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

    def _drop(self, pool):
        """Forget a CPU executor that failed, so the next call builds one anew; whether this
        call did (when several threads find the same one broken, one replaces it)."""
        if not self._processes.discard(pool):
            return False
        pool.shutdown(wait=False, cancel_futures=True)
        return True

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

    def warm(self):
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

    def shutdown(self):
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


def shutdown_all():
    """Shut down every Pools of this process (gunicorn's worker_exit hook calls this)."""
    for pools in list(_instances):
        pools.shutdown()


def _timed(name, call, deadline):
    start = time.monotonic()
    try:
        value = call(deadline)
    except Exception as exc:  # a source's failure is reported, not raised, so the others survive
        return _ended(name, start, error=exc)
    return _ended(name, start, value=value)


async def _gather_async(calls, deadline, arrived):
    async def timed(name, call):
        start = time.monotonic()
        try:
            value = await call(deadline)
        except Exception as exc:  # as in _timed
            arrived[name] = _ended(name, start, error=exc)
        else:
            arrived[name] = _ended(name, start, value=value)

    await asyncio.gather(*(timed(name, call) for name, call in calls.items()))


def _failed(kind, public, cause):
    """kind(public), for the client; what caused it is logged with the request id."""
    telemetry.log.warning("%s: %s", public, telemetry.describe(cause))
    return kind(public)


def _ended(name, start, value=None, error=None, result=None):
    """The Outcome of a call that started at `start` and ends now, recorded."""
    outcome = Outcome(value=value, error=error, started=start,
                      elapsed_ms=(time.monotonic() - start) * 1000)
    _record(name, result or ("ok" if error is None else "error"), outcome)
    return outcome


def _record(name, result, outcome):
    telemetry.SOURCE_SECONDS.labels(name, result).observe(outcome.elapsed_ms / 1000)
    if outcome.error is not None:
        telemetry.log.warning("source %s: %s after %.0f ms: %s", name, result,
                              outcome.elapsed_ms, telemetry.describe(outcome.error))
