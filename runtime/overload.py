"""Overload: who is refused, where and when. Every refusal for lack of room is decided here or
named here; a route declares whether it does work (@work), and only work is refused.

    where                         when                                        answer
    -----                         ----                                        ------
    worker, accept                as many requests as its in-flight limit     none yet: another
      (runtime/worker.py)           are with its threads                      worker may take it
                                                                                (ACCEPT_YIELD_S)
    worker, poller thread,        the queue stands and already holds what     503, written by
      at hand-off (full)            the threads take in QUEUE_TARGET_MS         the poller
    worker, poller thread,        a plain keep-alive GET of a work route      503, written by
      after each turn               waited past its bound (below)              the poller
    request thread, before Flask  any other work request that waited so long  503, no Flask
      (ShedBeforeApp)
    request thread, in the pools  its reads find the thread pool full, or     503 (Saturated)
      (pools.py)                    its CPU work cannot finish by the deadline
    request thread, in the route  a batch no core could check by the deadline 413
      (services/primes.py)

Which waiting request a free thread takes (AdaptiveLifoQueue, the executor's queue):

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
the queue keeps emptying, QUEUE_TARGET_MS (5 ms) once it has stood for CONGESTION_S, so that a
request that will not be served is told so in milliseconds (issue 24), not after a second. A
queue emptied by refusals still stands: the refused clients are back at once.

The cheapest refusal is at hand-off: a plain GET that arrives while the queue stands and already
holds what the threads will take within the target is answered by the poller without a hand-off,
gunicorn's parser or a thread. Routes that do no work (/healthz, /readyz, /metrics,
/openapi.json) are never refused. A refusal is not free: a client that asks again at once (hey,
wrk) makes a storm of them, which takes CPU the 200s would have had (docs/performance.md).

Slow or broken clients are not overload: runtime/reader.py and runtime/worker.py answer them
(408, 400, 413, 431). The bytes the poller thread writes without gunicorn, theirs and these 503s,
are built here (json_error, raw_response, closing_error).
"""
import collections
import json
import math
import queue
import threading
import time
from http import HTTPStatus

import telemetry

# A queue that has not been empty for this long is congested: the newest request goes first, and
# one that waited QUEUE_TARGET_MS is refused. Longer than a slow request (the seed's GET / takes
# 0.3 s), so that a burst the threads clear within one round is served, not refused: at 0.1 s
# (CoDel's own interval, for millisecond requests), 50 clients arriving at once on 2 x 32
# threads got 503s (tests/test_gunicorn.py).
CONGESTION_S = 0.5


class Saturated(Exception):
    """A pool already holds all the work it may; the caller should answer 503."""

    def __init__(self, pool):
        super().__init__(f"the {pool} pool is full; retry shortly")
        self.pool = pool


def work(view):
    """Declare a view as work (it reads sources or checks primes): a request for it that waited
    too long for a thread is refused. Views without it never are."""
    view.does_work = True
    return view


def work_paths(app):
    """is_work(path) for a Flask app's routes declared @work, by their paths alone: the poller
    thread and ShedBeforeApp decide before any routing."""
    exact, prefixes = set(), []
    for rule in app.url_map.iter_rules():
        if getattr(app.view_functions[rule.endpoint], "does_work", False):
            static, variable, _ = rule.rule.partition("<")
            (prefixes.append if variable else exact.add)(static)
    prefixes = tuple(prefixes)
    return lambda path: path in exact or path.startswith(prefixes)


def init_app(app, arrived_at, condemned):
    """Refuse in front of `app` the work requests that waited too long (ShedBeforeApp), once
    its routes are registered; the worker finds the same test of paths in app.extensions."""
    app.wsgi_app = ShedBeforeApp(app.wsgi_app, app.config, arrived_at, condemned,
                                 work_paths(app))
    app.extensions["overload"] = app.wsgi_app


def work_test_of(wsgi_app):
    """The is_work test of an app set up by init_app; for any other app, nothing is work."""
    shed = getattr(wsgi_app, "extensions", {}).get("overload")
    return shed.is_work if shed else lambda path: False


class ShedBeforeApp:
    """WSGI middleware: answers 503 for a work request that waited past its bound for a thread
    (AdaptiveLifoQueue condemned it, or it waited MAX_QUEUE_WAIT_S), without running Flask."""

    def __init__(self, wsgi_app, config, arrived_at, condemned, is_work):
        self._app = wsgi_app
        self._config = config  # read per request: tests and operators may change it live
        self._arrived_at = arrived_at
        self._condemned = condemned
        self.is_work = is_work

    def __call__(self, environ, start_response):
        """Refuse, or pass the request on to the app."""
        stamp = self._arrived_at()
        if stamp and self.is_work(environ.get("PATH_INFO", "")):
            waited = time.monotonic() - stamp
            if self._condemned() or waited > self._config["MAX_QUEUE_WAIT_S"]:
                return self._refuse(environ, start_response, waited)
        return self._app(environ, start_response)

    def _refuse(self, environ, start_response, waited):
        telemetry.REJECTED.labels("queue_wait").inc()
        headers, body = refusal(waited, self._config["RETRY_AFTER_S"])
        headers.append((telemetry.REQUEST_ID_HEADER,
                        telemetry.set_request_id(environ.get("HTTP_X_REQUEST_ID"))))
        start_response("503 Service Unavailable", headers)
        return [body]


def json_error(status, message, headers=()):
    """(headers, body) of an error answered before Flask, JSON {"error", "status"} as app.py's
    errors are; the caller adds the request id."""
    body = json.dumps({"error": message, "status": status}).encode()
    return [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            *headers], body


