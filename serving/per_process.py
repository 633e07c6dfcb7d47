"""State that must not cross a fork: executors, connection pools and sockets.

gunicorn forks workers from its master (after importing the app, with --preload), and a forked
child holds copies of its parent's objects whose threads, pipes and sockets belong to the parent.
Everything of that kind is kept in a PerProcess, which builds it anew on first use in each process.
"""
import os
import threading


class PerProcess:
    """A value built by `factory()` on first use in each process, or in each thread of it."""

    def __init__(self, factory, *, per_thread=False):
        self._factory = factory
        self._lock = threading.Lock()
        # One slot for the process, or a thread-local one for each thread; each records the pid
        # its value was built in.
        self._slot = threading.local() if per_thread else _Slot()

    def get(self):
        """Return this process's (or thread's) value, building it if there is none yet."""
        slot = self._slot
        if getattr(slot, "pid", None) != os.getpid():
            with self._lock:
                if getattr(slot, "pid", None) != os.getpid():
                    slot.value, slot.pid = self._factory(), os.getpid()
        return slot.value

    def peek(self):
        """Return the value built in this process (or thread), or None if there is none."""
        slot = self._slot
        return slot.value if getattr(slot, "pid", None) == os.getpid() else None

    def discard(self, value):
        """Forget `value` if it is still the current one, so the next get() builds anew; return
        whether it was (when several threads find the same value broken, one replaces it)."""
        with self._lock:
            if self.peek() is not value:
                return False
            self._slot.pid = self._slot.value = None
            return True


class _Slot:
    pid = None
    value = None
