"""The private state of gunicorn and the stdlib that the worker relies on is still there."""
from runtime import internals


def test_every_private_attribute_the_worker_uses_is_there():
    missing = internals.missing()
    assert not missing, (f"gunicorn or Python moved {', '.join(missing)}: runtime/internals.py "
                         f"and runtime/worker.py must follow before this version is used")


def test_a_moved_attribute_is_named(monkeypatch):
    monkeypatch.setitem(internals.REQUIRED, "TConn", ("sock", "recv_buffer"))
    assert internals.missing() == ["TConn.recv_buffer"]
