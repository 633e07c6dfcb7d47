"""The private state of gunicorn and the stdlib that the worker relies on is still there."""
from runtime import internals


def test_every_private_attribute_the_worker_uses_is_there():
    missing = internals.missing()
    assert not missing, (f"gunicorn or Python moved {', '.join(missing)}: runtime/internals.py "
                         f"and runtime/worker.py must follow before this version is used")


def test_a_moved_attribute_is_named(monkeypatch):
    monkeypatch.setitem(internals.REQUIRED, "TConn", ("sock", "recv_buffer"))
    assert internals.missing() == ["TConn.recv_buffer"]


class _WorkItem314:
    """CPython 3.14's work item: one task, (fn, args, kwargs), from WorkerContext.resolve_task."""

    def __init__(self, future, task):
        self.future = future
        self.task = task


class _WorkItemUnknown:
    """A shape no CPython this project knows has."""

    def __init__(self, future, call):
        self.future = future
        self.call = call


def test_the_work_item_s_arguments_are_found_in_3_8_to_3_13_and_3_14(monkeypatch):
    from concurrent.futures.thread import _WorkItem

    assert internals.task_of(_WorkItem("f", print, ("h", "conn"), {})) == ("f", ("h", "conn"))
    monkeypatch.setattr(internals, "_WorkItem", _WorkItem314)
    monkeypatch.setattr(internals, "_args_of", internals.WORK_ITEM_SHAPES[("future", "task")])
    assert internals.missing() == []
    assert internals.task_of(_WorkItem314("f", (print, ("h", "conn"), {}))) == ("f", ("h", "conn"))


def test_an_unknown_work_item_shape_fails_loudly(monkeypatch):
    monkeypatch.setattr(internals, "_WorkItem", _WorkItemUnknown)
    assert internals.missing() == ["_WorkItem.__init__('future', 'call')"]
