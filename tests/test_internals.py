"""The private state of gunicorn and the stdlib that the worker relies on is still there."""
from serving import internals


def test_every_private_attribute_the_worker_uses_is_there():
    missing = internals.missing()
    assert not missing, (f"gunicorn or Python moved {', '.join(missing)}: serving/internals.py "
                         f"and serving/worker.py must follow before this version is used")


def test_a_moved_attribute_is_named(monkeypatch):
    monkeypatch.setitem(internals.REQUIRED, "TConn", ("sock", "recv_buffer"))
    assert internals.missing() == ["TConn.recv_buffer"]