def refusal(waited_s, retry_after_s):
    """(headers, body) of the 503 for a request that waited `waited_s` for a thread."""
    return json_error(503, f"overloaded: waited {waited_s:.2f} s for a thread; retry shortly",
                      [("Retry-After", str(retry_after_s))])


def raw_response(status, headers, body):
    """The bytes of an HTTP/1.1 answer written by the poller thread, without gunicorn."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n{head}\r\n".encode("latin-1") + body


def closing_error(status, message):
    """The bytes of an error answered without gunicorn that closes the connection, with a new
    request id (the poller's 408/400/413/431/501/505, gunicorn's parser refusing a request)."""
    headers, body = json_error(status, message, [
        (telemetry.REQUEST_ID_HEADER, telemetry.set_request_id(None)), ("Connection", "close")])
    return raw_response(status, headers, body)


def plain_refusal(request, waited_s, retry_after_s, is_work):
    """The bytes of a 503 for `request` (runtime/reader.Request) if it is a plain GET of a work
    path (HTTP/1.1, keep-alive, no body); None for anything else, which a request thread then
    refuses through gunicorn and ShedBeforeApp.

    Called from the poller thread for requests that waited too long: no hand-off to a thread and
    no second parse."""
    if (request.method != b"GET" or request.version != "1.1" or request.body
            or not request.keep_alive or request.upgrade or not is_work(request.path)):
        return None
    telemetry.REJECTED.labels("queue_wait").inc()
    headers, body = refusal(waited_s, retry_after_s)
    request_id = request.header(b"x-request-id")
    headers.append((telemetry.REQUEST_ID_HEADER, telemetry.set_request_id(
        request_id.decode("latin-1") if request_id else None)))
    return raw_response(503, headers, body)


class AdaptiveLifoQueue:
    """The work queue of a ThreadPoolExecutor (put, get, get_nowait, qsize), and the worker's
    admission: a thread takes a request only while fewer than `limit.current` run (a
    runtime/limit.AdaptiveLimit; None: as many as there are threads). FIFO while the queue keeps
    emptying, newest first once it has stood for CONGESTION_S; a request that waited past its
    bound is taken out to be refused: `max_wait_s` while the queue keeps emptying, `target_s`
    once it stands (CoDel). The bounds may be set later (the worker reads its settings after it
    made its executor)."""

    def __init__(self, max_wait_s=math.inf, target_s=None, limit=None):
        self.max_wait_s = max_wait_s
        self.target_s = max_wait_s if target_s is None else target_s
        self.limit = limit
        self._items = collections.deque()  # (time queued, item), oldest on the left
        # Expired items the poller thread handed back (put_back): a thread refuses them first,
        # and pop_expired does not look at them again.
        self._to_refuse = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._empty_at = time.monotonic()
        # The queue was last emptied by refusals, not by threads: it still stands (a burst of
        # refused clients that ask again at once must not find a queue that looks calm).
        self._emptied_by_refusal = False
        self._in_flight = 0  # items taken under the limit whose run has not finished
        self._closing = False  # the executor is shutting down: its threads take None at once
        self._taken = threading.local()  # what this thread took: admitted, condemned
        # Items threads take per second, counted over windows of CONGESTION_S.
        self._take_rate = 0.0
        self._takes = 0
        self._window_start = time.monotonic()

    @property
    def in_flight(self):
        """Requests admitted under the limit and not finished."""
        return self._in_flight

    def put(self, item, block=True, timeout=None):
        """Queue an item (never blocks: the queue has no bound)."""
        with self._ready:
            now = time.monotonic()
            if not self._items and not self._emptied_by_refusal:
                self._empty_at = now
            self._closing = self._closing or item is None
            self._items.append((now, item))
            if self._admits():  # else a thread would wake only to wait again (issue 24)
                self._ready.notify()

    def get(self, block=True, timeout=None):
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
            self._takes += item is not None
            if now - self._window_start >= CONGESTION_S:
                self._take_rate = self._takes / (now - self._window_start)
                self._window_start, self._takes = now, 0
            return item

    def full(self, now):
        """Whether a request queued now would likely wait past `target_s`: the queue has stood
        for CONGESTION_S and holds what the threads take in `target_s` or more. The poller then
        refuses a plain GET at once, before any hand-off (runtime/worker.py)."""
        return (now - self._empty_at >= CONGESTION_S and self._take_rate
                and len(self._items) >= self._take_rate * self.target_s)

    def condemned(self):
        """Whether the item this thread took last is to be refused (it waited past its bound)."""
        return getattr(self._taken, "condemned", False)

    def finished(self, latency_s):
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

    def _release(self):
        if not getattr(self._taken, "admitted", False):
            return False
        self._taken.admitted = False
        self._in_flight -= 1
        if self._items:
            self._ready.notify()
        return True

    def _admits(self):
        return self._closing or self.limit is None or self._in_flight < self.limit.current

    def wait_bound(self, now):
        """How long a request may wait now: `target_s` once the queue has stood for
        CONGESTION_S, else `max_wait_s`."""
        return self.target_s if now - self._empty_at >= CONGESTION_S else self.max_wait_s

    def next_expiry(self):
        """When the oldest item waiting will have waited past its bound (monotonic), or None."""
        with self._ready:
            if not self._items:
                return None
            oldest = self._items[0][0]
            return min(oldest + self.max_wait_s,
                       max(self._empty_at + CONGESTION_S, oldest + self.target_s))

    def pop_expired(self):
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

    def put_back(self, item):
        """Return an item taken by pop_expired, for a thread to take before any other."""
        with self._ready:
            self._to_refuse.append(item)
            self._ready.notify()

    def get_nowait(self):
        """Take the next item, or raise queue.Empty."""
        return self.get(block=False)

    def qsize(self):
        """Items waiting."""
        return len(self._items) + len(self._to_refuse)
