"""The gthread worker's queue stamps, and pinning workers to CPUs."""
import os
import subprocess
import sys
import threading
import time

import pytest

import worker
from bench.harness import ROOT


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


class Pinned:
    """A stand-in for a gunicorn worker object, as pre_fork sees the live ones."""

    def __init__(self, cpu=None):
        if cpu is not None:
            self.cpu = cpu


@pytest.mark.parametrize("pinned, cpus, expected", [
    ([], {0, 1}, 0),
    ([0], {0, 1}, 1),
    ([0, 1], {0, 1}, 0),
    ([1, 1, 0], {0, 1}, 0),
    ([None, 2], {2, 3}, 3),  # a worker started with PIN_WORKERS off counts for no CPU
    ([0, 1], {0, 1, 2, 3}, 2),
])
def test_a_new_worker_gets_the_least_used_cpu(pinned, cpus, expected):
    assert worker.least_used_cpu([Pinned(cpu) for cpu in pinned], cpus) == expected


def test_pin_process_pins_every_thread_and_threads_started_later():
    # In a child process: pinning the test runner itself would slow the rest of the suite.
    code = (
        "import os, threading, time, worker\n"
        "before = threading.Thread(target=time.sleep, args=(2,)); before.start()\n"
        "worker.pin_process(CPU)\n"
        "after = threading.Thread(target=time.sleep, args=(2,)); after.start()\n"
        "print(sorted({tuple(sorted(os.sched_getaffinity(int(t))))\n"
        "              for t in os.listdir('/proc/self/task')}))\n"
    )
    cpu = max(os.sched_getaffinity(0))
    output = subprocess.run([sys.executable, "-c", code.replace("CPU", str(cpu))], cwd=ROOT,
                            capture_output=True, text=True, check=True, timeout=30).stdout
    assert output.strip() == f"[({cpu},)]"
