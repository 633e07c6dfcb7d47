"""The gthread worker's queue stamps."""
import threading
import time

import worker


def test_tasks_see_when_they_were_queued():
    executor = worker._StampingExecutor(max_workers=1)
    try:
        gate = threading.Event()
        executor.submit(gate.wait)  # keeps the only thread busy, so the next task queues
        queued_at = time.monotonic()
        later = executor.submit(worker.queued_since)
        time.sleep(0.2)
        gate.set()
        stamp = later.result(timeout=5)
        assert abs(stamp - queued_at) < 0.05 and time.monotonic() - stamp >= 0.2
    finally:
        executor.shutdown()


def test_outside_a_stamped_task_there_is_no_stamp():
    assert worker.queued_since() is None
    executor = worker._StampingExecutor(max_workers=1)
    try:
        executor.submit(worker.queued_since).result(timeout=5)
        assert executor.submit(lambda: None).result(timeout=5) is None
    finally:
        executor.shutdown()


def test_the_worker_class_uses_the_stamping_executor():
    class Cfg:
        threads = 3

    fake = worker.QueueTimedThreadWorker.__new__(worker.QueueTimedThreadWorker)
    fake.cfg = Cfg()
    pool = fake.get_thread_pool()
    try:
        assert isinstance(pool, worker._StampingExecutor) and pool._max_workers == 3
    finally:
        pool.shutdown()
