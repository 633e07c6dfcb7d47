"""Overload: who is refused, where and when. Every refusal for lack of room is decided here or
named here; a route declares whether it does work (@work), and only work is refused.

    where                         when                                        answer
    -----                         ----                                        ------
    worker, accept                every thread of this worker is busy         none yet: another
      (runtime/worker.py)                                                       worker may take it
                                                                                (ACCEPT_YIELD_S)
    worker, poller thread         a plain keep-alive GET of a work route      503, written by
      (plain_refusal)               waited MAX_QUEUE_WAIT_S in the queue        the poller
    request thread, before Flask  any other work request that waited so long  503, no Flask
      (ShedBeforeApp)
    request thread, in the pools  its reads find the thread pool full, or     503 (Saturated)
      (pools.py)                    its CPU work cannot finish by the deadline
    request thread, in the route  a batch no core could check by the deadline 413
      (services/primes.py)

Which waiting request a free thread takes (AdaptiveLifoQueue, the executor's queue):

    gthread poller thread       request queue (AdaptiveLifoQueue)       request thread
    ---------------------       ---------------------------------       --------------
    a request is readable -->   stamped, queued                    -->  ShedBeforeApp
    after each loop turn:       a thread takes, in this order:             waited too long:
      pop_expired: a plain        the oldest, if it waited past                503, no Flask
      GET gets its 503 here         MAX_QUEUE_WAIT_S (to be refused)       else: Flask
      (plain_refusal),            the oldest, while the queue keeps
      the rest is put back          emptying (FIFO: fair, all in time)
                                  the newest, once it has not emptied
                                    for CONGESTION_S (LIFO)

Under overload a FIFO queue makes every request wait as long as the queue is deep: once that
passes the deadline, every request is too late and the goodput collapses. Adaptive LIFO (Maurer,
"Fail at Scale", ACM Queue 2015: Facebook's servers) serves the newest first while the queue is
congested, so what is served is served in time, and the requests left at the bottom are refused
once they have waited MAX_QUEUE_WAIT_S, which bounds every answer. As in CoDel (Nichols and
Jacobson, "Controlling Queue Delay", 2012), congestion is a queue that has not emptied for a
while, and what is bounded is the time a request waits, not the length of the queue.

Refusing at arrival instead (a concurrency limit, as in Netflix's concurrency-limits or Envoy's
adaptive concurrency) answers faster, but a client that retries at once (wrk does, ignoring
Retry-After) then spends the CPU on a storm of refusals: measured here, it gave fewer 200s at
1000 and 2000 clients (docs/performance.md). A refused request waits, and costs one 503 that
never reaches Flask: 0.15 ms of CPU against 1.94 ms for a 200, most of them answered by the
poller thread without a hand-off or gunicorn's parser. Routes that do no work (/healthz,
/readyz, /metrics, /openapi.json) are never refused.

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

# A queue that has not been empty for this long is congested, and the newest request goes first.
CONGESTION_S = 0.1


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


def init_app(app, arrived_at):
    """Refuse in front of `app` the work requests that waited too long (ShedBeforeApp), once
    its routes are registered; the worker finds the same test of paths in app.extensions."""
    app.wsgi_app = ShedBeforeApp(app.wsgi_app, app.config, arrived_at, work_paths(app))
    app.extensions["overload"] = app.wsgi_app


def work_test_of(wsgi_app):
    """The is_work test of an app set up by init_app; for any other app, nothing is work."""
    shed = getattr(wsgi_app, "extensions", {}).get("overload")
    return shed.is_work if shed else lambda path: False


class ShedBeforeApp:
    """WSGI middleware: answers 503 for a work request that waited longer than MAX_QUEUE_WAIT_S
    for a thread, without running Flask (AdaptiveLifoQueue makes the others the ones that wait)."""

    def __init__(self, wsgi_app, config, arrived_at, is_work):
        self._app = wsgi_app
        self._config = config  # read per request: tests and operators may change it live
        self._arrived_at = arrived_at
        self.is_work = is_work

    def __call__(self, environ, start_response):
        """Refuse, or pass the request on to the app."""
        stamp = self._arrived_at()
        if stamp and self.is_work(environ.get("PATH_INFO", "")):
            waited = time.monotonic() - stamp
            if waited > self._config["MAX_QUEUE_WAIT_S"]:
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
    """The work queue of a ThreadPoolExecutor (put, get, get_nowait, qsize): FIFO while it keeps
    emptying, newest first once congested, and an item that waited past `max_wait_s` first of all
    (its request is then refused at once). `max_wait_s` may be set later (the worker reads its
    settings after it made its executor)."""

    def __init__(self, max_wait_s=math.inf):
        self.max_wait_s = max_wait_s
        self._items = collections.deque()  # (time queued, item), oldest on the left
        # Expired items the poller thread handed back (put_back): a thread refuses them first,
        # and pop_expired does not look at them again.
        self._to_refuse = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._empty_at = time.monotonic()

    def put(self, item, block=True, timeout=None):
        """Queue an item (never blocks: the queue has no bound)."""
        with self._ready:
            now = time.monotonic()
            if not self._items:
                self._empty_at = now
            self._items.append((now, item))
            self._ready.notify()

    def get(self, block=True, timeout=None):
        """Take the next item, as the class says; wait for one if `block`."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._items or self._to_refuse,
                                        timeout if block else 0):
                raise queue.Empty
            if self._to_refuse:
                return self._to_refuse.popleft()
            now = time.monotonic()
            queued_at, item = self._items[0]
            if (now - self._empty_at < CONGESTION_S
                    or now - queued_at > self.max_wait_s):
                self._items.popleft()
            else:
                _, item = self._items.pop()
            if not self._items:
                self._empty_at = now
            return item

    def pop_expired(self):
        """Take every request that waited past `max_wait_s`, oldest first, as (time, item)."""
        with self._ready:
            now = time.monotonic()
            expired = []
            while self._items and self._items[0][1] is not None \
                    and now - self._items[0][0] > self.max_wait_s:
                expired.append(self._items.popleft())
            if expired and not self._items:
                self._empty_at = now
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
