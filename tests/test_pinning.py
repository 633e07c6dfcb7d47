"""Pinning workers to CPUs: the master's choice, and pinning every thread of a process."""
import os
import subprocess
import sys

import pytest

from dev.harness import ROOT
from runtime import pinning


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
    assert pinning.least_used_cpu([Pinned(cpu) for cpu in pinned], cpus) == expected


def test_pin_process_pins_every_thread_and_threads_started_later():
    # In a child process: pinning the test runner itself would slow the rest of the suite.
    code = (
        "import os, threading, time\n"
        "from runtime import pinning\n"
        "before = threading.Thread(target=time.sleep, args=(2,)); before.start()\n"
        "pinning.pin_process(CPU)\n"
        "after = threading.Thread(target=time.sleep, args=(2,)); after.start()\n"
        "print(sorted({tuple(sorted(os.sched_getaffinity(int(t))))\n"
        "              for t in os.listdir('/proc/self/task')}))\n"
    )
    cpu = max(os.sched_getaffinity(0))
    output = subprocess.run([sys.executable, "-c", code.replace("CPU", str(cpu))], cwd=ROOT,
                            capture_output=True, text=True, check=True, timeout=30).stdout
    assert output.strip() == f"[({cpu},)]"
