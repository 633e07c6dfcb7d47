"""Integration: real gunicorn (gunicorn.conf.py) and the real upstream, with the seed's latency."""
import gc
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from dev.harness import (
    ROOT,
    Service,
    descendants,
    free_port,
    sqlite_url,
    start_upstream,
    worker_pids,
)
from tests.helpers import big_primes, run_clients, timed_get

SEED_PROFILE = {"FILE_DELAY_MS": 100, "DB_DELAY_MS": 200}
API_DELAY_MS = 300
CONCURRENT_BOUND_S = 0.4
SEQUENTIAL_FLOOR_S = 0.55
PIN_WAIT_S = 10


@pytest.fixture(scope="module")
def upstream_300():
    """The upstream with the seed's 300 ms API delay."""
    service = start_upstream(delay_ms=API_DELAY_MS)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def server(upstream_300, serve_module):
    """gunicorn with two workers and the seed latency profile."""
    return serve_module(upstream_300.url + "/", **SEED_PROFILE)


def test_index_reads_all_three_sources_concurrently(server):
    response, seconds = timed_get(server.url + "/")
    body = response.json()
    assert response.status_code == 200
    assert body["result_file"] and body["result_db"]["id"] == 1
    assert body["result_api"]["delay_ms"] == API_DELAY_MS
    timings = body["timings_ms"]
    assert timings["file"] + timings["db"] + timings["api"] >= SEQUENTIAL_FLOOR_S * 1000
    assert seconds < CONCURRENT_BOUND_S


def test_sequential_mode_takes_the_sum(server):
    response, seconds = timed_get(server.url + "/?mode=sequential")
    assert response.status_code == 200 and response.json()["mode"] == "sequential"
    assert seconds >= SEQUENTIAL_FLOOR_S
    assert response.json()["timings_ms"]["total"] >= SEQUENTIAL_FLOOR_S * 1000


def test_fifty_concurrent_clients_each_wait_one_slowest_read(server):
    # 50 clients need 150 reads in flight at once; the seed's 6-thread pool would take ~2.5 s.
    with ThreadPoolExecutor(50) as clients:
        start = time.monotonic()
        responses = list(clients.map(lambda _: requests.get(server.url + "/", timeout=10), range(50)))
        elapsed = time.monotonic() - start
    assert [r.status_code for r in responses] == [200] * 50
    assert elapsed < 1.0


