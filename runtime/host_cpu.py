"""The CPU work every worker of this host has admitted, seen by all of them (issue 24, item 4).

Each worker admits a batch of prime checks only if it can finish by its deadline. Counted per
worker, as if the worker had PROCESS_POOL_SIZE cores to itself, two workers both admitted a full
host's worth, and their pools then shared the cores: in a flood, 80 admitted batches still ended
504. So the ledger lives in memory shared by gunicorn's master and every worker it forks: a
slot a worker, in which the worker writes the CPU seconds it holds (queued and running), and
which every worker sums to learn the host's. A worker writes only its own slot, so no lock is
shared between processes on the request path; the master frees a dead worker's slot.

    master (on_starting)       init(): the shared array, before any fork
    worker (pools.py)          slot(): claim a free slot; publish(seconds) after each change;
                               others(): what the other workers hold
    master (child_exit)        release(pid): a dead worker's slot is free, its seconds forgotten
"""
import multiprocessing
import os
from typing import Any

SLOTS = 256  # workers alive at once on one host, at most (gunicorn forks anew as they die)

_pids: Any = None  # shared: the pid owning each slot, 0 if free
_seconds: Any = None  # shared: the CPU seconds each slot's worker holds
_claim_lock: Any = None  # shared: claiming a slot (once a worker)
# This process's own slot, by pid (a forked child claims one of its own).
_slot_of_pid: dict[int, int] = {}


def init() -> None:
    """Create the shared ledger (gunicorn's master, before it forks its workers)."""
    global _pids, _seconds, _claim_lock
    _pids = multiprocessing.RawArray("i", SLOTS)
    _seconds = multiprocessing.RawArray("d", SLOTS)
    _claim_lock = multiprocessing.Lock()


def slot() -> int | None:
    """This process's slot, claimed on first use; None without a ledger."""
    if _pids is None:
        return None
    pid = os.getpid()
    index = _slot_of_pid.get(pid)
    if index is not None:
        return index
    with _claim_lock:
        for index in range(SLOTS):
            if _pids[index] == 0:
                _pids[index], _seconds[index] = pid, 0.0
                _slot_of_pid[pid] = index
                return index
    return None  # more workers than slots: this one counts only its own work


def publish(index: int | None, seconds: float) -> None:
    """Say that this worker holds `seconds` of CPU work now."""
    if index is not None:
        _seconds[index] = seconds


def others(index: int | None) -> float:
    """CPU seconds the other workers of this host hold now."""
    if index is None:
        return 0.0
    return sum(_seconds) - _seconds[index]


def release(pid: int) -> None:
    """Free a dead worker's slot (gunicorn's master, child_exit)."""
    if _pids is None:
        return
    with _claim_lock:
        for index in range(SLOTS):
            if _pids[index] == pid:
                _pids[index], _seconds[index] = 0, 0.0
