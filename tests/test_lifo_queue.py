"""The worker's request queue: FIFO, adaptive LIFO, the expired first, the in-flight limit."""
import queue
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from runtime import internals
from runtime.lifo_queue import CONGESTION_S, AdaptiveLifoQueue

LONG_WAIT_S = 10.0


def congested(items, max_wait_s=LONG_WAIT_S):
    """A queue holding `items` that has not been empty for longer than CONGESTION_S."""
    lifo = AdaptiveLifoQueue(max_wait_s)
    lifo.put("first")
    time.sleep(CONGESTION_S * 1.5)
    for item in items:
        lifo.put(item)
    return lifo


def test_a_queue_that_keeps_emptying_is_fifo():
    lifo = AdaptiveLifoQueue(LONG_WAIT_S)
    for item in "abc":
        lifo.put(item)
    assert [lifo.get() for _ in range(3)] == ["a", "b", "c"]


def test_a_congested_queue_serves_the_newest_first():
    lifo = congested(["b", "c"])
    assert [lifo.get(), lifo.get()] == ["c", "b"]


def test_a_request_that_waited_too_long_goes_first_to_be_refused():
    lifo = congested(["b", "c"], max_wait_s=CONGESTION_S)
    assert lifo.get() == "first" and lifo.get() == "c"


def test_an_empty_queue_raises_empty_without_blocking():
    with pytest.raises(queue.Empty):
        AdaptiveLifoQueue(LONG_WAIT_S).get_nowait()


def test_an_executor_runs_and_shuts_down_on_it():
    executor = ThreadPoolExecutor(2)
    internals.set_work_queue(executor, AdaptiveLifoQueue(LONG_WAIT_S))
    futures = [executor.submit(pow, 2, n) for n in range(20)]
    assert [f.result(timeout=5) for f in futures] == [2**n for n in range(20)]
    executor.shutdown(wait=True, cancel_futures=True)


def test_pop_expired_takes_only_what_waited_too_long_and_put_back_returns_it_first():
    lifo = AdaptiveLifoQueue(max_wait_s=CONGESTION_S)
    lifo.put("old")
    time.sleep(CONGESTION_S * 1.5)
    lifo.put("new")
    [(_, item)] = lifo.pop_expired()
    assert item == "old" and lifo.qsize() == 1
    lifo.put_back(item)
    time.sleep(CONGESTION_S * 1.5)  # "new" has expired too by now
    assert [queued for _, queued in lifo.pop_expired()] == ["new"]  # "old" is not looked at again
    assert lifo.get() == "old"


class FixedLimit:
    """An in-flight limit that does not move, and records what it was told."""

    def __init__(self, current):
        self.current = current
        self.samples = []

    def sample(self, latency_s, in_flight, now):
        self.samples.append((latency_s, in_flight))


def test_a_thread_takes_a_request_only_while_the_limit_has_room():
    lifo = AdaptiveLifoQueue(LONG_WAIT_S, limit=FixedLimit(1))
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
    lifo = AdaptiveLifoQueue(LONG_WAIT_S, limit=FixedLimit(1))
    lifo.put("cancelled")
    lifo.put("next")
    assert lifo.get() == "cancelled"  # its future was cancelled: finished() is never called
    assert lifo.get(timeout=1) == "next" and lifo.in_flight == 1


def test_shutdown_wakes_threads_waiting_for_room():
    lifo = AdaptiveLifoQueue(LONG_WAIT_S, limit=FixedLimit(0))
    lifo.put(None)  # ThreadPoolExecutor.shutdown's wake-up
    assert lifo.get(timeout=1) is None


def test_once_the_queue_stands_a_request_may_wait_only_the_target():
    lifo = AdaptiveLifoQueue(LONG_WAIT_S, target_s=0.005)
    lifo.put("old")
    time.sleep(0.02)
    assert lifo.pop_expired() == []  # not congested yet: the long bound holds
    time.sleep(CONGESTION_S)
    lifo.put("new")
    assert [item for _, item in lifo.pop_expired()] == ["old"]  # congested: 5 ms
    assert lifo.next_expiry() <= time.monotonic() + 0.005


def test_an_expired_request_taken_by_a_thread_is_condemned_and_holds_no_place():
    lifo = AdaptiveLifoQueue(LONG_WAIT_S, target_s=0.005, limit=FixedLimit(5))
    lifo.put("old")
    time.sleep(CONGESTION_S * 1.5)
    lifo.put("new")
    assert lifo.get() == "old" and lifo.condemned() and lifo.in_flight == 0
    assert lifo.get() == "new" and not lifo.condemned() and lifo.in_flight == 1


def test_a_standing_queue_deeper_than_what_threads_take_in_the_target_is_full():
    lifo = AdaptiveLifoQueue(LONG_WAIT_S, target_s=0.005, limit=FixedLimit(1000))
    assert not lifo.full(time.monotonic())  # empty
    for item in range(201):
        lifo.put(item)
    time.sleep(CONGESTION_S)
    for _ in range(200):  # 200 over the next window: about 2 in the 5 ms target
        lifo.get()
    time.sleep(CONGESTION_S)
    lifo.get()  # ends the window
    lifo.put("one")
    time.sleep(CONGESTION_S)
    assert not lifo.full(time.monotonic())  # one waits: taken within the target
    for item in range(9):
        lifo.put(item)
    assert lifo.full(time.monotonic())
