"""Who is refused: work routes only; which waiting request a free thread takes (FIFO, adaptive
LIFO, the expired first); the poller's own 503."""
import json
import queue
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from config import settings
from runtime import internals, overload
from runtime.reader import Limits, RequestReader

LONG_WAIT_S = 10.0
IS_WORK = {"/"}.__contains__


def congested(items, max_wait_s=LONG_WAIT_S):
    """A queue holding `items` that has not been empty for longer than CONGESTION_S."""
    lifo = overload.AdaptiveLifoQueue(max_wait_s)
    lifo.put("first")
    time.sleep(overload.CONGESTION_S * 1.5)
    for item in items:
        lifo.put(item)
    return lifo


def test_a_queue_that_keeps_emptying_is_fifo():
    lifo = overload.AdaptiveLifoQueue(LONG_WAIT_S)
    for item in "abc":
        lifo.put(item)
    assert [lifo.get() for _ in range(3)] == ["a", "b", "c"]


def test_a_congested_queue_serves_the_newest_first():
    lifo = congested(["b", "c"])
    assert [lifo.get(), lifo.get()] == ["c", "b"]


def test_a_request_that_waited_too_long_goes_first_to_be_refused():
    lifo = congested(["b", "c"], max_wait_s=overload.CONGESTION_S)
    assert lifo.get() == "first" and lifo.get() == "c"


def test_an_empty_queue_raises_empty_without_blocking():
    with pytest.raises(queue.Empty):
        overload.AdaptiveLifoQueue(LONG_WAIT_S).get_nowait()


def test_an_executor_runs_and_shuts_down_on_it():
    executor = ThreadPoolExecutor(2)
    internals.set_work_queue(executor, overload.AdaptiveLifoQueue(LONG_WAIT_S))
    futures = [executor.submit(pow, 2, n) for n in range(20)]
    assert [f.result(timeout=5) for f in futures] == [2**n for n in range(20)]
    executor.shutdown(wait=True, cancel_futures=True)


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


def test_pop_expired_takes_only_what_waited_too_long_and_put_back_returns_it_first():
    lifo = overload.AdaptiveLifoQueue(max_wait_s=overload.CONGESTION_S)
    lifo.put("old")
    time.sleep(overload.CONGESTION_S * 1.5)
    lifo.put("new")
    [(_, item)] = lifo.pop_expired()
    assert item == "old" and lifo.qsize() == 1
    lifo.put_back(item)
    time.sleep(overload.CONGESTION_S * 1.5)  # "new" has expired too by now
    assert [queued for _, queued in lifo.pop_expired()] == ["new"]  # "old" is not looked at again
    assert lifo.get() == "old"


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


class FixedLimit:
    """An in-flight limit that does not move, and records what it was told."""

    def __init__(self, current):
        self.current = current
        self.samples = []

    def sample(self, latency_s, in_flight, now):
        self.samples.append((latency_s, in_flight))


def test_a_thread_takes_a_request_only_while_the_limit_has_room():
    lifo = overload.AdaptiveLifoQueue(LONG_WAIT_S, limit=FixedLimit(1))
    lifo.put("a")
    lifo.put("b")
    with ThreadPoolExecutor(1) as other:
        assert other.submit(lifo.get).result(timeout=5) == "a" and lifo.in_flight == 1
        with pytest.raises(queue.Empty):
            lifo.get(timeout=0.05)  # "b" waits: the one place is taken
        other.submit(lifo.finished, 0.25).result(timeout=5)  # "a" has run
    assert lifo.in_flight == 0 and lifo.limit.samples == [(0.25, 1)]
    assert lifo.get(timeout=1) == "b"


def test_a_taken_request_that_never_ran_frees_its_place_at_the_next_get():
    lifo = overload.AdaptiveLifoQueue(LONG_WAIT_S, limit=FixedLimit(1))
    lifo.put("cancelled")
    lifo.put("next")
    assert lifo.get() == "cancelled"  # its future was cancelled: finished() is never called
    assert lifo.get(timeout=1) == "next" and lifo.in_flight == 1


def test_shutdown_wakes_threads_waiting_for_room():
    lifo = overload.AdaptiveLifoQueue(LONG_WAIT_S, limit=FixedLimit(0))
    lifo.put(None)  # ThreadPoolExecutor.shutdown's wake-up
    assert lifo.get(timeout=1) is None


def test_once_the_queue_stands_a_request_may_wait_only_the_target():
    lifo = overload.AdaptiveLifoQueue(LONG_WAIT_S, target_s=0.005)
    lifo.put("old")
    time.sleep(0.02)
    assert lifo.pop_expired() == []  # not congested yet: the long bound holds
    time.sleep(overload.CONGESTION_S)
    lifo.put("new")
    assert [item for _, item in lifo.pop_expired()] == ["old"]  # congested: 5 ms
    assert lifo.next_expiry() <= time.monotonic() + 0.005


def test_an_expired_request_taken_by_a_thread_is_condemned_and_holds_no_place():
    lifo = overload.AdaptiveLifoQueue(LONG_WAIT_S, target_s=0.005, limit=FixedLimit(5))
    lifo.put("old")
    time.sleep(overload.CONGESTION_S * 1.5)
    lifo.put("new")
    assert lifo.get() == "old" and lifo.condemned() and lifo.in_flight == 0
    assert lifo.get() == "new" and not lifo.condemned() and lifo.in_flight == 1


def test_a_standing_queue_deeper_than_what_threads_take_in_the_target_is_full():
    lifo = overload.AdaptiveLifoQueue(LONG_WAIT_S, target_s=0.005, limit=FixedLimit(1000))
    assert not lifo.full(time.monotonic())  # empty
    for item in range(201):
        lifo.put(item)
    time.sleep(overload.CONGESTION_S)
    for _ in range(200):  # 200 over the next window: about 2 in the 5 ms target
        lifo.get()
    time.sleep(overload.CONGESTION_S)
    lifo.get()  # ends the window
    lifo.put("one")
    time.sleep(overload.CONGESTION_S)
    assert not lifo.full(time.monotonic())  # one waits: taken within the target
    for item in range(9):
        lifo.put(item)
    assert lifo.full(time.monotonic())
