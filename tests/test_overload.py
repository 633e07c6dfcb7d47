"""Who is refused: work routes only; the poller's own 503."""
import json

import pytest

from config import settings
from runtime import overload
from runtime.wire import Limits, RequestReader

LONG_WAIT_S = 10.0
IS_WORK = {"/"}.__contains__


@pytest.mark.parametrize("path, work", [
    ("/", True), ("/is_prime/7", True), ("/is_prime", True),
    ("/is_prime/", True), ("/healthz", False), ("/readyz", False), ("/metrics", False),
    ("/openapi.json", False), ("/missing", False),
])
def test_only_routes_declared_work_are_refused(app, path, work):
    assert app.extensions["overload"].is_work(path) is work


def test_a_new_route_declared_work_is_refused_by_its_path(app):
    @app.get("/report/<name>")
    @overload.work
    def report(name):
        return name

    @app.get("/status")
    def status():
        return "ok"

    is_work = overload.work_paths(app)
    assert is_work("/report/x") and not is_work("/status") and not is_work("/reports")


def test_an_app_set_up_without_overload_has_no_work():
    assert overload.work_test_of(object())("/") is False


def parsed(request_bytes):
    """The Request the poller's reader makes of `request_bytes`."""
    reader = RequestReader(Limits.from_settings(settings()), 0.0)
    assert reader.feed(request_bytes, 0.0)
    return reader.take()


def test_a_plain_get_gets_a_503_of_its_own():
    request = parsed(b"GET /?mode=concurrent HTTP/1.1\r\nHost: x\r\nX-Request-ID: r-1\r\n\r\n")
    head, _, body = overload.plain_refusal(request, 1.23, 1, IS_WORK).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in head
    assert b"X-Request-ID: r-1" in head
    assert json.loads(body) == {"error": "overloaded: waited 1.23 s for a thread; retry shortly",
                                "status": 503}


@pytest.mark.parametrize("request_bytes", [
    b"POST /is_prime HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n[7]",  # a body
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",  # never refused
    b"GET / HTTP/1.0\r\n\r\n",  # no keep-alive by default
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
])
def test_anything_else_is_left_for_a_request_thread(request_bytes):
    assert overload.plain_refusal(parsed(request_bytes), 1.5, 1, IS_WORK) is None
