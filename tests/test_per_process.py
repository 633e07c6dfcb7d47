"""State kept per process (and per thread): built anew after a fork, replaced only once."""
import itertools
import os
import threading

from runtime.per_process import PerProcess, PerThread


def counter():
    """A factory whose every value differs from the last."""
    return itertools.count(1).__next__


def test_a_value_is_built_once_per_process():
    state = PerProcess(counter())
    assert state.peek() is None
    assert state.get() == 1 and state.get() == 1 and state.peek() == 1


def test_a_forked_child_builds_its_own_value():
    state = PerProcess(counter())
    state.get()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports what it sees before and after get()
        os.write(write_end, f"{state.peek()},{state.get()}".encode())
        os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 100)
    os.waitpid(child, 0)
    assert answer == b"None,2" and state.get() == 1


def test_per_thread_values_are_not_shared():
    state = PerThread(counter())
    mine = state.get()
    other = []
    thread = threading.Thread(target=lambda: other.append(state.get()))
    thread.start()
    thread.join()
    assert mine == 1 and other == [2] and state.get() == 1


def test_discard_replaces_only_the_current_value():
    state = PerProcess(counter())
    old = state.get()
    assert state.discard(old) is True
    assert state.discard(old) is False  # a second finder of the same broken value does nothing
    assert state.get() == 2
