"""Pinning each gunicorn worker to a CPU of its own (PIN_WORKERS, Linux).

A worker runs Python on one core at a time anyway (the GIL), but its threads pass the GIL to one
another hundreds of times a second; when they sit on different cores each pass is a cross-core
wake-up. Pinned to one core, a GET / costs less CPU and a third of the context switches
(docs/performance.md). gunicorn.conf.py's hooks call the two functions
below: the master picks a CPU for each new worker (pre_fork), and the worker pins itself once
its pools are started (post_worker_init), so pool processes keep every CPU.
"""
import os
from collections.abc import Iterable


def supported() -> bool:
    """True where a process can be pinned (Linux)."""
    return hasattr(os, "sched_setaffinity")


def least_used_cpu(workers: Iterable[object], cpus: Iterable[int]) -> int:
    """Of `cpus`, the one the fewest of these workers (with a `cpu` attribute) are pinned to."""
    used = [getattr(worker, "cpu", None) for worker in workers]
    return min(sorted(cpus), key=used.count)


def pin_process(cpu: int) -> None:
    """Pin every thread of this process, and so every thread it starts later, to `cpu`."""
    # sched_setaffinity(0) pins only the calling thread; a new thread inherits its creator's.
    for thread_id in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread_id), {cpu})
        except ProcessLookupError:  # the thread has just exited
            pass
