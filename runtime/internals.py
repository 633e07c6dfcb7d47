"""The private state of gunicorn and of the stdlib that the worker relies on, in one place.

Neither gthread nor ThreadPoolExecutor offers the hooks the worker needs: a queue of its own for
the executor's threads, the connection a queued task is for, whether the worker is accepting.
The functions below reach into private state for them, and nothing else in the project does.
The worker, a subclass of gthread's ThreadWorker, also uses its parent's undocumented attributes
(nr_conns, poller, tpool, ...) and TConn's fields directly, as any subclass does.

REQUIRED names every one of those attributes; `missing()` says which are gone, and
tests/test_internals.py fails naming them when an upgrade of gunicorn or Python moves one
(gunicorn's version is pinned in requirements.txt and its lock).
"""
import inspect
import socket
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.thread import _WorkItem
from typing import Any

from gunicorn.config import Config as GunicornConfig
from gunicorn.workers.gthread import TConn, ThreadWorker

REQUIRED = {
    "ThreadPoolExecutor": ("_work_queue",),
    "_WorkItem": ("future",),
    "ThreadWorker": ("nr_conns", "poller", "tpool", "method_queue", "_accepting",
                     "keepalived_conns", "pending_conns", "worker_connections",
                     "set_accept_enabled",
                     "wait_for_and_dispatch_events", "finish_request", "murder_keepalived",
                     "_cap_keepalive", "enqueue_req", "get_thread_pool", "accept", "handle",
                     "handle_error"),
    "TConn": ("sock", "client", "parser", "initialized", "data_ready"),
}


def set_work_queue(executor: ThreadPoolExecutor, work_queue: Any) -> None:
    """Give a ThreadPoolExecutor whose threads have not started `work_queue` (put, get,
    get_nowait) in place of its SimpleQueue: the stdlib offers no hook for the queue."""
    executor._work_queue = work_queue


# The arguments a ThreadPoolExecutor's work item keeps, by the parameters of its __init__:
# CPython 3.8-3.13 keep fn, args and kwargs; 3.14 keeps one `task`, (fn, args, kwargs), made by
# its WorkerContext.resolve_task. Any other shape is named by missing(), so a new CPython fails
# tests/test_internals.py, not a worker under load.
WORK_ITEM_SHAPES = {("future", "fn", "args", "kwargs"): lambda item: item.args,
                    ("future", "task"): lambda item: item.task[1]}


def _work_item_shape() -> tuple[str, ...]:
    return tuple(inspect.signature(_WorkItem.__init__).parameters)[1:]


_args_of = WORK_ITEM_SHAPES.get(_work_item_shape(), lambda item: ())


def task_of(item: Any) -> tuple[Future[Any], tuple[Any, ...]]:
    """(future, args) of a queued work item of a ThreadPoolExecutor."""
    return item.future, _args_of(item)


def accepting(worker: ThreadWorker) -> bool:
    """Whether a gthread worker is accepting new connections now."""
    return worker._accepting


def missing() -> list[str]:
    """The REQUIRED attributes that the installed gunicorn and Python do not have, as
    "Owner.attribute"; empty when all are there."""
    shape = _work_item_shape()
    if shape not in WORK_ITEM_SHAPES:
        return [f"_WorkItem.__init__{shape}"]
    item_args: list[Any] = [print, (), {}] if "fn" in shape else [(print, (), {})]
    executor = ThreadPoolExecutor(1)
    left, right = socket.socketpair()
    try:
        owners = {
            "ThreadPoolExecutor": executor,
            "_WorkItem": _WorkItem(None, *item_args),  # type: ignore[arg-type]
            "ThreadWorker": ThreadWorker(0, 0, [], None, 30, GunicornConfig(), None),
            "TConn": TConn(GunicornConfig(), left, ("127.0.0.1", 0), None),
        }
        return [f"{owner}.{name}" for owner, names in REQUIRED.items() for name in names
                if not hasattr(owners[owner], name)]
    finally:
        executor.shutdown()
        left.close()
        right.close()
