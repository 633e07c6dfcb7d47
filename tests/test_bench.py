"""The benchmark's parsing of wrk and its verdicts on the targets (the runs are `make bench`)."""
import subprocess

import pytest
import requests

from bench import bench, clients, peer_asyncio, peer_gevent
from dev import harness
from services.db import init_db

WRK_OUTPUT = """Running 8s test @ http://127.0.0.1:8000/
  1 threads and 200 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   421.10ms   60.22ms 590.00ms   75.00%
  Latency Distribution
     50%  421.00ms
     75%  450.00ms
     90%  500.00ms
     99%    1.20s
  3416 requests in 8.00s, 1.20MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 2304
Requests/sec:    427.00
"""


def test_wrk_output_is_parsed(monkeypatch):
    monkeypatch.setattr(clients, "SETTLE_S", 0)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, WRK_OUTPUT))
    figures = clients.wrk("http://127.0.0.1:8000/", 200, 8)
    assert figures["rps"] == pytest.approx(427) and figures["ok_rps"] == pytest.approx(139)
    assert figures["p50_ms"] == pytest.approx(421) and figures["p99_ms"] == pytest.approx(1200)
    assert figures["non_2xx"] == 2304 and figures["errors"] == 5


def test_wrk_refuses_other_hosts():
    with pytest.raises(AssertionError):
        clients.wrk("http://10.0.0.1:8000/", 1, 1)


def run(clients, goodput, shed=0.0, shed_p99=15, latest=1900, cpu_ms=1.0):
    """One hey run as overload() returns it, over 8 s."""
    return {"connections": clients, "goodput": goodput, "ok_rps": goodput, "shed_rps": shed,
            "ok_p50_ms": 320, "ok_p99_ms": 900, "late": 0, "ok_max_ms": latest,
            "shed_p99_ms": shed_p99, "max_ms": latest, "others": 0, "n_ok": int(goodput * 8),
            "n_shed": int(shed * 8), "cpu_s": goodput * 8 * cpu_ms / 1000, "switches": 0}


def versus(ours=(165, 660, 1300, 1320, 1300), theirs=(165, 650, 1000, 1000, 900), shed_p99=15,
           latest=1900, cpu_ms=(0.7, 1.0), gevent=(160, 600, 900, 900, 800)):
    """Runs of the service and of both peers, at bench.OVERLOAD_CONCURRENCY."""
    return {"service": [run(c, g, shed, shed_p99, latest, cpu_ms[0]) for c, g, shed in
                        zip(bench.OVERLOAD_CONCURRENCY, ours, (0, 0, 0, 200, 900))],
            "asyncio": [run(c, g, cpu_ms=cpu_ms[1])
                        for c, g in zip(bench.OVERLOAD_CONCURRENCY, theirs)],
            "gevent": [run(c, g) for c, g in zip(bench.OVERLOAD_CONCURRENCY, gevent)]}


def results(service_rps=(3, 165, 660, 1100), p50=300, p99=340, **seed_versus):
    """Results as measure() returns them, with the figures chosen by the caller."""
    reads = [{"connections": c, "rps": r, "ok_rps": r, "p50_ms": p50, "p99_ms": p99,
              "non_2xx": 0, "errors": 0} for c, r in zip(bench.CONCURRENCY, service_rps)]
    pairs = {"seed": versus(**seed_versus), "fast": versus((1050,) * 5, (800,) * 5)}
    return {
        "reads": {"service": reads, "sequential": reads, "seed": reads},
        "seed_workload": {"service": {"p50_ms": 2.0}, "seed_s": 20.0, "service_body": {},
                          "seed_body": {}},
        "dispatch": {"trivial": 1000, "is_prime": 900, "ratio": 0.9},
        "scaling": {"inline": 0.4, "process": 0.2},
        "versus": pairs,
        "overload": pairs["seed"]["service"],
        "overload_costs": {"cpu_ms_per_200": 1.8, "cpu_ms_per_503": 0.4,
                           "switches_per_request": 20, "cpu_bound_rps": 1100},
        "memory_idle": (250.0, 150.0),
        "memory_loaded": (300.0, 200.0),
    }


def test_targets_met():
    assert all(met for *_, met in bench.targets(results()))


