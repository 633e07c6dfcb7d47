"""The pools: concurrency, deadlines, fork safety and a rebuilt process pool."""
import asyncio
import contextlib
import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import gmpy2
import pytest

import pools
import telemetry
from dev.harness import ROOT, free_port
from runtime import cpu_queue, host_cpu
from services import primes
from tests.helpers import big_primes, far

SLEEP_S = 0.2


def sleeper(seconds, value=None):
    """A call for gather() that sleeps, then returns `value`."""
    def call(deadline):
        time.sleep(seconds)
        return value
    return call


def failing(deadline):
    """A call for gather() that raises."""
    raise OSError("disk on fire")


def waiter(seconds, value=None, cancelled=None):
    """A coroutine function for gather() that waits on the event loop, then returns `value`;
    sets the `cancelled` event if it is cancelled."""
    async def call(deadline):
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return value, threading.current_thread().name, telemetry.current_request_id()
    return call


@pytest.fixture
def pool_pair():
    """A Pools with room for a few concurrent calls and two processes."""
    pair = pools.Pools(thread_size=8, process_size=2,
                       process_preload=["services.primes"])
    yield pair
    pair.shutdown()


def test_gather_runs_the_named_call_in_the_calling_thread(pool_pair):
    calls = {name: lambda deadline: threading.current_thread().name for name in ("a", "b")}
    names = {name: o.value for name, o in pool_pair.gather(calls, far(), run_here="b").items()}
    assert names["a"].startswith("read") and names["b"] == threading.current_thread().name


def test_gather_runs_calls_concurrently(pool_pair):
    calls = {name: sleeper(SLEEP_S, name) for name in ("a", "b", "c")}
    start = time.monotonic()
    outcomes = pool_pair.gather(calls, time.monotonic() + 5)
    assert time.monotonic() - start < 2 * SLEEP_S
    assert {name: o.value for name, o in outcomes.items()} == {"a": "a", "b": "b", "c": "c"}
    assert all(o.elapsed_ms >= SLEEP_S * 1000 * 0.9 for o in outcomes.values())


def test_gather_sequential_runs_one_after_another(pool_pair):
    calls = {name: sleeper(SLEEP_S, name) for name in ("a", "b", "c")}
    start = time.monotonic()
    outcomes = pool_pair.gather(calls, time.monotonic() + 5, sequential=True)
    assert time.monotonic() - start >= 3 * SLEEP_S
    assert [o.value for o in outcomes.values()] == ["a", "b", "c"]


def test_gather_reports_a_failure_and_keeps_the_others(pool_pair):
    outcomes = pool_pair.gather({"ok": sleeper(0, 1), "bad": failing}, time.monotonic() + 5)
    assert outcomes["ok"].value == 1 and outcomes["ok"].error is None
    assert isinstance(outcomes["bad"].error, OSError)


def test_gather_stops_waiting_at_the_deadline(pool_pair):
    start = time.monotonic()
    outcomes = pool_pair.gather({"slow": sleeper(2), "fast": sleeper(0, 1)}, start + SLEEP_S)
    assert time.monotonic() - start < SLEEP_S + 0.15
    assert isinstance(outcomes["slow"].error, TimeoutError)
    assert outcomes["fast"].value == 1


def test_gather_runs_coroutines_together_on_the_event_loop_beside_the_others(pool_pair):
    telemetry.set_request_id("rid-from-caller")
    calls = {"a": waiter(SLEEP_S, "a"), "b": waiter(SLEEP_S, "b"), "pooled": sleeper(SLEEP_S, 1),
             "own": sleeper(0, 2)}
    start = time.monotonic()
    outcomes = pool_pair.gather(calls, far(), run_here="own")
    assert time.monotonic() - start < 2 * SLEEP_S
    assert list(outcomes) == list(calls)
    assert outcomes["a"].value == ("a", "read-loop", "rid-from-caller")
    assert outcomes["b"].value[:2] == ("b", "read-loop")
    assert outcomes["b"].elapsed_ms >= SLEEP_S * 1000 * 0.9
    assert (outcomes["pooled"].value, outcomes["own"].value) == (1, 2)


def test_a_coroutine_past_the_deadline_is_cancelled_and_reported_as_a_timeout(pool_pair):
    cancelled = threading.Event()
    start = time.monotonic()
    outcomes = pool_pair.gather({"slow": waiter(5, cancelled=cancelled), "fast": waiter(0, 1)},
                                start + SLEEP_S)
    assert time.monotonic() - start < SLEEP_S + 0.15
    assert isinstance(outcomes["slow"].error, TimeoutError)
    assert outcomes["fast"].value[0] == 1
    assert cancelled.wait(1.0)


