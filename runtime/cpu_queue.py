"""CPU admission: chunks of CPU work wait here for the executor, cheapest batch first.

    request thread                 CPU queue (cheapest batch first)   executor (processes or Dask)
    --------------                 --------------------------------   ----------------------------
    map_cpu(fn, chunks, deadline, --> admit if the work ahead and its
            costs, priority)          own fit by the deadline (else Saturated: 503)
                                      `size` chunks at a time -------> fn(chunk) in a child
        join in chunk order <------------------------------------------ results
        at the deadline: TimeoutError; queued chunks are cancelled, a running fn stops itself
        BrokenExecutor (a child died, no Dask scheduler): drop it (PoolRestarted: 503); build anew

The stdlib executors queue without bound and in arrival order, so a flood of big batches would
hold every process for seconds and make a small batch wait behind them. CpuQueue gives the
executor no more chunks than it has processes, takes the cheapest batch first (shortest job
first: a small batch waits for one running chunk, not for the flood), and admits a batch only if
its cost and the cost queued ahead of it fit by its deadline: on this worker's processes, and on
the host's cores that every worker's pool shares (runtime/host_cpu.py). pools.Pools.map_cpu is
its caller.
"""
from __future__ import annotations

import functools
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import telemetry
from runtime import host_cpu
from runtime.clock import Monotonic
from runtime.overload import Saturated

# A chunk still running this long after its deadline is taken as lost (a Dask cluster that went
# away may never resolve its futures) and no longer holds a place in the CPU queue.
LOST_AFTER_S = 1.0
# How a chunk's measured time moves the scale of the estimates, and the scale's bounds.
SCALE_WEIGHT = 0.2
MIN_SCALE, MAX_SCALE = 0.5, 50.0
# Only chunks estimated at this much teach the scale: in a smaller one, the hand-off to a pool
# process (about a millisecond) outweighs the work.
LEARN_FROM_S = 0.005


class PoolRestarted(Exception):
    """The CPU executor failed under a call (a pool process was killed, or the Dask cluster lost
    the task or cannot be reached); the next call gets a fresh one."""


class ExecutorFailed(Exception):
    """The Dask cluster raised an error that is not the task's own answer (its workers cannot
    import what the task needs, say); the caller should answer 502."""


