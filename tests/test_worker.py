"""The gthread worker: arrival stamps, the accept hold-back, and the worker class for the
sockets, each on real sockets and executors."""
import logging
import selectors
import socket
import threading
import time

import pytest
from gunicorn.config import Config as GunicornConfig

from config import settings
from runtime import stamps, worker
from runtime.accept import ACCEPT_YIELD_S, Accept, HoldBack


def test_tasks_see_when_they_were_queued():
    executor = stamps.StampingExecutor(max_workers=1)
    try:
        gate = threading.Event()
        executor.submit(gate.wait)  # keeps the only thread busy, so the next task queues
        queued_at = time.monotonic()
        later = executor.submit(stamps.arrived_at)
        time.sleep(0.2)
        gate.set()
        stamp = later.result(timeout=5)
        assert abs(stamp - queued_at) < 0.05 and time.monotonic() - stamp >= 0.2
    finally:
        executor.shutdown()


def test_a_request_arrived_when_its_bytes_reached_the_host_not_when_they_were_read():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sent = time.monotonic()
        time.sleep(0.3)  # the bytes wait in the socket, as for a busy poller thread
        server.recv(1024)
        now = time.monotonic()
        arrived = stamps.arrival(server, now)
        assert abs(arrived - sent) < 0.05 and now - arrived >= 0.25
        left, right = socket.socketpair()  # no TCP_INFO: arrival is now
        assert stamps.arrival(left, now) == now
        left.close(), right.close()
    finally:
        for sock in (client, server, listener):
            sock.close()


def test_a_task_submitted_at_a_stamp_sees_that_stamp():
    arrived = time.monotonic() - 1.5
    executor = stamps.StampingExecutor(max_workers=1)
    try:
        assert executor.submit_at(arrived, stamps.arrived_at).result(5) == arrived
    finally:
        executor.shutdown()


def test_outside_a_stamped_task_there_is_no_stamp():
    assert stamps.arrived_at() is None
    executor = stamps.StampingExecutor(max_workers=1)
    try:
        executor.submit(stamps.arrived_at).result(timeout=5)
        assert executor.submit(lambda: None).result(timeout=5) is None
    finally:
        executor.shutdown()


def test_a_hold_back_starts_when_busy_ends_with_a_drain_and_bounds_the_wait():
    hold_back = HoldBack()
    assert hold_back.on_readable(100.0, busy=False) is Accept.ONE
    assert hold_back.on_readable(100.0, busy=True) is Accept.HOLD_BACK
    assert hold_back.holds(100.0) and not hold_back.holds(100.0 + ACCEPT_YIELD_S)
    assert hold_back.bound(1.0, 100.0) == pytest.approx(ACCEPT_YIELD_S)
    assert hold_back.on_readable(100.0 + ACCEPT_YIELD_S, busy=True) is Accept.DRAIN
    assert not hold_back.holds(100.0) and hold_back.bound(1.0, 100.0) == 1.0


@pytest.mark.parametrize("options, fitting", [
    ({}, worker.GuardedThreadWorker),
    ({"certfile": __file__, "keyfile": __file__}, worker.StampedThreadWorker),
])
def test_tls_is_left_to_gthreads_reading(options, fitting):
    cfg = GunicornConfig()
    for name, value in options.items():
        cfg.set(name, value)
    assert worker.fitting(worker.GuardedThreadWorker, cfg) is fitting
    made = worker.GuardedThreadWorker(0, 0, [], None, 30, cfg, logging.getLogger("test"))
    assert type(made) is fitting  # however it was started: gunicorn, a HUP reload, a test


IS_WORK = {"/"}.__contains__


