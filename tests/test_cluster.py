"""The multi-host deployment (deploy/cluster.py) as real processes on 127.0.0.1: HAProxy, two
gunicorn hosts, the shared PostgreSQL, a Dask scheduler and workers; bounded faults against it."""
import collections
import os
import signal
import socket
import threading
import time

import pytest
import requests

from deploy import cluster as deploy
from dev import harness
from tests.helpers import TEST_SIZE, big_primes, missing, timed_get

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

BIG_BATCH = "/is_prime/" + ",".join(big_primes(900, 4)) + "?mode=process"
HOST_SIZE = {key: value for key, value in TEST_SIZE.items() if key != "WEB_WORKERS"}
# Load while a host is killed: clients, and how long after the restart it goes on.
LOAD_CLIENTS = 8
KILL_AFTER_S = 1.5
AFTER_RETURN_S = 3.0
SLOW_CLIENTS = 80  # more than the two hosts' 2 x 32 request threads


@pytest.fixture(scope="module")
def haproxy():
    """HAProxy's path; installed when missing (as root). Skips without it, except under CI."""
    path = harness.ensure_installed("haproxy", "haproxy")
    if not path:
        missing("HAProxy is not installed and could not be")
    return path


@pytest.fixture(scope="module")
def site(haproxy, postgres_url):
    """The cluster: two hosts with one worker each, two Dask workers, its own upstream."""
    with deploy.cluster(hosts=2, dask_workers=2, api_url=None, database_url=postgres_url,
                        **HOST_SIZE) as deployment:
        yield deployment


@pytest.mark.parametrize("cpus, index, hosts, expected", [
    ({0, 1}, 0, 2, {0}),
    ({0, 1}, 1, 2, {1}),
    ({0, 1}, 0, 1, {0, 1}),
    ({0, 1}, 2, 3, {0}),  # more hosts than CPUs: they share, in turn
    ({0, 1, 2, 3}, 1, 2, {2, 3}),
])
def test_each_host_gets_its_own_share_of_the_cpus(monkeypatch, cpus, index, hosts, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: cpus)
    assert deploy.host_cpus(index, hosts) == expected


def test_the_haproxy_config_lists_every_host_and_leaves_nothing_to_fill():
    config = deploy.haproxy_config([8101, 8102], 8000)
    assert "bind 127.0.0.1:8000" in config and "$" not in config
    for backend in config.split("\nbackend ")[1:]:
        assert "server host1 127.0.0.1:8101" in backend and "server host2 127.0.0.1:8102" in backend


def comparable(response):
    """A response's status and body, less what differs between any two reads (timings, the
    upstream's request counter, the trace each request starts)."""
    body = response.json()
    for volatile in ("timings_ms", "serial", "traceparent"):
        body.pop(volatile, None)
        if isinstance(body.get("result_api"), dict):
            body["result_api"].pop(volatile, None)
    return response.status_code, body


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/", None),
    ("GET", "/?mode=sequential", None),
    ("GET", BIG_BATCH, None),
    ("POST", "/is_prime", [97, "98", 2**61 - 1]),
    ("GET", "/is_prime/1,x", None),
    ("GET", "/nowhere", None),
])
def test_answers_through_the_balancer_are_a_host_s(site, method, path, body):
    direct = requests.request(method, site.hosts[0].url + path, json=body, timeout=10)
    balanced = requests.request(method, site.balancer.url + path, json=body, timeout=10)
    assert comparable(balanced) == comparable(direct)
    assert balanced.headers["X-Served-By"] in ("host1", "host2")


def test_the_balancer_uses_every_host(site):
    served_by = {requests.get(site.balancer.url + "/healthz", timeout=10).headers["X-Served-By"]
                 for _ in range(10)}
    assert served_by == {"host1", "host2"}


def steady_load(url, stop, results):
    """GET url on one keep-alive connection until `stop` is set; append (time, status or the
    exception's name, host) to results."""
    with requests.Session() as session:
        while not stop.is_set():
            try:
                response = session.get(url, timeout=10)
                results.append((time.monotonic(), response.status_code,
                                response.headers.get("X-Served-By")))
            except requests.RequestException as exc:
                results.append((time.monotonic(), type(exc).__name__, None))


def test_a_killed_host_fails_no_get_and_its_return_is_picked_up(site):
    stop, results = threading.Event(), []
    clients = [threading.Thread(target=steady_load, args=(site.balancer.url + "/", stop, results))
               for _ in range(LOAD_CLIENTS)]
    for client in clients:
        client.start()
    try:
        time.sleep(KILL_AFTER_S)
        killed_at = time.monotonic()
        site.hosts[0].stop(signal.SIGKILL)  # the master and every process below it
        time.sleep(KILL_AFTER_S)
        site.restart_host(0)
        returned_at = time.monotonic()
        time.sleep(AFTER_RETURN_S)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=30)
    statuses = collections.Counter(status for _, status, _ in results)
    first_back = min((at for at, _, host in results if at > returned_at and host == "host1"),
                     default=float("nan"))
    print(f"\nkill a host under load: {statuses}; the host served again "
          f"{first_back - returned_at:.2f} s after it was ready")
    assert set(statuses) == {200}, statuses
    before = {host for at, _, host in results if at < killed_at}
    down = {host for at, _, host in results if killed_at + 1 < at < returned_at}
    back = {host for at, _, host in results if at > returned_at + AFTER_RETURN_S / 2}
    assert before == {"host1", "host2"} and down == {"host2"} and back == {"host1", "host2"}


def test_a_slow_client_holds_no_host_thread(site):
    port = site.balancer.port
    slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(SLOW_CLIENTS)]
    try:
        for i, sock in enumerate(slow):
            if i % 2:  # headers that never end
                sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            else:  # a body that never comes
                sock.sendall(b"POST /is_prime HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n[2")
        response, seconds = timed_get(site.balancer.url + "/")
        print(f"\nGET / with {SLOW_CLIENTS} slow clients: {seconds:.2f} s")
        assert response.status_code == 200 and seconds < 1.0, seconds
    finally:
        for sock in slow:
            sock.close()


def test_with_the_scheduler_down_the_hosts_still_answer_what_they_can(haproxy, postgres_url,
                                                                     upstream):
    with deploy.cluster(hosts=2, dask_workers=1, api_url=upstream.url + "/",
                        database_url=postgres_url, **HOST_SIZE) as degraded:
        degraded.scheduler.stop(signal.SIGKILL)
        unready = time.monotonic() + 10
        while time.monotonic() < unready:  # every host's /readyz now fails: the balancer sees it
            if all(requests.get(h.url + "/readyz", timeout=10).status_code == 503
                   for h in degraded.hosts):
                break
        time.sleep(2)  # two failed checks, 0.5 s apart, take a host out of the ready backend
        answers = [timed_get(degraded.balancer.url + BIG_BATCH) for _ in range(8)]
        for response, _ in answers:
            assert response.status_code == 503 and "Dask" in response.json()["error"], response.text
        # At most one connect attempt (READY_TIMEOUT_S, 1 s) a worker; the rest are at once.
        seconds = sorted(took for _, took in answers)
        assert seconds[4] < 0.5 and seconds[-1] < 3, seconds
        small = requests.get(degraded.balancer.url + "/is_prime/1,2,3", timeout=10)
        assert small.json() == {"1": False, "2": True, "3": True}
        assert requests.get(degraded.balancer.url + "/", timeout=10).status_code == 200
