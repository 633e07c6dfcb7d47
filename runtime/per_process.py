"""State that must not cross a fork: executors, connection pools and sockets.

gunicorn forks workers from its master (after importing the app, with --preload), and a forked
child holds copies of its parent's objects whose threads, pipes and sockets belong to the parent.
Everything of that kind is kept in a PerProcess, which builds it anew on first use in each process,
or in a PerThread, which does so in each thread of each process.
"""
import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

class PerProcess(Generic[T]):
    """A value built by `factory()` on first use in each process."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        # Records the pid its value was built in.
        self._slot = self._new_slot()

    @staticmethod
    def _new_slot() -> Any:
        return _Slot()

    def get(self) -> T:
        """Return this process's (or thread's) value, building it if there is none yet."""
        slot = self._slot
        if getattr(slot, "pid", None) != os.getpid():
            with self._lock:
                if getattr(slot, "pid", None) != os.getpid():
                    slot.value, slot.pid = self._factory(), os.getpid()
        return slot.value

    def peek(self) -> T | None:
        """Return the value built in this process (or thread), or None if there is none."""
        slot = self._slot
        return slot.value if getattr(slot, "pid", None) == os.getpid() else None

    def discard(self, value: T) -> bool:
        """Forget `value` if it is still the current one, so the next get() builds anew; return
        whether it was (when several threads find the same value broken, one replaces it)."""
        with self._lock:
            if self.peek() is not value:
                return False
            self._slot.pid = self._slot.value = None
            return True


class PerThread(PerProcess[T]):
    """A value built by `factory()` on first use in each thread of each process."""

    @staticmethod
    def _new_slot() -> Any:
        return threading.local()  # a slot for each thread


class _Slot:
    pid = None
    value = None
