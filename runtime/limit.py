"""How many requests a worker lets run at once: a limit that follows the CPU.

A fixed number of request threads is either too few (the host's cores idle while every thread
waits on a slow source) or too many (past what the cores can serve, every admitted request gets
slower, until all of them miss the deadline: issue 24). So a worker has threads for the most the
host could carry (WEB_THREADS), and admits only `AdaptiveLimit.current` requests at once
(runtime/lifo_queue.AdaptiveLifoQueue): the rest wait in the queue, newest first, and are refused
within milliseconds once the queue stands.

The signal is latency against the deadline: the mean time the requests of a short window took,
from their arrival to the end of their run. While it stays within `target_s` (LIMIT_TARGET x
REQUEST_TIMEOUT_S), admitting more costs nothing that matters; past it, the worker's core is
saturated, each request admitted beyond it only adds its CPU to everyone's wait, and the tail
nears the deadline: the limit shrinks until the mean is back within the target (AIMD, as TCP's
congestion window).

    every WINDOW_S (and WINDOW_SAMPLES requests at least), from the requests that ended in it:
      mean > target_s                             limit x DECREASE (down to `minimum`)
      else, the limit was reached in the window   limit + sqrt(limit) (up to `maximum`)
      else                                        unchanged (the clients held concurrency down)

Why against the deadline, not against the least latency seen (TCP Vegas, Netflix's VegasLimit
and Gradient2, Envoy's adaptive concurrency): those hold concurrency at the knee, where the core
is just saturated, which is right when clients arrive at their own pace. When clients send their
next request as soon as they get an answer (hey, a retrying client, a browser's reload), each
request kept out comes straight back as a refusal that costs CPU, and a limit at the knee
served fewer 200s in time than one that guards the deadline (docs/performance.md). The
queue's CoDel refusals (runtime/overload.py) bound the wait.
"""
import math
import threading
import time

WINDOW_S = 0.1
WINDOW_SAMPLES = 10
DECREASE = 0.9


class AdaptiveLimit:
    """An in-flight limit between `minimum` and `maximum`, updated from request latencies so
    that their mean stays within `target_s`."""

    def __init__(self, minimum: int, maximum: int, target_s: float,
                 initial: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.target_s = target_s
        self._limit = float(maximum if initial is None else initial)
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._sum = 0.0
        self._count = 0
        self._reached = False

    @property
    def current(self) -> int:
        """Requests that may run at once now."""
        return int(self._limit)

    def sample(self, latency_s: float, in_flight: int, now: float) -> None:
        """Count one request that took `latency_s` from its arrival, as `in_flight` ran."""
        with self._lock:
            self._sum += latency_s
            self._count += 1
            self._reached = self._reached or in_flight >= self.current
            if self._count < WINDOW_SAMPLES or now - self._window_start < WINDOW_S:
                return
            if self._sum / self._count > self.target_s:
                self._limit = max(self.minimum, self._limit * DECREASE)
            elif self._reached:
                self._limit = min(self.maximum, self._limit + math.sqrt(self._limit))
            self._window_start, self._sum, self._count, self._reached = now, 0.0, 0, False
