"""The benchmark's parsing of wrk and its verdicts on the targets (the runs are `make bench`)."""
import subprocess

import pytest

from bench import bench, clients

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


def results(service_rps=(3, 165, 660, 1100), p50=300, p99=340,
            overload_rps=(165, 660, 950, 900, 880), shed_p99=15):
    """Results as measure() returns them, with the reads' figures chosen by the caller."""
    reads = [{"connections": c, "rps": r, "ok_rps": r, "p50_ms": p50, "p99_ms": p99,
              "non_2xx": 0, "errors": 0} for c, r in zip(bench.CONCURRENCY, service_rps)]
    return {
        "reads": {"service": reads, "sequential": reads, "seed": reads},
        "seed_workload": {"service": {"p50_ms": 2.0}, "seed_s": 20.0, "service_body": {},
                          "seed_body": {}},
        "dispatch": {"trivial": 1000, "is_prime": 900, "ratio": 0.9},
        "scaling": {"inline": 0.4, "process": 0.2},
        "overload": [{"connections": c, "goodput": g, "ok_rps": g, "shed_rps": shed,
                      "ok_p50_ms": 320, "ok_p99_ms": 900, "shed_p99_ms": shed_p99, "max_ms": 1900,
                      "others": 0, "n_ok": int(g * 8), "n_shed": int(shed * 8), "cpu_s": 0,
                      "switches": 0}
                     for c, g, shed in zip(bench.OVERLOAD_CONCURRENCY, overload_rps,
                                           (0, 0, 0, 200, 900))],
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
    assert "| `/` at 500 clients (hey) | ≥ 900 req/s of 200s" in text
    assert "| 2000 | 880 | 880 | 900 |" in text
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert (tmp_path / "goodput.png").stat().st_size > 0


def test_overload_verdicts():
    verdicts = {what: met for what, _, _, met in bench.targets(results())}
    assert verdicts["`/` at 500 clients (hey)"] and verdicts["`/` at 2000 clients (hey)"]
    collapsed = {what: met for what, _, _, met in
                 bench.targets(results(overload_rps=(165, 660, 950, 900, 500)))}
    assert collapsed["`/` at 1000 clients (hey)"] and not collapsed["`/` at 2000 clients (hey)"]
    slow_refusals = {what: met for what, _, _, met in bench.targets(results(shed_p99=900))}
    assert not slow_refusals["`/` at 1000 clients (hey)"]


def test_costs_fit_cpu_per_200_and_per_503():
    runs = [{"n_ok": ok, "n_shed": shed, "cpu_s": (ok * 2.0 + shed * 0.5) / 1000, "switches": 0}
            for ok, shed in ((1000, 0), (2000, 1000), (1500, 4000))]
    fitted = bench.costs(runs)
    assert fitted["cpu_ms_per_200"] == pytest.approx(2.0)
    assert fitted["cpu_ms_per_503"] == pytest.approx(0.5)