def test_a_coroutine_that_fails_is_reported_and_keeps_the_others(pool_pair):
    async def broken(deadline):
        raise OSError("disk on fire")
    outcomes = pool_pair.gather({"bad": broken, "ok": waiter(0, 1)}, far())
    assert isinstance(outcomes["bad"].error, OSError) and outcomes["ok"].value[0] == 1


def test_shutdown_cancels_what_waits_on_the_event_loop_and_stops_it(pool_pair):
    cancelled = threading.Event()
    pool_pair.event_loop().submit(waiter(60, cancelled=cancelled)(far()))
    pool_pair.shutdown()
    assert cancelled.is_set()
    assert "read-loop" not in {thread.name for thread in threading.enumerate()}


def test_gather_cancels_calls_not_started_by_the_deadline():
    ran = []
    single = pools.Pools(thread_size=1, process_size=1, thread_queue=1)
    try:
        deadline = time.monotonic() + SLEEP_S
        calls = {"busy": sleeper(SLEEP_S * 2), "queued": ran.append, "own": sleeper(0)}
        outcomes = single.gather(calls, deadline, run_here="own")
        time.sleep(SLEEP_S * 2)
        assert isinstance(outcomes["queued"].error, TimeoutError)
        assert ran == []
    finally:
        single.shutdown()


def test_map_cpu_keeps_chunk_order(pool_pair):
    chunks = [[4, 7], [11], [12, 13, 1]]
    answers = pool_pair.map_cpu(primes.check_batch, chunks, far())
    assert answers == [[False, True], [True], [False, True, False]]


def test_map_cpu_runs_in_other_processes(pool_pair):
    pids = {pid for [pid] in pool_pair.map_cpu(_pid_of_chunk, [[0]] * 4, far())}
    assert os.getpid() not in pids


def test_a_killed_pool_process_gives_pool_restarted_then_a_new_pool(pool_pair):
    [[victim]] = pool_pair.map_cpu(_pid_of_chunk, [[0]], far())
    os.kill(victim, signal.SIGKILL)
    time.sleep(0.2)
    with pytest.raises(pools.PoolRestarted):
        pool_pair.map_cpu(primes.check_batch, [[7]], far())
    assert pool_pair.map_cpu(primes.check_batch, [[7]], far()) == [[True]]


def test_pools_are_not_inherited_across_fork(pool_pair):
    parent_pool, parent_loop = pool_pair.thread_pool(), pool_pair.event_loop()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports whether it got a fresh pool and loop that work
        ok = pool_pair.thread_pool() is not parent_pool
        ok = ok and pool_pair.event_loop() is not parent_loop
        outcomes = pool_pair.gather({"x": sleeper(0, 1), "y": waiter(0, 2)}, time.monotonic() + 5)
        ok = ok and outcomes["x"].value == 1 and outcomes["y"].value[0] == 2
        os.write(write_end, b"1" if ok else b"0")
        os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 1)
    os.waitpid(child, 0)
    assert answer == b"1"


def test_shutdown_all_stops_every_pool(pool_pair):
    pool_pair.thread_pool()
    pool_pair.process_pool()
    pools.shutdown_all()
    assert pool_pair._threads.peek() is None and pool_pair._processes.peek() is None


def test_a_full_thread_pool_refuses_at_once_and_frees_its_slots():
    small = pools.Pools(thread_size=2, process_size=1)
    try:
        calls = {"a": sleeper(SLEEP_S), "b": sleeper(SLEEP_S), "own": sleeper(SLEEP_S)}
        busy = threading.Thread(target=small.gather, args=(calls, far()), kwargs={"run_here": "own"})
        busy.start()
        time.sleep(SLEEP_S / 4)
        start = time.monotonic()
        with pytest.raises(pools.Saturated):
            small.gather({"c": sleeper(0), "own": sleeper(0)}, far(), run_here="own")
        assert time.monotonic() - start < 0.05
        busy.join()
        assert small.gather({"c": sleeper(0, 3), "own": sleeper(0)}, far(), run_here="own")["c"].value == 3
    finally:
        small.shutdown()


