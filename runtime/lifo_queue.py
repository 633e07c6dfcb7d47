"""The worker's request queue (the executor's work queue) and its admission: which waiting
request a free thread takes, and when one has waited too long.

    gthread poller thread       request queue (AdaptiveLifoQueue)       request thread
    ---------------------       ---------------------------------       --------------
    a request is read whole --> full? 503 at once (no hand-off)
                                else stamped, queued               -->  ShedBeforeApp
    after each loop turn:       a thread takes one, while fewer than       condemned:
      pop_expired: a plain        the in-flight limit run                      503, no Flask
      GET gets its 503 here       (runtime/limit.py), in this order:       else: Flask
      (plain_refusal),            the oldest, if it waited past its
      the rest is put back          bound (condemned, to be refused)
                                  the oldest, while the queue keeps
                                    emptying (FIFO: fair, all in time)
                                  the newest, once it has not emptied
                                    for CONGESTION_S (LIFO)

Under overload a FIFO queue makes every request wait as long as the queue is deep: once that
passes the deadline, every request is too late and the goodput collapses. Adaptive LIFO (Maurer,
"Fail at Scale", ACM Queue 2015: Facebook's servers) serves the newest first while the queue is
congested, so what is served is served in time. The bound on a request's wait is CoDel's, as in
the same paper (Nichols and Jacobson, "Controlling Queue Delay", 2012): MAX_QUEUE_WAIT_S while
the queue keeps emptying, QUEUE_TARGET_MS once it has stood for CONGESTION_S, so that a request
that will not be served is told so in milliseconds (issue 24), not after a second. A queue
emptied by refusals still stands: the refused clients are back at once.
"""
from __future__ import annotations

import collections
import math
import queue
import threading
import time
from typing import Any, Protocol

from runtime.clock import Monotonic

# A queue that has not been empty for this long is congested: the newest request goes first, and
# one that waited QUEUE_TARGET_MS is refused. Longer than a slow request (the seed's GET / takes
# 0.3 s), so that a burst the threads clear within one round is served, not refused: CoDel's own
# interval (0.1 s, for millisecond requests) refused such bursts (tests/test_gunicorn.py).
CONGESTION_S = 0.5


class Limit(Protocol):
    """An in-flight limit (runtime/limit.AdaptiveLimit)."""

    @property
    def current(self) -> int:
        """Requests that may run at once now."""

    def sample(self, latency_s: float, in_flight: int, now: float) -> None:
        """Learn from a request that ran `latency_s` with `in_flight` others."""


class _TakeRate:
    """Items threads take per second, counted over windows of CONGESTION_S."""

    def __init__(self) -> None:
        self.per_s = 0.0
        self._takes = 0
        self._window_start = time.monotonic()

    def took(self, now: float) -> None:
        """Count one item taken at `now`."""
        self._takes += 1
        if now - self._window_start >= CONGESTION_S:
            self.per_s = self._takes / (now - self._window_start)
            self._window_start, self._takes = now, 0