def test_is_prime_exact_body_and_type(server):
    response = requests.get(server.url + "/is_prime/1,2,3,4", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.text == '{"1": false, "2": true, "3": true, "4": false}'


def test_four_900_digit_primes_fit_in_one_get(server):
    numbers = big_primes(900, 4) + [str(int(big_primes(900, 4)[0]) * 3)]
    response = requests.get(server.url + "/is_prime/" + ",".join(numbers), timeout=30)
    assert response.status_code == 200
    assert list(response.json().values()) == [True, True, True, True, False]


@pytest.mark.parametrize("path, status", [
    ("/is_prime/abc", 400),
    ("/is_prime/1,,2", 400),
    ("/is_prime/%EF%BC%91", 400),
    ("/is_prime/" + "7" * 5000, 413),
    ("/is_prime/" + ",".join(["7"] * 1001), 413),
    ("/?mode=turbo", 400),
    ("/missing", 404),
])
def test_bad_input_gets_json_4xx(server, path, status):
    response = requests.get(server.url + path, timeout=10)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["status"] == status


def test_post_batch_too_long_for_a_url(server):
    mersenne_primes = [2**p - 1 for p in (3217, 2281, 2203)]  # 969, 687 and 664 digits
    numbers = mersenne_primes + [m + k for m in mersenne_primes for k in (2, 4, 6)]
    response = requests.post(server.url + "/is_prime", json=[str(n) for n in numbers], timeout=30)
    assert len(",".join(map(str, numbers))) > 8190  # gunicorn's longest request line
    assert response.status_code == 200
    assert list(response.json().values()) == [True] * 3 + [False] * 9


def test_server_is_healthy_after_bad_input(server):
    workers_before = server.session_pids()
    for path in ("/is_prime/x", "/is_prime/" + "9" * 5000, "/nope"):
        requests.get(server.url + path, timeout=10)
    response, seconds = timed_get(server.url + "/")
    assert response.status_code == 200 and seconds < CONCURRENT_BOUND_S
    assert server.session_pids() == workers_before


def test_preload_and_worker_recycling_keep_pools_working(upstream_300, serve):
    service = serve(upstream_300.url + "/?delay_ms=0", PRELOAD=1, MAX_REQUESTS=10,
                    MAX_REQUESTS_JITTER=3, FILE_DELAY_MS=0, DB_DELAY_MS=0)
    big = 2**1279 - 1
    for i in range(60):
        path = f"/is_prime/{big},{i}?mode=process" if i % 2 else "/"
        assert requests.get(service.url + path, timeout=10).status_code == 200, path
    assert service.stop() == 0
    assert service.leftovers == []


def test_sigterm_stops_gunicorn_and_every_child(serve):
    service = serve()
    requests.get(service.url + "/is_prime/7?mode=process", timeout=10)
    assert len(service.session_pids()) > 3  # master, workers, forkservers, pool processes
    assert service.stop(signal.SIGTERM) == 0
    assert service.leftovers == []


def test_metrics_directories_go_with_their_master_even_one_killed(serve):
    def metrics_dir(service):
        return Path(tempfile.gettempdir(), f"flask-pools-metrics-{service.proc.pid}")

    killed = serve()
    killed.stop(signal.SIGKILL)  # on_exit never runs
    assert metrics_dir(killed).is_dir()
    service = serve()
    assert metrics_dir(service).is_dir() and not metrics_dir(killed).exists()
    assert service.stop() == 0
    assert not metrics_dir(service).exists()


# Methods llhttp knows (made-up ones are a 501 before the app: test_hostile.py) and no route has.
UNROUTED_METHODS = ("PROPFIND", "MKCOL", "LOCK", "UNLOCK", "COPY", "MOVE", "SEARCH", "REPORT",
                    "PURGE", "LINK", "UNLINK", "MERGE", "ACL", "TRACE", "CHECKOUT", "MKACTIVITY")


def test_metrics_stay_bounded_through_recycles_and_many_methods(serve):
    service = serve(WEB_WORKERS=1, MAX_REQUESTS=4, MAX_REQUESTS_JITTER=0)
    directory = Path(tempfile.gettempdir(), f"flask-pools-metrics-{service.proc.pid}")

    def counts():
        samples = requests.get(service.url + "/metrics", timeout=10).text
        return {line.split()[0]: float(line.split()[1]) for line in samples.splitlines()
                if line.startswith("http_request_duration_seconds_count{")
                and 'route="/metrics"' not in line}

    before = sum(counts().values())  # the harness's readiness checks
    sent, recycles = 0, set()
    while len(recycles) < 12:  # each worker serves 4 requests, then another replaces it
        method = "GET" if sent % 2 else UNROUTED_METHODS[sent // 2 % len(UNROUTED_METHODS)]
        with requests.Session() as session:  # a connection each: a recycled worker drops its own
            response = session.request(method, service.url + "/healthz", timeout=10)
        assert response.status_code == (200 if method == "GET" else 405)
        recycles.update(worker_pids(service))
        sent += 1
    time.sleep(1.0)  # the last recycle's child_exit
    counted = counts()
    methods = {key.split('method="')[1].split('"')[0] for key in counted}
    # Every request of every dead worker is still counted; other methods share one label.
    assert methods == {"GET", "other"} and sum(counted.values()) - before == sent
    files = [path.name for path in directory.iterdir()]
    assert len([f for f in files if f.startswith(("counter_", "histogram_"))]) <= 4, files


@pytest.mark.slow  # make install first, then gunicorn and the upstream
def test_make_run_serves_and_stops_its_upstream():
    port, upstream_port = free_port(), free_port()
    env = {"PORT": str(port), "UPSTREAM_PORT": str(upstream_port), "API_URL": "",
           "WEB_THREADS": "16", "FILE_DELAY_MS": "0", "DB_DELAY_MS": "0", "API_DELAY_MS": "0"}
    service = Service(["make", "--no-print-directory", "run"], port, env, ready_path="/is_prime/2")
    try:
        body = requests.get(service.url + "/", timeout=10).json()
        assert body["result_api"]["source"] == "upstream"
    finally:
        # GNU make passes SIGTERM on to its recipe, then dies of the same signal itself.
        assert service.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert service.leftovers == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{upstream_port}/healthz", timeout=2)



def test_make_run_keeps_its_upstream_while_workers_are_recycled():
    # Workers are forked from the master that started the upstream; one that exits must not stop it.
    port, upstream_port = free_port(), free_port()
    env = {"PORT": str(port), "UPSTREAM_PORT": str(upstream_port), "API_URL": "",
           "WEB_WORKERS": "2", "WEB_THREADS": "4", "MAX_REQUESTS": "5", "FILE_DELAY_MS": "0",
           "DB_DELAY_MS": "0", "API_DELAY_MS": "0"}
    service = Service(["make", "--no-print-directory", "run"], port, env)
    try:
        statuses = [requests.get(service.url + "/", timeout=10).status_code for _ in range(30)]
    finally:
        service.stop(signal.SIGTERM)
    assert statuses == [200] * 30


def test_workers_are_pinned_to_cpus_of_their_own_and_pool_processes_are_not(server):
    cpus = os.sched_getaffinity(server.proc.pid)
    # A worker pins itself once its pools are warm; the server is ready when one worker answers,
    # so run alone this test could look at the other one before that.
    give_up = time.monotonic() + PIN_WAIT_S
    while True:
        workers = worker_pids(server)
        pinned = [os.sched_getaffinity(pid) for pid in workers]
        if all(len(cpu) == 1 for cpu in pinned) or time.monotonic() > give_up:
            break
        time.sleep(0.1)
    assert len(workers) == 2 and all(len(cpu) == 1 for cpu in pinned)
    assert len(set().union(*pinned)) == min(len(workers), len(cpus))
    helpers = [pid for worker in workers for pid in descendants(worker)]  # forkserver, pool, tracker
    assert helpers and all(os.sched_getaffinity(pid) == cpus for pid in helpers)


@pytest.fixture
def conf():
    """gunicorn.conf.py loaded as gunicorn loads it, with the interpreter's state restored."""
    spec = importlib.util.spec_from_file_location("gunicorn_conf", ROOT / "gunicorn.conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    interval = sys.getswitchinterval()
    yield module
    sys.setswitchinterval(interval)
    gc.unfreeze()


def test_a_started_worker_takes_its_switch_interval_and_freezes_what_it_holds(conf, monkeypatch):
    monkeypatch.setattr(conf.Config, "GIL_SWITCH_MS", 17.0)
    monkeypatch.setattr(conf.Config, "GC_FREEZE", True)
    warmed = []
    pools = SimpleNamespace(warm=lambda: warmed.append(True))
    conf.post_worker_init(SimpleNamespace(wsgi=SimpleNamespace(extensions={"pools": pools})))
    assert warmed and sys.getswitchinterval() == pytest.approx(0.017)
    assert gc.get_freeze_count() > 0


def test_json_logs_and_the_caller_s_trace_reach_the_log_and_the_upstream(serve):
    service = serve(LOG_FORMAT="json", ACCESS_LOG="-", LOG_LEVEL="debug")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traced = requests.get(service.url + "/", timeout=10,
                          headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    sent_on = traced.json()["result_api"]["traceparent"].split("-")
    assert sent_on[1] == trace and sent_on[2] != "00f067aa0ba902b7"  # a span of this service
    results = run_clients(service.url + "/is_prime/7,8", clients=20, per_client=10)
    assert {status for status, _, _ in results} == {200}
    requests.get(service.url + "/no-such-page", timeout=10)
    time.sleep(0.5)  # the last access lines
    lines = [json.loads(line) for line in service.output().splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "gunicorn.access"]
    ids = {headers["X-Request-ID"] for _, _, headers in results}
    assert ids <= {line["request_id"] for line in access}  # every request, by its id
    assert {line["route"] for line in access} >= {"/", "/is_prime/<numbers>", "unmatched"}
    [first] = [line for line in access if line["request_id"] == traced.headers["X-Request-ID"]]
    assert first["trace_id"] == trace and first["status"] == 200 and first["duration_ms"] > 0
    own = [line for line in lines if line["logger"] == "service"]
    assert own and all(line["request_id"] != "-" for line in own)  # a line for each request


@pytest.mark.slow
def test_tls_is_served_by_gthreads_own_reading_before_and_after_a_reload(upstream, tmp_path):
    # The poller reads plain HTTP/1 only: with TLS a worker runs as StampedThreadWorker, and
    # still does after a HUP reload, which takes the worker class from the settings anew.
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    env = {"PORT": str(port), "API_URL": upstream.url + "/", "DATABASE_URL": sqlite_url(tmp_path)}
    command = [sys.executable, "-m", "gunicorn", "--certfile", str(cert), "--keyfile", str(key)]
    with Service(command, port, env, ready_path=None) as service:
        url = f"https://127.0.0.1:{port}/healthz"
        assert requests.get(url, verify=str(cert), timeout=10).status_code == 200
        before = set(worker_pids(service))
        service.proc.send_signal(signal.SIGHUP)
        give_up = time.monotonic() + 30
        while before & set(worker_pids(service)) and time.monotonic() < give_up:
            time.sleep(0.2)
        assert not before & set(worker_pids(service)), "the reload kept the old workers"
        assert requests.get(url, verify=str(cert), timeout=10).status_code == 200
