"""Arrival stamps: when each request arrived, seen by the app, and its place under the in-flight
limit returned when its run ends.

gthread hands every readable connection to a ThreadPoolExecutor whose queue has no bound; a
request that waits there is invisible to the app, so under overload latency would grow with no
sign. StampingExecutor stamps each hand-off with when its request arrived: when the kernel
received its last bytes (TCP_INFO, `arrival`), for under load they wait in the socket for the
poller thread too (uncounted, they made 200s that reached the client after its deadline:
docs/performance.md). The app counts the wait (`arrived_at`) against the request's deadline and
sheds what is already too late; the queue (runtime/lifo_queue.py) learns each request's latency
from its arrival, not from when a thread took it.

    poller thread                 StampingExecutor                  request thread
    -------------                 ----------------                  --------------
    submit_at(arrived, handle,    work item: run(queue, stamp,  --> arrived_at() == stamp
      conn)                 -->     handle, conn), queued in        condemned(): refuse it
                                    the AdaptiveLifoQueue           handle(conn) ...
                                                                    queue.finished(latency)
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from runtime import internals
from runtime.clock import Monotonic
from runtime.lifo_queue import AdaptiveLifoQueue

T = TypeVar("T")
_local = threading.local()
# struct tcp_info (linux/tcp.h): 8 one-byte fields, then u32s; tcpi_last_data_recv is the 12th.
_TCPI_LAST_DATA_RECV = 8 + 11 * 4
_TCP_INFO_BYTES = 104


def arrived_at() -> Monotonic | None:
    """When the current request arrived, or None outside a stamped task."""
    return getattr(_local, "arrived_at", None)


def condemned() -> bool:
    """Whether the current request waited in the queue past its bound, and is to be refused."""
    return getattr(_local, "condemned", False)


def arrival(sock: socket.socket, now: Monotonic) -> Monotonic:
    """When the last bytes read from `sock` reached this host: `now` less the milliseconds
    TCP_INFO says have passed since (Linux), else `now`."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
        return Monotonic(now - struct.unpack_from("I", info, _TCPI_LAST_DATA_RECV)[0] / 1000)
    except (AttributeError, OSError, struct.error):  # no TCP_INFO here, or not a TCP socket
        return now


class StampingExecutor(ThreadPoolExecutor):
    """gthread's executor: each task stamped with when its request arrived, and queued in an
    AdaptiveLifoQueue (`work_queue`)."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        # No thread has started yet. The waits that expire a request, and the in-flight limit,
        # are set with the settings.
        self.work_queue = AdaptiveLifoQueue()
        internals.set_work_queue(self, self.work_queue)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run fn(*args, **kwargs), stamped now (a request gthread itself read)."""
        return self.submit_at(time.monotonic(), fn, *args, **kwargs)

    def submit_at(self, stamp: float, fn: Callable[..., T], /, *args: Any,
                  **kwargs: Any) -> Future[T]:
        """Run fn(*args, **kwargs), for a request that arrived at `stamp`."""
        return super().submit(run, self.work_queue, stamp, fn, *args, **kwargs)


def run(work_queue: AdaptiveLifoQueue, stamp: float, fn: Callable[..., T], *args: Any,
        **kwargs: Any) -> T:
    """Run a task in a request thread, its stamp and verdict visible to the app meanwhile."""
    _local.arrived_at = stamp
    _local.condemned = work_queue.condemned()
    try:
        return fn(*args, **kwargs)
    finally:
        _local.arrived_at = None
        # The limit learns from what the client waited: from arrival, not from this start.
        work_queue.finished(time.monotonic() - stamp)