class AdaptiveLifoQueue:
    """The work queue of a ThreadPoolExecutor (put, get, get_nowait, qsize), and the worker's
    admission: a thread takes a request only while fewer than `limit.current` run (None: as many
    as there are threads). FIFO while the queue keeps emptying, newest first once it has stood
    for CONGESTION_S; a request that waited past its bound is taken out to be refused:
    `max_wait_s` while the queue keeps emptying, `target_s` once it stands (CoDel). The bounds
    may be set later (the worker reads its settings after it made its executor)."""

    def __init__(self, max_wait_s: float = math.inf, target_s: float | None = None,
                 limit: Limit | None = None) -> None:
        self.max_wait_s = max_wait_s
        self.target_s = max_wait_s if target_s is None else target_s
        self.limit = limit
        self._items: collections.deque[tuple[float, Any]] = collections.deque()  # oldest left
        # Expired items the poller thread handed back (put_back): a thread refuses them first,
        # and pop_expired does not look at them again.
        self._to_refuse: collections.deque[Any] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._empty_at = time.monotonic()
        # The queue was last emptied by refusals, not by threads: it still stands (a burst of
        # refused clients that ask again at once must not find a queue that looks calm).
        self._emptied_by_refusal = False
        self._in_flight = 0  # items taken under the limit whose run has not finished
        self._closing = False  # the executor is shutting down: its threads take None at once
        self._taken = threading.local()  # what this thread took: admitted, condemned
        self._rate = _TakeRate()

    @property
    def in_flight(self) -> int:
        """Requests admitted under the limit and not finished."""
        return self._in_flight

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Queue an item (never blocks: the queue has no bound)."""
        with self._ready:
            now = time.monotonic()
            if not self._items and not self._emptied_by_refusal:
                self._empty_at = now
            self._closing = self._closing or item is None
            self._items.append((now, item))
            if self._admits():  # else a thread would wake only to wait again (issue 24)
                self._ready.notify()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take the next item, as the class says; wait for one, and for room under the limit,
        if `block`."""
        with self._ready:
            self._release()  # the last item this thread took never ran (its future was cancelled)
            if not self._ready.wait_for(lambda: self._to_refuse or self._items and (
                    not block or self._admits()), timeout if block else 0):
                raise queue.Empty
            taken = self._taken
            taken.condemned = bool(self._to_refuse)
            if taken.condemned:
                return self._to_refuse.popleft()
            now = time.monotonic()
            queued_at, item = self._items[0]
            taken.condemned = now - queued_at > self.wait_bound(now)
            if taken.condemned or now - self._empty_at < CONGESTION_S:
                self._items.popleft()
            else:
                _, item = self._items.pop()
            if not self._items and not taken.condemned:
                self._empty_at, self._emptied_by_refusal = now, False
            taken.admitted = block and item is not None and not taken.condemned
            self._in_flight += taken.admitted
            if item is not None:
                self._rate.took(now)
            return item

    def full(self, now: Monotonic) -> bool:
        """Whether a request queued now would likely wait past `target_s`: the queue has stood
        for CONGESTION_S and holds what the threads take in `target_s` or more. The poller then
        refuses a plain GET at once, before any hand-off (runtime/overload.py)."""
        return bool(now - self._empty_at >= CONGESTION_S and self._rate.per_s
                    and len(self._items) >= self._rate.per_s * self.target_s)

    def condemned(self) -> bool:
        """Whether the item this thread took last is to be refused (it waited past its bound)."""
        return getattr(self._taken, "condemned", False)

    def finished(self, latency_s: float) -> None:
        """The item this thread took has run, `latency_s` after its request arrived: its place
        under the limit is free, and the limit learns from the latency."""
        with self._ready:
            in_flight, admitted = self._in_flight, self._release()
        if admitted and self.limit is not None:
            before = self.limit.current
            self.limit.sample(latency_s, in_flight, time.monotonic())
            if self.limit.current > before:
                with self._ready:
                    self._ready.notify(self.limit.current - before)

    def _release(self) -> bool:
        if not getattr(self._taken, "admitted", False):
            return False
        self._taken.admitted = False
        self._in_flight -= 1
        if self._items:
            self._ready.notify()
        return True

    def _admits(self) -> bool:
        return self._closing or self.limit is None or self._in_flight < self.limit.current

    def wait_bound(self, now: float) -> float:
        """How long a request may wait now: `target_s` once the queue has stood for
        CONGESTION_S, else `max_wait_s`."""
        return self.target_s if now - self._empty_at >= CONGESTION_S else self.max_wait_s

    def next_expiry(self) -> Monotonic | None:
        """When the oldest item waiting will have waited past its bound, or None."""
        with self._ready:
            if not self._items:
                return None
            oldest = self._items[0][0]
            return Monotonic(min(oldest + self.max_wait_s,
                                 max(self._empty_at + CONGESTION_S, oldest + self.target_s)))

    def pop_expired(self) -> list[tuple[float, Any]]:
        """Take every request that waited past its bound, oldest first, as (time, item)."""
        with self._ready:
            now = time.monotonic()
            bound = self.wait_bound(now)
            expired = []
            while self._items and self._items[0][1] is not None \
                    and now - self._items[0][0] > bound:
                expired.append(self._items.popleft())
            self._emptied_by_refusal = self._emptied_by_refusal or bool(expired and not self._items)
            return expired

    def put_back(self, item: Any) -> None:
        """Return an item taken by pop_expired, for a thread to take before any other."""
        with self._ready:
            self._to_refuse.append(item)
            self._ready.notify()

    def get_nowait(self) -> Any:
        """Take the next item, or raise queue.Empty."""
        return self.get(block=False)

    def qsize(self) -> int:
        """Items waiting."""
        return len(self._items) + len(self._to_refuse)
