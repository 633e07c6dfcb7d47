"""Faults injected against real gunicorn and the real upstream: each bounded in time and traffic."""
import json
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from bench import flood
from dev.harness import descendants, free_port, parent_of, worker_pids
from runtime import channel, lifo_queue
from tests.helpers import TEST_SIZE, big_primes, run_clients, timed_get

pytestmark = [pytest.mark.slow, pytest.mark.faults]

DEADLINE_S = 1.0
MARGIN_S = 0.5
BIG_BATCH = "/is_prime/" + ",".join(big_primes(900, 4)) + "?mode=process"
MERSENNE = f"/is_prime/{2**1279 - 1}?mode=process"


@pytest.fixture
def serve(serve):
    """conftest's gunicorns, with this module's deadline unless a test sets its own."""
    return lambda api_url=None, **env: serve(api_url, **{"REQUEST_TIMEOUT_S": DEADLINE_S, **env})


def assert_primes_stay_fast(service):
    response, seconds = timed_get(service.url + "/is_prime/1,2,3,4")
    assert response.status_code == 200 and seconds < 0.5


@pytest.mark.parametrize("fault, env, status, source, reachable", [
    ("upstream down", {"API_URL": "http://127.0.0.1:{closed}/"}, 502, "api", False),
    ("upstream slower than the deadline", {"API_URL": "{upstream}/?delay_ms=5000"}, 504, "api",
     True),
    ("upstream drips its body", {"API_URL": "{upstream}/?drip_ms=200"}, 504, "api", True),
    ("database unreachable", {"DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:{closed}/test"},
     502, "db", False),
    ("data file missing", {"FILE_PATH": "/nonexistent/data.txt"}, 502, "file", False),
])
def test_a_failing_source_is_named_within_the_deadline(serve, upstream, fault, env, status, source,
                                                       reachable):
    closed = free_port()
    env = {k: v.format(closed=closed, upstream=upstream.url) for k, v in env.items()}
    service = serve(api_url=env.pop("API_URL", None), **env)
    response, seconds = timed_get(service.url + "/")
    body = response.json()
    assert response.status_code == status, body.get("errors")
    assert list(body["errors"]) == [source]
    # The kind of failure, never an address, a path or an exception's text (issue 23, item 6).
    assert body["errors"][source].split(":")[0] in ("timeout", "unavailable", "failed")
    assert not re.search(r"127\.0\.0\.1|nonexistent|Error|postgres", response.text)
    assert body[f"result_{source}"] is None
    assert all(body[f"result_{other}"] for other in ("file", "db", "api") if other != source)
    assert seconds < DEADLINE_S + MARGIN_S
    assert_primes_stay_fast(service)
    ready = requests.get(service.url + "/readyz", timeout=10)
    assert ready.status_code == (200 if reachable else 503)
    assert (ready.json()["checks"][source] == "ok") == reachable


def test_a_slow_upstream_does_not_tie_up_threads(serve, upstream):
    # 8 threads per worker, so 24 reads in flight: 3 rounds of 8 slow requests would need
    # 3 x 5 s if threads stayed stuck on the upstream past the deadline.
    service = serve(api_url=upstream.url + "/?delay_ms=5000", WEB_THREADS=8, WEB_WORKERS=1)
    for _ in range(3):
        results = run_clients(service.url + "/", clients=8, per_client=1)
        assert [status for status, _, _ in results] == [504] * 8
        assert max(seconds for _, seconds, _ in results) < DEADLINE_S + MARGIN_S