class BusyWorker:
    """A GuardedThreadWorker of one thread, made as gunicorn makes it, listening on a real
    socket; its one thread counts as busy until a test frees it."""

    def __init__(self) -> None:
        cfg = GunicornConfig()
        for name, value in (("threads", 1), ("workers", 2), ("worker_connections", 10)):
            cfg.set(name, value)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.worker = worker.GuardedThreadWorker(0, 0, [self.listener], None, 30, cfg,
                                                 logging.getLogger("test"))
        self.worker.tpool = self.worker.get_thread_pool()
        self.worker.poller = selectors.DefaultSelector()
        self.worker.init_admission(settings(), IS_WORK)
        self.worker.nr_conns = 1  # with the executor: its one thread is busy
        self.worker.set_accept_enabled(True)
        self.clients: list[socket.socket] = []

    def connect(self, n: int) -> None:
        """Open n connections to the listener."""
        self.clients.extend(socket.create_connection(self.listener.getsockname())
                            for _ in range(n))

    @property
    def reading(self) -> int:
        """Connections accepted, waiting for their request."""
        return len(self.worker.channels.reading)

    def close(self) -> None:
        """Close every socket, the poller and the executor."""
        self.worker.channels.sweep(force=True)
        for sock in self.clients + [self.listener]:
            sock.close()
        self.worker.poller.close()
        self.worker.tpool.shutdown()


@pytest.fixture
def busy():
    """A worker whose only thread is busy."""
    made = BusyWorker()
    yield made
    made.close()


def accepting(fake):
    return fake.worker.hold_back.until == 0.0 and worker.internals.accepting(fake.worker)


def test_a_busy_worker_leaves_new_connections_to_the_others_for_a_while(busy):
    busy.connect(1)
    busy.worker.accept(busy.listener)
    assert busy.reading == 0 and not worker.internals.accepting(busy.worker)
    busy.worker.set_accept_enabled(True)  # gthread's loop asks again at once: still yielding
    assert not worker.internals.accepting(busy.worker)


def test_after_yielding_a_busy_worker_takes_every_waiting_connection(busy):
    busy.connect(1)
    busy.worker.accept(busy.listener)
    busy.connect(2)
    time.sleep(ACCEPT_YIELD_S * 2)
    busy.worker.set_accept_enabled(True)
    assert worker.internals.accepting(busy.worker)
    busy.worker.accept(busy.listener)
    assert busy.reading == 3 and busy.worker.nr_conns == 4


def test_a_worker_with_a_free_thread_accepts_at_once(busy):
    busy.worker.nr_conns = 0  # its one request is answered, so its thread is free
    busy.connect(1)
    busy.worker.accept(busy.listener)
    assert busy.reading == 1 and accepting(busy)


def test_a_lone_worker_has_nobody_to_leave_connections_to(busy):
    busy.worker.cfg.set("workers", 1)
    busy.connect(1)
    busy.worker.accept(busy.listener)
    assert busy.reading == 1


def test_a_hold_back_wakes_the_loop_when_it_ends(busy):
    # gthread's loop would otherwise wait up to its 1 s select timeout for an event.
    busy.connect(1)
    busy.worker.accept(busy.listener)
    start = time.monotonic()
    busy.worker.wait_for_and_dispatch_events(timeout=1.0)
    assert ACCEPT_YIELD_S * 0.5 <= time.monotonic() - start < 0.5


def test_a_connection_evicted_earlier_in_the_same_batch_of_events_is_skipped(busy):
    # Found by make bench at 2000 clients: the poller's select() returned the listener and then
    # a waiting connection; accepting evicted that connection, and its own event, next in the
    # same batch, raised KeyError in the poller, which took the whole worker down.
    most = busy.worker.worker_connections
    busy.worker.nr_conns = 0  # a free thread: connections are accepted at once
    busy.connect(most - 1)
    for _ in range(most):  # one accept an event
        busy.worker.wait_for_and_dispatch_events(timeout=0.1)
    assert busy.reading == most - 1
    busy.connect(1)  # the listener is ready first (epoll keeps that order) …
    time.sleep(0.05)
    for client in busy.clients[:-1]:
        client.send(b"G")  # … then every waiting connection
    time.sleep(0.05)
    busy.worker.wait_for_and_dispatch_events(timeout=0.1)
    assert busy.reading == most - 1
    assert closed_by_peer(busy.clients[0])  # the longest waiting one
    assert not closed_by_peer(busy.clients[1])


def closed_by_peer(sock):
    """Whether the server closed `sock` (with the "G" it sent unread: a reset)."""
    sock.settimeout(0.2)
    try:
        return sock.recv(10) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
