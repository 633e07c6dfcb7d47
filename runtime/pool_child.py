"""What runs inside a process-pool child, apart from the work itself.

A module of its own so that a child imports only this and the work's module (services.primes),
not pools.py with prometheus_client and the rest of the app, whose memory each child would
otherwise hold (docs/performance.md).
"""
import os
import select
import signal
import threading
import time
from collections.abc import Iterable

OWNER_POLL_S = 1.0


def init(owner_pid: int, cpus: Iterable[int] | None) -> None:
    """Set up a pool process: ignore Ctrl-C, use every CPU, and exit when its owner does."""
    # Ctrl-C reaches the whole process group; the gunicorn worker that owns this child shuts
    # the pool down, so the child need not die mid-task with a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A pool's processes are there to use every core, whichever one their worker is pinned to.
    if cpus:
        os.sched_setaffinity(0, cpus)
    threading.Thread(target=_exit_with_owner, args=(owner_pid,), daemon=True).start()


def _exit_with_owner(owner_pid: int) -> None:
    # If the owning worker is SIGKILLed, nothing tells its pool children: each holds the write
    # end of its own call queue, and (forkserver passes it to every child) of the forkserver's
    # liveness pipe, so children, forkserver and resource tracker would all wait forever.
    # Exiting here lets the forkserver and the resource tracker see EOF and exit too.
    # (CPython issue #111873, open: pool workers stay alive after their parent is killed.)
    try:
        pidfd = os.pidfd_open(owner_pid)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):  # no pidfd (not Linux >= 5.3): poll instead
        while alive(owner_pid):
            time.sleep(OWNER_POLL_S)
        os._exit(0)
    select.select([pidfd], [], [])  # a pidfd turns readable when its process exits
    os._exit(0)


def alive(pid: int) -> bool:
    """Whether process `pid` exists (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and another user's
        pass
    return True
