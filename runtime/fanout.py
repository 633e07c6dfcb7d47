"""I/O fan-out: the reads of one request, side by side, joined by the deadline.

    request thread                 event loop | thread pool (I/O)      sources
    --------------                 ------------------------------      -------
    gather(calls, deadline,    --> coroutines: one task on the loop --> file | SQLite | waits
           run_here=name)          blocking calls: admit (else 503),
                                   a pool thread each -------------> SQL server | any
        run calls[name] itself ------------------------------------> HTTP
        wait until done or deadline <-- a Future each <------------- value or error
        cancel what has not ended

Reads that only wait are coroutines on one event loop thread (runtime/loop_thread.py): a wake-up
of that thread serves every read that is ready, where each pool thread takes a wake-up, and the
GIL, of its own. They pass no gate: the request threads that wait for them bound their number.
The stdlib's thread pool queues without bound, so it has a Gate that admits at most `size +
queue_limit` tasks and refuses the rest at once. pools.Pools owns the loop, pool and gate of a
process and calls gather() with them.
"""
import asyncio
import contextvars
import inspect
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass
from typing import Any

import telemetry
from runtime.clock import Monotonic
from runtime.loop_thread import LoopThread
from runtime.overload import Saturated

# A source's read: call(deadline), a plain function or a coroutine function.
Call = Callable[[Monotonic], Any]
Calls = Mapping[str, Call]


@dataclass
class Outcome:
    """What one source call gave: a value, or the error that replaced it; when it started
    (time.monotonic()) and how long it took."""

    value: object = None
    error: BaseException | None = None
    elapsed_ms: float = 0.0
    started: float = 0.0


class Gate:
    """Counts a pool's tasks, refuses those beyond its capacity, and publishes the counts."""

    def __init__(self, pool: str, size: int, queue_limit: int) -> None:
        self.pool = pool
        self.size = size
        self.capacity = size + queue_limit
        self._held = 0
        self._lock = threading.Lock()
        self._publish()  # zeros until the first task: a pool that idles is still on /metrics

    def enter(self, n: int) -> None:
        with self._lock:
            if self._held + n > self.capacity:
                telemetry.REJECTED.labels(f"{self.pool}_pool_full").inc()
                raise Saturated(self.pool)
            self._held += n
            self._publish()

    def leave(self, _future: Future[Any] | None = None) -> None:
        with self._lock:
            self._held -= 1
            self._publish()

    def _publish(self) -> None:
        # An executor starts a task as soon as one of its `size` workers is free, so the
        # tasks beyond `size` are exactly the ones waiting in its queue.
        telemetry.POOL_BUSY.labels(self.pool).set(min(self._held, self.size))
        telemetry.POOL_QUEUED.labels(self.pool).set(max(0, self._held - self.size))


def gather(calls: Calls, deadline: Monotonic, *, thread_pool: Callable[[], Executor],
           gate: Callable[[], Gate], event_loop: Callable[[], LoopThread],
           run_here: str | None = None, sequential: bool = False) -> dict[str, Outcome]:
    """Run each call(deadline) of a {name: call} dict and return {name: Outcome}, in order;
    `thread_pool`, `gate` and `event_loop` return the process's own (made on first use).

    A coroutine function runs on the event loop, any other call on the thread pool, while
    this thread runs `calls[run_here]` itself (it would otherwise only wait: one hand-off
    fewer); with sequential=True this thread runs them all, one after another (none may be a
    coroutine function then). A call still running at the deadline is reported as
    TimeoutError and cancelled; the calls bound their own I/O by the deadline, so one run in
    this thread returns by then too.
    """
    start = time.monotonic()
    if sequential:
        return {name: timed(name, call, deadline) for name, call in calls.items()}
    others = [name for name in calls if name != run_here]
    awaited = {name: calls[name] for name in others if inspect.iscoroutinefunction(calls[name])}
    pooled = [name for name in others if name not in awaited]
    futures: dict[str, Future[Outcome]] = {}
    if pooled:
        # Each task runs in a copy of this context, so its log lines carry the request id
        # (so does a coroutine: run_coroutine_threadsafe copies it).
        tasks = [(contextvars.copy_context().run, timed, name, calls[name], deadline)
                 for name in pooled]
        futures = dict(zip(pooled, submit_all(thread_pool(), gate(), tasks)))
    waits: list[Future[Any]] = list(futures.values())
    arrived: dict[str, Outcome] = {}  # the loop's outcomes, each as it ends
    if awaited:
        waits.append(event_loop().submit(_gather_async(awaited, deadline, arrived)))
    outcomes = {}
    if run_here is not None:
        outcomes[run_here] = timed(run_here, calls[run_here], deadline)
    wait(waits, timeout=max(0.0, deadline - time.monotonic()))
    if awaited:
        waits[-1].cancel()  # a no-op once all have ended
        arrived = dict(arrived)  # what ended by now; a later one is a timeout
    outcomes.update(_joined(others, futures, arrived, start))
    return {name: outcomes[name] for name in calls}


def _joined(names: list[str], futures: Mapping[str, Future[Outcome]],
            arrived: Mapping[str, Outcome], start: float) -> dict[str, Outcome]:
    # At the deadline: each call's Outcome, or a timeout (and its future cancelled).
    outcomes = {}
    for name in names:
        future = futures.get(name)
        if name in arrived:
            outcomes[name] = arrived[name]
        elif future is not None and future.done() and not future.cancelled():
            outcomes[name] = future.result()
        else:
            if future is not None:
                future.cancel()
            outcomes[name] = ended(name, start, result="timeout",
                                   error=TimeoutError("no answer within the deadline"))
    return outcomes


def submit_all(pool: Executor, gate: Gate, tasks: Sequence[tuple[Any, ...]]) -> list[Future[Any]]:
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


def timed(name: str, call: Call, deadline: Monotonic) -> Outcome:
    """The Outcome of call(deadline), named `name`; a failure is reported, not raised."""
    start = time.monotonic()
    try:
        value = call(deadline)
    except Exception as exc:  # noqa: BLE001 - reported, not raised, so the others survive
        return ended(name, start, error=exc)
    return ended(name, start, value=value)


async def _gather_async(calls: Calls, deadline: Monotonic,
                        arrived: dict[str, Outcome]) -> None:
    async def timed(name: str, call: Call) -> None:
        start = time.monotonic()
        try:
            value = await call(deadline)
        except Exception as exc:  # noqa: BLE001 - as in timed
            arrived[name] = ended(name, start, error=exc)
        else:
            arrived[name] = ended(name, start, value=value)

    await asyncio.gather(*(timed(name, call) for name, call in calls.items()))


def ended(name: str, start: float, value: Any = None, error: BaseException | None = None,
          result: str | None = None) -> Outcome:
    """The Outcome of a call that started at `start` and ends now, recorded."""
    outcome = Outcome(value=value, error=error, started=start,
                      elapsed_ms=(time.monotonic() - start) * 1000)
    record(name, result or ("ok" if error is None else "error"), outcome)
    return outcome


def record(name: str, result: str, outcome: Outcome) -> None:
    """Count an Outcome in /metrics, and log it if it failed."""
    telemetry.SOURCE_SECONDS.labels(name, result).observe(outcome.elapsed_ms / 1000)
    if outcome.error is not None:
        telemetry.log.warning("source %s: %s after %.0f ms: %s", name, result,
                              outcome.elapsed_ms, telemetry.describe(outcome.error))
