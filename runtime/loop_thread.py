"""An asyncio event loop in a thread of its own: where a worker's reads wait without a thread each.

A read on the thread pool costs two thread wake-ups besides its own work: one when it is handed
to a pool thread, one when what it waits for arrives, and each wake-up retakes the GIL. On one
loop the waits of every request in flight are timers and sockets of one thread, and a wake-up of
that thread serves all that are ready (docs/performance.md). Only what never blocks the loop
runs on it; a coroutine hands anything that does to the loop's default executor, the caller's
thread pool.
"""
import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")
STOP_TIMEOUT_S = 5.0  # how long stop() waits for cancelled coroutines, then for the thread


class LoopThread:
    """Runs one event loop in a daemon thread; coroutines are submitted from other threads."""

    def __init__(self, name: str, executor: Executor | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        if executor is not None:
            self._loop.set_default_executor(executor)
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Run `coroutine` on the loop, in a copy of the caller's context (its request id);
        return a concurrent.futures.Future whose cancel() cancels it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def stop(self) -> None:
        """Cancel what still runs on the loop, then stop it and its thread. Closing the loop also
        shuts its default executor down (without waiting)."""
        if self._loop.is_closed():
            return
        try:
            self.submit(_cancel_others()).result(STOP_TIMEOUT_S)
        except TimeoutError:  # a coroutine that ignores its cancellation: stop anyway
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_TIMEOUT_S)
        if not self._thread.is_alive():  # a loop still running cannot be closed
            self._loop.close()


async def _cancel_others() -> None:
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
