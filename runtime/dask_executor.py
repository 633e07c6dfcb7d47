"""CPU work on a Dask cluster through the same concurrent.futures interface as the local pool.

`CPU_EXECUTOR=dask://HOST:PORT` makes pools.py submit prime checks to the Dask scheduler there
instead of to its own process pool. `distributed.Client.get_executor()` is a real
concurrent.futures.Executor, so pools.map_cpu keeps one code path: submit under the gate, wait
until the deadline, cancel what is left.

One Client per gunicorn worker, created on first use after the fork (a Client holds an event
loop thread and sockets, which do not survive a fork), closed in worker_exit with the pools.
Tasks are submitted with pure=False: with Dask's default (pure=True) two requests with the same
chunk would share one task, and a request cancelling its tasks at its deadline would cancel the
other's too. Dask reruns a task whose worker died (up to the scheduler's allowed-failures, 3);
only when that fails too does the request get a 503.

What Dask raises is told apart here, so that pools.py knows only concurrent.futures' terms and
this module's three errors: SchedulerUnavailable (a BrokenExecutor: build a new Client), TaskLost
(the cluster lost the task; the Client is fine: 503) and WorkersFailed (the cluster could not run
the task: 502).

Tasks carry the project's code with them: the modules named in `ship` (services.primes) are
pickled by value (cloudpickle.register_pickle_by_value), so a plain `dask worker` anywhere, with
gmpy2 installed but not this checkout, can run them. Dask pickles a whole task graph with the
stdlib's pickle first, which would name the function by reference (and the scheduler, which
unpickles the graph, could not import it), so each function goes as cloudpickle's bytes
(_ByValue). A worker that cannot run it (no gmpy2) fails the task with WorkersFailed, and the
request gets a 502 naming the cause.
"""
from __future__ import annotations

import functools
import importlib
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import BrokenExecutor, CancelledError, Executor, Future
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
SCHEME = "dask"


class SchedulerUnavailable(BrokenExecutor):
    """The Dask scheduler cannot be reached now."""


class TaskLost(Exception):
    """The cluster lost a task (its workers died, or the connection to the scheduler broke)."""


class WorkersFailed(Exception):
    """The cluster failed a task for its own reasons: its workers cannot import or unpickle
    what the task needs, say."""


def parse(setting: str) -> str | None:
    """The scheduler address of a CPU_EXECUTOR setting, None for the local pool ("process");
    ValueError, saying what is expected, for anything else."""
    if setting == "process":
        return None
    parts = urlsplit(setting)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != SCHEME or not parts.hostname or not port or parts.path.strip("/"):
        raise ValueError(f"CPU_EXECUTOR must be 'process' or '{SCHEME}://HOST:PORT' (a Dask "
                         f"scheduler); got {setting!r}")
    return f"tcp://{parts.hostname}:{port}"


class Connector:
    """Makes a DaskExecutor for the scheduler at `address`, each time it is called; after a
    connect that failed, for `reconnect_after_s` it raises SchedulerUnavailable at once.

    The caller builds its executor under a lock (runtime.per_process), so with the scheduler
    down every thread would otherwise wait out its own connect timeout in turn, and the last
    request's 503 came many seconds late (docs/performance.md). Meanwhile each gets its 503 at
    once, and the first call after the wait tries again: how soon a scheduler that is back is
    used.
    """

    def __init__(self, address: str, connect_timeout_s: float, reconnect_after_s: float,
                 ship: Sequence[str] = ()) -> None:
        self.address = address
        self._connect_timeout_s = connect_timeout_s
        self._reconnect_after_s = reconnect_after_s
        self._ship = ship
        self._failed_at = -math.inf  # time.monotonic() of the last failed connect

    def __call__(self) -> DaskExecutor:
        waited_s = time.monotonic() - self._failed_at
        if waited_s < self._reconnect_after_s:
            raise SchedulerUnavailable(
                f"no Dask scheduler at {self.address} {waited_s:.1f} s ago; trying again "
                f"in {self._reconnect_after_s - waited_s:.1f} s")
        try:
            return DaskExecutor(self.address, self._connect_timeout_s, ship=self._ship)
        except SchedulerUnavailable:
            self._failed_at = time.monotonic()
            raise


class DaskExecutor(Executor):
    """A distributed.Client's executor, and the Client it needs."""

    def __init__(self, address: str, connect_timeout_s: float, ship: Sequence[str] = ()) -> None:
        import cloudpickle
        from distributed import Client
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker

        self.address = address
        for name in (__name__, *ship):
            cloudpickle.register_pickle_by_value(importlib.import_module(name))
        # What a task's result raises when the cluster lost it. (Not OSError: map_cpu's own
        # TimeoutError at the deadline is one, and must stay a 504.)
        self._lost_errors = (KilledWorker, CommClosedError, CancelledError)
        try:
            self._client = Client(address, timeout=connect_timeout_s, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise SchedulerUnavailable(f"no Dask scheduler at {address}: {exc}") from exc
        self._executor = self._client.get_executor(pure=False)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Submit fn(*args, **kwargs) to the cluster and return a Future of its result, which
        raises TaskLost or WorkersFailed when the cluster failed; SchedulerUnavailable when
        disconnected."""
        if self._client.status != "running":
            raise SchedulerUnavailable(f"the Dask scheduler at {self.address} is "
                                       f"{self._client.status}")
        try:
            task = self._executor.submit(_ByValue(fn), *args, **kwargs)
        except RuntimeError as exc:  # the Client closed between the check and the submit
            raise SchedulerUnavailable(f"the Dask scheduler at {self.address}: {exc}") from exc
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()  # queued on the cluster: no longer cancellable here
        task.add_done_callback(functools.partial(self._settle, future))
        return future

    def _settle(self, future: Future[Any], task: Any) -> None:
        exc = CancelledError() if task.cancelled() else task.exception()
        if exc is None:
            future.set_result(task.result())
        elif isinstance(exc, self._lost_errors):
            future.set_exception(TaskLost(f"the Dask cluster lost the task: "
                                          f"{type(exc).__name__}: {exc}"))
        else:
            # A task's own errors are the cluster's here: check_batch raises none of its own.
            future.set_exception(WorkersFailed(f"Dask workers cannot run the prime check: "
                                               f"{type(exc).__name__}: {exc}"))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop submitting, and close the Client (its tasks are then forgotten)."""
        try:
            self._executor.shutdown(wait=wait and not cancel_futures)
        except Exception:  # noqa: BLE001 - a Client whose scheduler is gone cannot cancel its
            pass  # tasks (ClosedClientError); with the scheduler gone there is nothing to stop
        self._client.close()


class _ByValue:
    """A function that any pickler sends by value: as a call of _call_pickled (itself sent by
    value) with cloudpickle's bytes of the function."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Never called on a worker (it receives _call_pickled), but Client.submit refuses
        # anything not callable.
        return self._fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Callable[[bytes], Any], tuple[bytes]]:
        import cloudpickle

        return cloudpickle.loads, (cloudpickle.dumps(functools.partial(_call_pickled,
                                                                       _pickled(self._fn))),)


def _call_pickled(payload: bytes, *args: Any) -> Any:
    # Runs on a Dask worker. The function is unpickled here, in the task, not when the worker
    # receives the task: a worker that cannot import what it needs (gmpy2) then fails the task
    # with the ImportError, where unpickling it on receipt would kill the worker.
    import cloudpickle

    return cloudpickle.loads(payload)(*args)


@functools.lru_cache(maxsize=16)
def _pickled(fn: Callable[..., Any]) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(fn)