def test_cpu_work_that_cannot_finish_by_its_deadline_is_refused_at_once(pool_pair):
    start = time.monotonic()
    with pytest.raises(pools.Saturated):  # 3 s of work on two processes within 1 s
        pool_pair.map_cpu(time.sleep, [0.0], start + 1.0, costs=[3.0])
    assert time.monotonic() - start < 0.05
    busy = threading.Thread(target=pool_pair.map_cpu,
                            args=(time.sleep, [SLEEP_S * 2] * 2, far()),
                            kwargs={"costs": [SLEEP_S * 2] * 2, "priority": 1.0})
    busy.start()
    time.sleep(SLEEP_S / 4)
    start = time.monotonic()
    with pytest.raises(pools.Saturated):  # fits alone, not behind the work ahead of it
        pool_pair.map_cpu(time.sleep, [0.0] * 2, time.monotonic() + SLEEP_S * 1.5,
                          costs=[SLEEP_S] * 2, priority=1.0)
    assert time.monotonic() - start < 0.05
    busy.join()
    assert pool_pair.map_cpu(primes.check_batch, [[7]] * 2, far(), costs=[SLEEP_S] * 2) == \
        [[True]] * 2


def test_the_cheapest_batch_goes_first(pool_pair):
    flood = [SLEEP_S] * 8  # four rounds of two processes
    big = threading.Thread(target=pool_pair.map_cpu, args=(time.sleep, flood, far()),
                           kwargs={"costs": flood, "priority": sum(flood)})
    big.start()
    time.sleep(SLEEP_S / 4)
    start = time.monotonic()
    assert pool_pair.map_cpu(primes.check_batch, [[7]], far(), costs=[0.001],
                             priority=0.001) == [[True]]
    waited = time.monotonic() - start
    big.join()
    assert waited < SLEEP_S * 2.5  # one running chunk, not the six queued before it (0.8 s)


def test_a_chunk_that_checks_its_deadline_frees_its_process_at_the_deadline(pool_pair):
    slow = [gmpy2.mpz(p) for p in big_primes(900, 6)] * 10  # seconds of work a chunk
    deadline = time.monotonic() + SLEEP_S
    check = functools.partial(primes.check_batch, stop_at=time.time() + SLEEP_S)
    with pytest.raises(TimeoutError):
        pool_pair.map_cpu(check, [slow, slow], deadline)
    assert pool_pair.map_cpu(primes.check_batch, [[7], [11]], far()) == [[True], [True]]
    # Both processes were free after one 900-digit test more (~0.06 s here), not seconds.
    assert time.monotonic() - deadline < 0.5


def test_map_cpu_times_out_at_the_deadline_and_frees_the_pool(pool_pair):
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        pool_pair.map_cpu(time.sleep, [1.0, 1.0, 1.0], start + SLEEP_S)
    assert time.monotonic() - start < SLEEP_S + 0.3
    time.sleep(1.0)
    assert pool_pair.map_cpu(primes.check_batch, [[5]], far()) == [[True]]


def test_pool_tasks_see_the_callers_request_id(pool_pair):
    telemetry.set_request_id("rid-from-caller")
    calls = {"pooled": lambda deadline: (telemetry.current_request_id(), threading.current_thread().name),
             "own": sleeper(0)}
    request_id, thread = pool_pair.gather(calls, far(), run_here="own")["pooled"].value
    assert request_id == "rid-from-caller" and thread.startswith("read")


def _pid_of_chunk(chunk):
    return [os.getpid() for _ in chunk]


def test_warm_starts_every_pool_process(pool_pair):
    pool_pair.warm()
    assert len(pool_pair.process_pool()._processes) == pool_pair.process_size


def test_pool_processes_may_use_every_cpu_when_their_worker_is_pinned():
    # In a child process, pinned as gunicorn.conf.py pins a worker; the pool starts after.
    code = (
        "import os, time, pools\n"
        "from runtime import pinning\n"
        "pair = pools.Pools(thread_size=1, process_size=1)\n"
        "pinning.pin_process(min(os.sched_getaffinity(0)))\n"
        "print(sorted(pair.map_cpu(os.sched_getaffinity, [0], time.monotonic() + 30)[0]))\n"
        "pair.shutdown()\n"
    )
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True, timeout=60).stdout
    assert output.strip() == str(sorted(os.sched_getaffinity(0)))


def test_pool_processes_import_only_what_the_work_needs(pool_pair):
    # Each pool process holds its own copy of whatever it imports (15 MB each, 24 with the app).
    # eval runs the expression in the child: it lists the app's modules loaded there.
    app_modules = "('flask', 'prometheus_client', 'sqlalchemy', 'app', 'pools', 'telemetry')"
    expression = f"sorted(m for m in __import__('sys').modules if m.split('.')[0] in {app_modules})"
    [loaded] = pool_pair.map_cpu(eval, [expression], far())
    assert loaded == []