class CpuQueue:
    """Chunks of CPU work waiting for the executor: the cheapest batch first, at most `size` in
    the executor at once, and a batch admitted only if it can finish by its deadline, both on
    this worker's `size` processes and on the host's `host_cores`, which every worker's pool
    shares (runtime/host_cpu.py)."""

    def __init__(self, size: int, executor: Callable[[], Executor], host_cores: float) -> None:
        self.size = size
        self.host_cores = host_cores
        self._slot = host_cpu.slot()  # None without a host ledger: this worker alone counts
        # Seconds a chunk takes to run per second of its estimate, as measured (an exponential
        # average): estimates made on an idle core, or of numbers cheaper than they look, would
        # otherwise admit batches that end 504 (issue 24).
        self._scale = 1.0
        self._executor = executor  # returns the current executor (a broken one is replaced)
        # A heap of (priority, order of arrival, Chunk).
        self._waiting: list[tuple[float, int, Chunk]] = []
        self._arrivals = itertools.count()
        self._running: list[Chunk] = []
        self._lock = threading.Lock()
        self._pumping = threading.local()

    def submit_all(self, fn: Callable[[Any], Any], chunks: Sequence[Any], costs: Sequence[float],
                   priority: float, deadline: Monotonic) -> list[Future[Any]]:
        """Queue fn(chunk) for every chunk, or none (Saturated) if the estimated work ahead of
        them and their own `costs` (CPU seconds, scaled by what chunks took lately) cannot be
        done by the deadline on `size` processes, or on the host's cores; return a Future
        each."""
        with self._lock:
            # Cancelled chunks (their request passed its deadline) leave the queue here.
            self._waiting = [entry for entry in self._waiting
                             if not entry[2].future.cancelled()]
            heapq.heapify(self._waiting)
            self._forget_lost()
            ahead = sum(chunk.cost for chunk in self._running)
            ahead += sum(entry[2].cost for entry in self._waiting if entry[0] <= priority)
            scale = self._scale  # under the lock: the chunks' costs and estimates agree
            left, own = deadline - time.monotonic(), sum(costs) * scale
            on_host = ahead + own + host_cpu.others(self._slot)
            if (ahead + own) / self.size > left or on_host / self.host_cores > left:
                telemetry.REJECTED.labels("process_pool_full").inc()
                raise Saturated("process")
            new = [Chunk(fn, chunk, estimate * scale, deadline, estimate)
                   for chunk, estimate in zip(chunks, costs)]
            for chunk in new:
                heapq.heappush(self._waiting, (priority, next(self._arrivals), chunk))
            self._publish()
        self._pump()
        return [chunk.future for chunk in new]

    def cancel_all(self) -> None:
        """Cancel every chunk still waiting (the executor is shutting down)."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
            self._publish()
        for _, _, chunk in waiting:
            chunk.future.cancel()

    def _pump(self) -> None:
        # A chunk that ends at once calls _finish, and so _pump, from inside this loop: the
        # outer call carries on instead, so the stack does not grow with the queue.
        if getattr(self._pumping, "active", False):
            return
        self._pumping.active = True
        try:
            while chunk := self._next():
                try:
                    inner: Future[Any] = self._executor().submit(chunk.fn, chunk.arg)
                except BaseException as exc:  # noqa: BLE001 - a broken or unreachable executor
                    self._ran(chunk)
                    chunk.future.set_exception(exc)
                else:
                    inner.add_done_callback(functools.partial(self._finish, chunk))
        finally:
            self._pumping.active = False

    def _next(self) -> Chunk | None:
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

    def _finish(self, chunk: Chunk, done: Future[Any]) -> None:
        # The executor's future is done: its answer is the chunk's, and its place is free.
        self._ran(chunk)
        if done.cancelled():
            chunk.future.set_exception(PoolRestarted("the task was lost"))
        elif (exc := done.exception()) is not None:
            chunk.future.set_exception(exc)
        else:
            chunk.future.set_result(done.result())
        self._pump()

    def _ran(self, chunk: Chunk) -> None:
        # The chunk holds no place any more; what it took teaches the scale.
        with self._lock:
            if chunk in self._running:  # else _forget_lost took it out already
                self._running.remove(chunk)
            if chunk.started and chunk.estimate >= LEARN_FROM_S:
                # A chunk stopped by its deadline ran at least this long: a lower bound, but
                # the one that matters (it did not fit).
                taken = (time.monotonic() - chunk.started) / chunk.estimate
                self._scale += (min(MAX_SCALE, max(MIN_SCALE, taken)) - self._scale) * SCALE_WEIGHT
            self._publish()

    def _forget_lost(self) -> None:
        now = time.monotonic()
        self._running = [chunk for chunk in self._running
                         if now < chunk.deadline + LOST_AFTER_S]

    def _publish(self) -> None:
        telemetry.POOL_BUSY.labels("process").set(len(self._running))
        telemetry.POOL_QUEUED.labels("process").set(len(self._waiting))
        host_cpu.publish(self._slot, sum(chunk.cost for chunk in self._running) + sum(
            chunk.cost for _, _, chunk in self._waiting if not chunk.future.cancelled()))


@dataclass(eq=False)
class Chunk:
    """One call fn(arg) of a batch, with what it is expected to cost and its Future."""

    fn: Callable[[Any], Any]
    arg: Any
    cost: float  # expected seconds: the estimate, scaled by what chunks took lately
    deadline: float
    estimate: float  # the caller's estimate
    started: float = 0.0
    future: Future[Any] = field(default_factory=Future)