def test_ready_and_healthy_when_all_is_well(serve):
    service = serve()
    assert requests.get(service.url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(service.url + "/readyz", timeout=5)
    assert ready.status_code == 200 and set(ready.json()["checks"].values()) == {"ok"}


def kill_and_recover(service, victims_of):
    """Kill processes during a batch of big prime checks; return (batch statuses, recovery s)."""
    with ThreadPoolExecutor(8) as clients:
        batch = [clients.submit(timed_get, service.url + BIG_BATCH) for _ in range(8)]
        time.sleep(0.3)
        victims = [pid for worker in worker_pids(service) for pid in victims_of(worker)]
        assert victims
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        statuses = [future.result()[0].status_code for future in batch]
    give_up = killed_at + 10
    while time.monotonic() < give_up:
        if timed_get(service.url + MERSENNE)[0].status_code == 200:
            break
        time.sleep(0.02)
    recovery = time.monotonic() - killed_at
    for _ in range(10):  # and stays recovered, on every worker
        assert timed_get(service.url + MERSENNE)[0].status_code == 200
    return statuses, recovery


def pool_children(worker):
    """The pool processes of a worker: the forkserver's children."""
    return [pid for pid in descendants(worker) if parent_of(parent_of(pid)) == worker]


@pytest.mark.parametrize("victims_of", [pool_children, descendants],
                         ids=["pool processes", "everything below the worker"])
def test_killed_pool_processes_give_503_then_a_rebuilt_pool(serve, victims_of):
    service = serve(REQUEST_TIMEOUT_S=10, WEB_WORKERS=1)
    statuses, recovery = kill_and_recover(service, victims_of)
    assert set(statuses) <= {200, 503} and 503 in statuses
    assert recovery < 1.0
    print(f"\nkilled {victims_of.__name__}: batch {sorted(statuses)}, recovered in {recovery:.3f} s")
    metrics = scrape(service)
    assert metrics["process_pool_rebuilds_total"] >= 1


def test_a_killed_worker_is_replaced(serve):
    service = serve()
    old_workers = worker_pids(service)
    os.kill(old_workers[0], signal.SIGKILL)
    give_up = time.monotonic() + 15
    while time.monotonic() < give_up:
        workers = worker_pids(service)
        if len(workers) == 2 and old_workers[0] not in workers:
            break
        time.sleep(0.1)
    assert len(worker_pids(service)) == 2 and old_workers[0] not in worker_pids(service)
    for _ in range(6):
        assert timed_get(service.url + "/")[0].status_code == 200
        assert timed_get(service.url + MERSENNE)[0].status_code == 200
    # What the killed worker started (its forkserver, pool processes, resource tracker) exits too.
    give_up = time.monotonic() + 10
    while time.monotonic() < give_up and orphans(service):
        time.sleep(0.2)
    assert orphans(service) == []


def orphans(service):
    """Processes of the server's session that are no longer below its master."""
    below = set(descendants(service.proc.pid)) | {service.proc.pid}
    return [pid for pid in service.session_pids() if pid not in below]


def test_sigterm_answers_every_request_in_flight_then_leaves_nothing(serve, upstream):
    service = serve(api_url=upstream.url + "/?delay_ms=1000", REQUEST_TIMEOUT_S=3,
                    GRACEFUL_TIMEOUT=10, WEB_THREADS=64)
    timed_get(service.url + MERSENNE)
    before = service.session_pids()
    assert len(before) >= 7  # master, 2 workers, 2 forkservers, 2 resource trackers, children
    results = []
    clients = [threading.Thread(target=lambda: results.append(timed_get(service.url + "/")[0].status_code))
               for _ in range(40)]
    for client in clients:
        client.start()
    time.sleep(0.5)  # all 40 are in the service, waiting on the upstream
    started = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    for client in clients:
        client.join()
    assert results == [200] * 40
    assert service.stop() == 0
    assert time.monotonic() - started < 10
    assert service.leftovers == []
    print(f"\nSIGTERM: {len(before)} processes before, {len(service.leftovers)} after, "
          f"exit in {time.monotonic() - started:.2f} s")


def test_overload_gives_only_200_or_503_within_the_deadline(serve, upstream):
    # The seed latency profile, with three clients for every request the service serves at
    # once. With the default 2 x 192 threads that took 1152 aiohttp clients, which on the same
    # two cores spent more CPU than the server: their own event loop put answers past 4 s,
    # before and after the change that found it (2026-12-02). So: the tests' 2 x 32 threads.
    service = serve(api_url=upstream.url + "/?delay_ms=300", REQUEST_TIMEOUT_S=2,
                    FILE_DELAY_MS=100, DB_DELAY_MS=200)
    clients = 3 * TEST_SIZE["WEB_WORKERS"] * TEST_SIZE["WEB_THREADS"]
    results = run_clients(service.url + "/", clients=clients, per_client=3, timeout_s=60)
    statuses = [status for status, _, _ in results]
    warnings = [line for line in service.output().splitlines() if "WARNING" in line][:10]
    assert set(statuses) <= {200, 503}, ({s: statuses.count(s) for s in set(statuses)}, warnings)
    assert max(seconds for _, seconds, _ in results) < 2 + MARGIN_S
    # Still serving, not only shedding: every thread served at least once. (A refusal comes in
    # milliseconds since issue 24, so each client's three requests pass quickly when refused.)
    assert statuses.count(200) >= TEST_SIZE["WEB_WORKERS"] * TEST_SIZE["WEB_THREADS"]
    shed = [headers for status, _, headers in results if status == 503]
    assert shed and all(headers["Retry-After"] == "1" for headers in shed)
    print(f"\n{clients} clients: {statuses.count(200)} x 200, {len(shed)} x 503, slowest "
          f"{max(seconds for _, seconds, _ in results):.2f} s")


def test_far_more_clients_than_capacity_do_not_collapse_the_goodput(serve, upstream):
    # 2 workers x 8 threads at ~0.1 s a request answer ~150 req/s. A FIFO queue 20 times that
    # deep makes every request wait past MAX_QUEUE_WAIT_S, so almost all would be refused.
    service = serve(api_url=upstream.url + "/?delay_ms=100", REQUEST_TIMEOUT_S=2,
                    MAX_QUEUE_WAIT_S=1.0, WEB_THREADS=8, FILE_DELAY_MS=0, DB_DELAY_MS=0)

    def goodput(clients, per_client):
        start = time.monotonic()
        results = run_clients(service.url + "/", clients=clients, per_client=per_client,
                              timeout_s=60)
        in_time = [s for status, s, _ in results if status == 200 and s <= 2]
        return len(in_time) / (time.monotonic() - start), results

    at_capacity, _ = goodput(clients=16, per_client=10)
    overloaded, results = goodput(clients=320, per_client=3)
    print(f"\n200s in time per second: {at_capacity:.0f} at 16 clients, "
          f"{overloaded:.0f} at 320")
    assert overloaded >= 0.6 * at_capacity
    assert max(seconds for _, seconds, _ in results) < 2 + MARGIN_S


def test_requests_that_will_not_be_served_are_refused_in_milliseconds(serve, upstream):
    # 2 workers x 8 threads at 0.3 s a request serve ~50 a second; 160 clients keep a queue
    # standing, and a refused client asks again at once. Once the queue stands, a request is
    # refused when queued past what the threads take within QUEUE_TARGET_MS, or once it has
    # waited that long (CoDel): not after MAX_QUEUE_WAIT_S (1 s), as before issue 24. The first
    # wave waits for the queue to have stood CONGESTION_S: hence the p90.
    service = serve(api_url=upstream.url + "/?delay_ms=300", REQUEST_TIMEOUT_S=2,
                    WEB_THREADS=8, ADAPTIVE_LIMIT=0, FILE_DELAY_MS=0, DB_DELAY_MS=0)
    results = run_clients(service.url + "/", clients=160, per_client=4, timeout_s=60)
    refused = sorted(seconds for status, seconds, _ in results if status == 503)
    served = [seconds for status, seconds, _ in results if status == 200]
    assert len(refused) > len(results) / 2 and len(served) >= 16  # each thread served
    median, p90 = refused[len(refused) // 2], refused[int(len(refused) * 0.9)]
    print(f"\n{len(served)} x 200, {len(refused)} x 503: median {median * 1000:.0f} ms, "
          f"p90 {p90 * 1000:.0f} ms")
    assert median < 0.1 and p90 < lifo_queue.CONGESTION_S + 0.25


def scrape(service):
    """Sum every sample of /metrics by name and labels, as Prometheus would see it."""
    text = requests.get(service.url + "/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_metrics_add_up_over_workers(serve):
    service = serve(WEB_THREADS=16)
    for _ in range(20):
        timed_get(service.url + "/")
    timed_get(service.url + MERSENNE)
    metrics = scrape(service)
    assert metrics["pool_size{pool=thread}"] == 2 * 16 * 2  # both workers' thread pools
    assert metrics["pool_size{pool=process}"] == 2 * 2
    requests_seen = metrics['http_request_duration_seconds_count{method=GET,route=/,status=200}']
    assert requests_seen == 20
    assert metrics["source_read_duration_seconds_count{outcome=ok,source=api}"] == 20
    for name in ("pool_queue_depth{pool=thread}", "pool_busy_workers{pool=process}",
                 "process_pool_rebuilds_total"):
        assert name in metrics
    # Idle (the gauges are published every SWEEP_S): nothing runs but perhaps this scrape, and
    # the in-flight limit is where it starts, at the threads.
    time.sleep(2 * channel.SWEEP_S)
    metrics = scrape(service)
    assert metrics["requests_in_flight"] <= 1
    assert metrics["requests_in_flight_limit"] == 2 * 16


@pytest.mark.parametrize("read_loop, reader", [(True, "[read-loop]"), (False, "[read_")])
def test_request_id_is_echoed_and_logged_from_the_thread_that_read(serve, read_loop, reader):
    # The file is read on the worker's event loop, or on a pool thread with READ_LOOP off.
    service = serve(FILE_PATH="/nonexistent/data.txt", READ_LOOP=read_loop)
    response, _ = timed_get(service.url + "/", headers={"X-Request-ID": "trace-abc-123"})
    assert response.headers["X-Request-ID"] == "trace-abc-123"
    generated = timed_get(service.url + "/healthz")[0].headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    bad = timed_get(service.url + "/healthz", headers={"X-Request-ID": "no spaces\tor tabs"})[0]
    assert bad.headers["X-Request-ID"] != "no spaces\tor tabs"
    time.sleep(0.2)
    lines = [line for line in service.output().splitlines() if "trace-abc-123" in line]
    assert any(reader in line and "source file" in line for line in lines), lines
    assert any("GET / 502" in line for line in lines), lines


def test_a_flood_of_big_batches_leaves_small_ones_their_answers_and_no_cpu_behind(serve):
    # Issue 16: clients post batches that cannot finish by the deadline (refused at once) and
    # batches admitted at their least cost that are all primes (stopped at the deadline).
    service = serve(REQUEST_TIMEOUT_S=2)
    figures = flood.run(service.url, [flood.HUGE, flood.admissible()], clients=6, seconds=8)
    figures["idle_after_s"] = flood.idle_after(flood.pool_pids(service), give_up_s=10)
    print(f"\nflood: {figures}")
    # The body is refused (413) where its least cost passes the deadline, which this
    # machine's calibrated speed decides: at a fast moment it is admitted, and then answered
    # (200) or stopped at the deadline (504), never left running.
    assert set(figures["flood"]) <= {200, 413, 503, 504}
    assert figures["flood"].get(413) or figures["flood"].get(504)
    assert figures["flood_slowest_s"] < 2 + 0.3
    assert figures["idle_after_s"] <= 0.5  # was 18 s
    assert set(figures["tiny"]) == {200}
    assert figures["small"].get(200, 0) >= 0.9 * sum(figures["small"].values())
    assert figures["tiny_p50_ms"] < 100  # generous: the flood's parsing shares both cores


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                 lambda children: st.lists(children, max_size=5)
                 | st.dictionaries(st.text(max_size=5), children, max_size=5)).map(json.dumps),
    st.integers(1, 200_000).map(lambda depth: "[" * depth),
    st.integers(1, 20_000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
    st.binary(max_size=64).map(lambda raw: raw.decode("latin-1"))))
def test_any_body_gets_an_answer_or_a_json_4xx_never_a_5xx(hostile_service, body):
    response = requests.post(hostile_service.url + "/is_prime", data=body.encode("utf-8"),
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code in (200, 400, 413), (response.status_code, body[:80])
    assert response.headers["Content-Type"] == "application/json"
    if response.status_code != 200:
        assert response.json()["status"] == response.status_code


@pytest.fixture(scope="module")
def hostile_service(serve_module):
    """One gunicorn for every example of the hostile-body property test."""
    return serve_module()