def test_after_a_failed_dask_connect_calls_fail_at_once_until_the_retry():
    nowhere = f"dask://127.0.0.1:{free_port()}"  # nothing listens there
    retry_s = 1.0
    unreachable = pools.Pools(thread_size=1, process_size=1, cpu_executor=nowhere,
                              connect_timeout_s=0.2, reconnect_after_s=retry_s)
    # The client is told the kind of failure; the address and the details are in the cause.
    with pytest.raises(pools.PoolRestarted, match="Dask cluster is unavailable") as first:
        unreachable.map_cpu(primes.check_batch, [[7]], far())
    assert "no Dask scheduler" in str(first.value.__cause__)
    assert "127.0.0.1" not in str(first.value)
    failed_at = start = time.monotonic()
    for _ in range(5):
        with pytest.raises(pools.PoolRestarted) as refused:
            unreachable.map_cpu(primes.check_batch, [[7]], far())
        assert "trying again in" in str(refused.value.__cause__)
    assert time.monotonic() - start < 0.1
    time.sleep(max(0.0, failed_at + retry_s + 0.2 - time.monotonic()))
    start = time.monotonic()
    with pytest.raises(pools.PoolRestarted) as tried:  # a connect attempt again
        unreachable.map_cpu(primes.check_batch, [[7]], far())
    assert "trying again in" not in str(tried.value.__cause__)
    assert time.monotonic() - start >= 0.15
    unreachable.shutdown()


class _Silent:
    """An executor whose tasks never finish, like a Dask cluster that went away mid-task."""

    def __init__(self):
        self.submitted = []

    def submit(self, fn, arg):
        self.submitted.append(arg)
        return Future()


def test_a_chunk_lost_past_its_deadline_no_longer_holds_a_place_in_the_cpu_queue():
    silent = _Silent()
    queue = cpu_queue.CpuQueue(1, lambda: silent, host_cores=1)
    queue.submit_all(len, ["lost"], [0.001], 0.0, time.monotonic() + 0.05)
    queue.submit_all(len, ["next"], [0.001], 0.0, far())
    assert silent.submitted == ["lost"]  # one process, taken
    time.sleep(0.05 + cpu_queue.LOST_AFTER_S + 0.05)
    queue.submit_all(len, ["after"], [0.001], 0.0, far())
    assert silent.submitted == ["lost", "next"]  # "next" got the place; "after" waits for it


@pytest.fixture
def ledger(monkeypatch):
    """A host CPU ledger, as gunicorn's master makes one; gone after the test."""
    for name in ("_pids", "_seconds", "_claim_lock"):
        monkeypatch.setattr(host_cpu, name, None)
    monkeypatch.setattr(host_cpu, "_slot_of_pid", {})
    host_cpu.init()


@contextlib.contextmanager
def another_worker(seconds):
    """A forked process that holds `seconds` of CPU work in the ledger until the block ends;
    then it exits, and the master frees its slot."""
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()

    def hold():
        host_cpu.publish(host_cpu.slot(), seconds)
        ready.set()
        done.wait(30)

    process = context.Process(target=hold)
    process.start()
    try:
        assert ready.wait(10)
        yield process
    finally:
        done.set()
        process.join(10)
        host_cpu.release(process.pid)


def test_every_worker_of_the_host_sees_the_cpu_work_the_others_hold(ledger):
    mine = host_cpu.slot()
    host_cpu.publish(mine, 1.0)
    with another_worker(3.0):
        assert host_cpu.others(mine) == 3.0
    assert host_cpu.others(mine) == 0.0  # its slot was freed


def test_a_batch_is_refused_when_other_workers_hold_the_host_s_cores(ledger):
    queue = cpu_queue.CpuQueue(2, lambda: _Silent(), host_cores=2)
    with another_worker(4.0):  # two cores busy for 2 s: no room before a 1 s deadline
        with pytest.raises(pools.Saturated):
            queue.submit_all(len, ["x"], [0.1], 0.0, time.monotonic() + 1.0)
    assert len(queue.submit_all(len, ["x"], [0.1], 0.0, time.monotonic() + 1.0)) == 1


def test_estimates_are_scaled_by_what_chunks_took_so_a_batch_that_cannot_fit_is_refused():
    with ThreadPoolExecutor(1) as executor:
        queue = cpu_queue.CpuQueue(1, lambda: executor, host_cores=1)
        for _ in range(8):  # each chunk is estimated at 5 ms and takes 50
            [future] = queue.submit_all(time.sleep, [0.05], [0.005], 0.0, far())
            future.result(timeout=5)
        with pytest.raises(pools.Saturated):  # 0.2 s estimated: ~1.6 s as measured
            queue.submit_all(time.sleep, [0.0], [0.2], 0.0, time.monotonic() + 1.0)
        fresh = cpu_queue.CpuQueue(1, lambda: executor, host_cores=1)
        [future] = fresh.submit_all(time.sleep, [0.0], [0.2], 0.0, time.monotonic() + 1.0)
        future.result(timeout=5)
