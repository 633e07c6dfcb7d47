"""The part of `make bench` that goes beyond one host (issue 9), side by side in one run:
prime checks on the local process pool against a Dask cluster of 1 and 2 workers, and GET /
from one host against HAProxy in front of one and two hosts. On one 2-core machine a cluster
cannot beat the cores: what this measures is what each layer costs (docs/scaling.md).
"""
import functools
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from bench import workloads
from bench.clients import median_seconds, wrk
from config import Config
from deploy import cluster as deploy
from dev import harness
from dev.harness import cpu_seconds

HEAVY_NUMBERS = 32
HEAVY_DIGITS = 900
HEAVY_RUNS = 5
ONE_TASK = "/is_prime/97?mode=process"  # one chunk on the pool: the cost of a task, not its work
ONE_TASK_RUNS = 60
BALANCED_CLIENTS = 200
BALANCED_ROUNDS = 3
# The heavy batch takes more than the default 2 s budget on one Dask worker: time it, not the 504.
CPU_HOST = {"WEB_WORKERS": 1, "LOG_LEVEL": "error", "REQUEST_TIMEOUT_S": 30}


def cpu_figures(url, batch):
    """(ms per one-task request, ms per heavy batch) against a host at `url`."""
    with requests.Session() as session:
        one, _ = median_seconds(lambda: session.get(url + ONE_TASK, timeout=10), ONE_TASK_RUNS)
        heavy, _ = median_seconds(lambda: session.post(url + "/is_prime?mode=process",
                                                       json=batch, timeout=60), HEAVY_RUNS)
    return one * 1000, heavy * 1000


def measure_cpu(data_dir, upstream_url):
    """Prime checks on the local pool, then on Dask with one worker, then with two."""
    batch = workloads.big_primes(HEAVY_DIGITS, HEAVY_NUMBERS)
    results = {}
    host = harness.start_gunicorn(upstream_url, data_dir, **CPU_HOST)
    try:
        results["process"] = cpu_figures(host.url, batch)
    finally:
        host.stop()
    scheduler = harness.start_dask_scheduler()
    workers = []
    try:
        host = harness.start_gunicorn(upstream_url, data_dir, **CPU_HOST,
                                      CPU_EXECUTOR=f"dask://127.0.0.1:{scheduler.port}")
        try:
            for n in (1, 2):
                workers.append(harness.start_dask_worker(scheduler, f"worker-{n}"))
                results[f"dask, {n} worker" + "s" * (n > 1)] = cpu_figures(host.url, batch)
        finally:
            host.stop()
    finally:
        for service in workers + [scheduler]:
            service.stop()
    return results


def measure_balanced(seconds, upstream_url):
    """GET / at BALANCED_CLIENTS clients: one host, HAProxy with one host, with two hosts;
    BALANCED_ROUNDS rounds, each in another order; the median of each figure."""
    runs = {label: [] for label in BALANCED}
    for round_ in range(BALANCED_ROUNDS):
        labels = list(BALANCED)
        for label in labels[round_ % len(labels):] + labels[:round_ % len(labels)]:
            with BALANCED[label](upstream_url) as (url, balancer_pids):
                requests.get(url + "/", timeout=10)  # a first request opens its connections
                parts = {"machine": machine_cpu_s, "balancer": lambda: cpu_seconds(balancer_pids),
                         "database": lambda: cpu_seconds(postgres_pids())}
                before = {part: measure_part() for part, measure_part in parts.items()}
                figures = wrk(url + "/", BALANCED_CLIENTS, seconds, settle_s=0)
                requests_done = figures["rps"] * seconds
                for part, measure_part in parts.items():
                    figures[f"{part}_cpu_ms"] = ((measure_part() - before[part]) * 1000
                                                 / requests_done)
                runs[label].append(figures)
    return {label: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
            for label, rs in runs.items()}


@contextmanager
def _one_host(upstream_url):
    with tempfile.TemporaryDirectory() as data_dir:
        # As many database connections as the cluster's hosts hold in all.
        host = harness.start_gunicorn(upstream_url, data_dir, DATABASE_URL=deploy.POSTGRES_URL,
                                      DB_POOL_SIZE=deploy.DB_CONNECTIONS // Config.WEB_WORKERS,
                                      LOG_LEVEL="error")
        try:
            yield host.url, []
        finally:
            host.stop()


@contextmanager
def _balanced(hosts, upstream_url):
    with deploy.cluster(hosts=hosts, dask_workers=0, api_url=upstream_url,
                        LOG_LEVEL="error") as site:
        yield site.balancer.url, [site.balancer.proc.pid]


BALANCED = {"one host": _one_host,
            "HAProxy, 1 host": functools.partial(_balanced, 1),
            "HAProxy, 2 hosts": functools.partial(_balanced, 2)}


def machine_cpu_s():
    """CPU seconds this machine has been busy, every process of every user (/proc/stat)."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def postgres_pids():
    """The PostgreSQL server's processes (its connections' backends among them)."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()
            and _comm(entry) == "postgres"]


def _comm(pid):
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def measure(seconds):
    """Every comparison of this module, as a dict."""
    upstream = harness.start_upstream(delay_ms=Config.API_DELAY_MS)
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            cpu = measure_cpu(data_dir, upstream.url + "/")
        return {"cpu": cpu, "balanced": measure_balanced(seconds, upstream.url + "/")}
    finally:
        upstream.stop()


def write_report(results):
    """Write reports/multihost.md; return its markdown."""
    harness.REPORTS.mkdir(exist_ok=True)
    text = "\n".join(report_lines(results)) + "\n"
    (harness.REPORTS / "multihost.md").write_text(text)
    return text


def report_lines(results):
    """The report on these runs, as markdown lines."""
    cpu = results["cpu"]
    process_one = cpu["process"][0]
    lines = [f"# Beyond one host ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Prime checks, one gunicorn worker; medians of {ONE_TASK_RUNS} one-task requests "
             f"(`{ONE_TASK}`) and of {HEAVY_RUNS} POSTs of {HEAVY_NUMBERS} primes of "
             f"{HEAVY_DIGITS} digits (`?mode=process`). Dask workers have one thread each.", "",
             "| where | one task, ms | overhead per task vs the local pool, ms | "
             f"{HEAVY_NUMBERS} × {HEAVY_DIGITS} digits, ms |", "|---|---|---|---|"]
    lines += [f"| {where} | {one:.1f} | {one - process_one:+.1f} | {heavy:.0f} |"
              for where, (one, heavy) in cpu.items()]
    lines += ["", f"`GET /` at {BALANCED_CLIENTS} clients (wrk), PostgreSQL as the database, the "
              "same cores for all: one host has a worker per core; behind HAProxy each of 2 hosts "
              f"has half the cores, a worker on each. Medians of {BALANCED_ROUNDS} rounds.",
              "CPU ms per request: the whole machine's (hosts, HAProxy, PostgreSQL, the upstream, "
              "wrk), HAProxy's and PostgreSQL's.",
              "", "| deployment | req/s (200) | p50 ms | p99 ms | non-2xx | errors | CPU ms "
              "| HAProxy | PostgreSQL |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {label} | {r['ok_rps']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
              f"{r['non_2xx']:.0f} | {r['errors']:.0f} | {r['machine_cpu_ms']:.2f} | "
              f"{r['balancer_cpu_ms']:.2f} | {r['database_cpu_ms']:.2f} |"
              for label, r in results["balanced"].items()]
    return lines