def test_targets_missed_are_named():
    verdicts = {what: met for what, _, _, met in bench.targets(results(p99=400))}
    assert verdicts["`/` at 50 clients"] is False and verdicts["`/` at 200 clients"] is False
    assert verdicts["four 900-digit primes"] is True


def test_report_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "REPORTS", tmp_path)
    text = bench.write_report(results(), 8)
    assert ("| seed latency, 1000 clients: goodput | ≥ 1.2 × each peer's | 1.32 × asyncio (1320 "
            "vs 1000 /s) · 1.47 × gevent (1320 vs 900 /s)") in text
    assert "| 2000 | 1300 / 900 / 800 | 1.44 · 1.62 | 320 / 320 / 320 | 900 / 900 / 900 | " \
        "900 / 0 / 0 | 15 / 15 / 15 |" in text
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert (tmp_path / "goodput.png").stat().st_size > 0


@pytest.mark.parametrize("change, missed", [
    ({"theirs": (165, 650, 1100, 1000, 900)}, "seed latency, 500 clients: goodput"),
    ({"gevent": (160, 600, 900, 1200, 800)}, "seed latency, 1000 clients: goodput"),
    ({"ours": (165, 660, 1300, 1400, 1300)}, "seed latency, 2000 clients: no collapse"),
    ({"latest": 2100}, "seed latency, 2000 clients: no collapse"),
    ({"shed_p99": 900}, "seed latency, 1000 and 2000 clients: 503s"),
    ({"cpu_ms": (0.9, 1.0)}, ("seed latency, 200 clients: CPU per 200",
                              "seed latency, 1000 clients: CPU per 200")),
])
def test_versus_verdicts(change, missed):
    missed = (missed,) if isinstance(missed, str) else missed
    verdicts = {what: met for what, _, _, met in bench.targets(results(**change))}
    assert all(verdicts[what] is False for what in missed)
    assert sum(not met for met in verdicts.values()) == len(missed), verdicts


def test_fast_sources_are_judged_at_200_and_1000_clients():
    slower_once = results()
    slower_once["versus"]["fast"] = versus((1050, 1050, 1050, 1000, 1050), (800,) * 5)
    verdicts = {what: met for what, _, _, met in bench.targets(slower_once)}
    assert verdicts["fast sources, 200 and 1000 clients: goodput"] is False


def test_costs_fit_cpu_per_200_and_per_503():
    runs = [{"n_ok": ok, "n_shed": shed, "cpu_s": (ok * 2.0 + shed * 0.5) / 1000, "switches": 0}
            for ok, shed in ((1000, 0), (2000, 1000), (1500, 4000))]
    fitted = bench.costs(runs)
    assert fitted["cpu_ms_per_200"] == pytest.approx(2.0)
    assert fitted["cpu_ms_per_503"] == pytest.approx(0.5)


@pytest.mark.parametrize("peer, worker", [(peer_asyncio, "uvicorn"), (peer_gevent, "gevent")])
def test_each_peer_reads_what_the_service_reads(peer, worker, tmp_path, upstream, client):
    """The peers of make bench answer GET / with the same three results as the service: FastAPI
    on uvicorn, and the service's own views on gunicorn's gevent workers."""
    init_db(harness.sqlite_url(tmp_path))
    settings = {"API_URL": upstream.url + "/", "DATABASE_URL": harness.sqlite_url(tmp_path),
                "FILE_DELAY_MS": 0, "DB_DELAY_MS": 0}
    with peer.running(settings) as server:
        response = requests.get(server.url + "/", timeout=10)
        commands = [open(f"/proc/{pid}/cmdline").read()
                    for pid in [server.proc.pid, *harness.descendants(server.proc.pid)]]
    ours = client.get("/").get_json()
    assert response.status_code == 200, response.text
    body = response.json()
    for key in ("result_file", "result_db"):
        assert body[key] == ours[key]
    assert body["result_api"]["source"] == ours["result_api"]["source"] == "upstream"
    assert {"file", "db", "api", "total"} <= set(body["timings_ms"])
    assert response.headers["X-Request-ID"] and "api;dur=" in response.headers["Server-Timing"]
    assert worker in commands[0]
