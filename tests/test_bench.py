"""The benchmark's parsing of wrk and its verdicts on the targets (the runs are `make bench`)."""
import subprocess

import pytest

from bench import bench

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
    monkeypatch.setattr(bench, "SETTLE_S", 0)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, WRK_OUTPUT))
    figures = bench.wrk("http://127.0.0.1:8000/", 200, 8)
    assert figures["rps"] == pytest.approx(427) and figures["ok_rps"] == pytest.approx(139)
    assert figures["p50_ms"] == pytest.approx(421) and figures["p99_ms"] == pytest.approx(1200)
    assert figures["non_2xx"] == 2304 and figures["errors"] == 5


def test_wrk_refuses_other_hosts():
    with pytest.raises(AssertionError):
        bench.wrk("http://10.0.0.1:8000/", 1, 1)


def results(service_rps=(3, 165, 660, 1100), p50=300, p99=340):
    """Results as measure() returns them, with the reads' figures chosen by the caller."""
    reads = [{"connections": c, "rps": r, "ok_rps": r, "p50_ms": p50, "p99_ms": p99,
              "non_2xx": 0, "errors": 0} for c, r in zip(bench.CONCURRENCY, service_rps)]
    return {
        "reads": {"service": reads, "sequential": reads, "seed": reads},
        "seed_workload": {"service": {"p50_ms": 2.0}, "seed_s": 20.0, "service_body": {},
                          "seed_body": {}},
        "dispatch": {"trivial": 1000, "is_prime": 900, "ratio": 0.9},
        "scaling": {"inline": 0.4, "process": 0.2},
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
    assert "| `/` at 500 clients | ≥ 1000 req/s | 1100 req/s 200" in text
    assert (tmp_path / "bench.png").stat().st_size > 0
