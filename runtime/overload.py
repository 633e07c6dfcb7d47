"""Overload: who is refused, where and when. Every refusal for lack of room is decided here or
named here; a route declares whether it does work (@work), and only work is refused.

    where                         when                                        answer
    -----                         ----                                        ------
    worker, accept                as many requests as its in-flight limit     none yet: another
      (runtime/accept.py)           are with its threads                      worker may take it
                                                                                (ACCEPT_YIELD_S)
    worker, poller thread,        the queue stands and already holds what     503, written by
      at hand-off (full)            the threads take in QUEUE_TARGET_MS         the poller
    worker, poller thread,        a plain keep-alive GET of a work route      503, written by
      after each turn               waited past its bound                      the poller
                                    (runtime/lifo_queue.py)                    (PollerRefusals)
    request thread, before Flask  any other work request that waited so long  503, no Flask
      (ShedBeforeApp)
    request thread, in the pools  its reads find the thread pool full, or     503 (Saturated)
      (pools.py)                    its CPU work cannot finish by the deadline
    request thread, in the route  a batch no core could check by the deadline 413
      (services/primes.py)

The cheapest refusal is at hand-off: a plain GET that arrives while the queue stands and already
holds what the threads will take within the target is answered by the poller without a hand-off,
gunicorn's parser or a thread. Routes that do no work (/healthz, /readyz, /metrics,
/openapi.json) are never refused. A refusal is not free: a client that asks again at once (hey,
wrk) makes a storm of them, which takes CPU the 200s would have had (docs/performance.md).

Slow or broken clients are not overload: runtime/wire.py and runtime/channel.py answer them
(408, 400, 413, 431), and runtime/wire.py builds the bytes of every answer the poller writes.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import telemetry
from runtime import internals
from runtime.clock import Monotonic
from runtime.wire import Request, json_error, raw_response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Flask

    from runtime.channel import Channel
    from runtime.lifo_queue import AdaptiveLifoQueue

IsWork = Callable[[str], bool]


class Saturated(Exception):
    """A pool already holds all the work it may; the caller should answer 503."""

    def __init__(self, pool: str) -> None:
        super().__init__(f"the {pool} pool is full; retry shortly")
        self.pool = pool


def work(view: Callable[..., Any]) -> Callable[..., Any]:
    """Declare a view as work (it reads sources or checks primes): a request for it that waited
    too long for a thread is refused. Views without it never are."""
    view.does_work = True  # type: ignore[attr-defined]
    return view


def work_paths(app: Flask) -> IsWork:
    """is_work(path) for a Flask app's routes declared @work, by their paths alone: the poller
    thread and ShedBeforeApp decide before any routing."""
    exact: set[str] = set()
    prefixes: list[str] = []
    for rule in app.url_map.iter_rules():
        if getattr(app.view_functions[rule.endpoint], "does_work", False):
            static, variable, _ = rule.rule.partition("<")
            (prefixes.append if variable else exact.add)(static)
    starts = tuple(prefixes)
    return lambda path: path in exact or path.startswith(starts)


def init_app(app: Flask, arrived_at: Callable[[], float | None],
             condemned: Callable[[], bool]) -> None:
    """Refuse in front of `app` the work requests that waited too long (ShedBeforeApp), once
    its routes are registered; the worker finds the same test of paths through work_test_of."""
    shed = ShedBeforeApp(app.wsgi_app, app.config, arrived_at, condemned, work_paths(app))
    app.wsgi_app = shed  # type: ignore[method-assign]
    app.extensions["overload"] = shed


def work_test_of(wsgi_app: object) -> IsWork:
    """The is_work test of an app set up by init_app; for any other app, nothing is work."""
    shed = getattr(wsgi_app, "extensions", {}).get("overload")
    return shed.is_work if shed else lambda path: False


class ShedBeforeApp:
    """WSGI middleware: answers 503 for a work request that waited past its bound for a thread
    (AdaptiveLifoQueue condemned it, or it waited MAX_QUEUE_WAIT_S), without running Flask."""

    def __init__(self, wsgi_app: WSGIApplication, config: Mapping[str, Any],
                 arrived_at: Callable[[], float | None], condemned: Callable[[], bool],
                 is_work: IsWork) -> None:
        self._app = wsgi_app
        self._config = config  # read per request: tests and operators may change it live
        self._arrived_at = arrived_at
        self._condemned = condemned
        self.is_work = is_work

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        """Refuse, or pass the request on to the app."""
        stamp = self._arrived_at()
        if stamp and self.is_work(environ.get("PATH_INFO", "")):
            waited = time.monotonic() - stamp
            if self._condemned() or waited > self._config["MAX_QUEUE_WAIT_S"]:
                return self._refuse(environ, start_response, waited)
        return self._app(environ, start_response)

    def _refuse(self, environ: WSGIEnvironment, start_response: StartResponse,
                waited: float) -> list[bytes]:
        telemetry.REJECTED.labels("queue_wait").inc()
        headers, body = refusal(waited, self._config["RETRY_AFTER_S"])
        headers.append((telemetry.REQUEST_ID_HEADER,
                        telemetry.set_request_id(environ.get("HTTP_X_REQUEST_ID"))))
        start_response("503 Service Unavailable", headers)
        return [body]


def refusal(waited_s: float, retry_after_s: int) -> tuple[list[tuple[str, str]], bytes]:
    """(headers, body) of the 503 for a request that waited `waited_s` for a thread."""
    return json_error(503, f"overloaded: waited {waited_s:.2f} s for a thread; retry shortly",
                      [("Retry-After", str(retry_after_s))])


def plain_refusal(request: Request, waited_s: float, retry_after_s: int,
                  is_work: IsWork) -> bytes | None:
    """The bytes of a 503 for `request` if it is a plain GET of a work path; None for anything
    else, which a request thread then refuses through gunicorn and ShedBeforeApp."""
    if not request.plain_get or not is_work(request.path):
        return None
    telemetry.REJECTED.labels("queue_wait").inc()
    headers, body = refusal(waited_s, retry_after_s)
    request_id = request.header(b"x-request-id")
    headers.append((telemetry.REQUEST_ID_HEADER, telemetry.set_request_id(
        request_id.decode("latin-1") if request_id else None)))
    return raw_response(503, headers, body)


class PollerRefusals:
    """The 503s the poller thread writes itself, with no thread: at hand-off while the queue is
    full, and after each turn of its loop for what waited past its bound. A refusal here costs a
    look at the request's bytes and a write; through a request thread, gunicorn's parser and the
    WSGI middleware, several times that (docs/performance.md)."""

    def __init__(self, work_queue: AdaptiveLifoQueue, settings: Mapping[str, Any],
                 is_work: IsWork) -> None:
        self._queue = work_queue
        self._settings = settings  # app.config: read when used, as the routes do
        self._is_work = is_work

    def at_hand_off(self, request: Request, arrived: Monotonic, now: Monotonic) -> bytes | None:
        """The 503 for a request just read whole, if the queue is full and it is plain."""
        if not self._queue.full(now):
            return None
        return plain_refusal(request, now - arrived, self._settings["RETRY_AFTER_S"],
                             self._is_work)

    def expired(self, channel_of: Callable[[Any], Channel]) -> None:
        """Refuse every plain GET that waited past its bound; put the rest back for a request
        thread to refuse. The refused task's future ends as if a thread had answered."""
        for queued_at, item in self._queue.pop_expired():
            future, (*_, conn) = internals.task_of(item)  # stamps.run(..., handle, conn)
            channel = channel_of(conn)
            assert channel.request is not None  # read whole before it was queued
            answer = plain_refusal(channel.request, time.monotonic() - queued_at,
                                   self._settings["RETRY_AFTER_S"], self._is_work)
            if not answer:
                self._queue.put_back(item)
                continue
            _settle(future, channel.write(answer))


def _settle(future: Future[Any], keep_alive: bool) -> None:
    # gthread's finish_request acts on the result, as for an answer a thread wrote.
    if future.set_running_or_notify_cancel():
        future.set_result(keep_alive)
