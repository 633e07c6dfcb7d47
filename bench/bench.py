"""make bench: the service against the seed's apps and two peers, side by side in one run.

Writes reports/bench.md, reports/bench.png and reports/goodput.png. The load generator is wrk
(Debian's package, installed here when missing and when run as root): a C event loop on one
thread, so the server keeps most of the CPU. The overload runs use hey (Debian's too), which logs
every response, so that the 200s and the 503s get latencies of their own. Every server runs on
127.0.0.1 and is stopped before the next starts.
"""
import argparse
import contextlib
import csv
import io
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench import multihost, peer_asyncio, peer_gevent
from bench.clients import SETTLE_S, median_seconds, wrk
from bench.workloads import SEED_NUMBER, SEED_WORKLOAD, big_primes
from config import Config, ToolConfig
from dev.harness import (
    REPORTS,
    Service,
    cpu_seconds,
    deployment,
    descendants,
    ensure_installed,
    free_port,
    sqlite_url,
)

CONCURRENCY = (1, 50, 200, 500)
FLOOR_S = 0.300  # the slowest read of the seed profile
# Overload: GET / from this many clients each; hey logs every response, so the 200s and the 503s
# get latencies of their own. Goodput is the 200s answered within the deadline, per second.
OVERLOAD_CONCURRENCY = (50, 200, 500, 1000, 2000)
HEY_TIMEOUT_S = 10
# GET / beside the peers (PEERS) with two latency profiles (file,
# database, API milliseconds): the seed's, where requests wait and pile up in flight, and fast
# sources, where the CPU a request takes decides.
PROFILES = {"seed": (100, 200, 300), "fast": (1, 2, 3)}
SCALING_PAIRS = 10
DISPATCH_PAIRS = 12
# Short runs, many of them: this VM's speed drifts by tens of percent within seconds.
DISPATCH_RUN_S = 2
# The seed app keeps the seed's 6-thread pool; its gunicorn gets threads enough for every client,
# so what limits it is that pool, not the server.
SEED_THREADS = 256
# The rewrites users are told to make, run beside the service (issue 24): FastAPI on uvicorn, and
# the service's own Flask code on gunicorn's gevent worker.
PEERS = {"asyncio": peer_asyncio, "gevent": peer_gevent}


def deployment_pids(service, upstream=None):
    """Every process of a deployment: the server's main process (gunicorn's master, uvicorn's)
    and all below it, and the upstream if given."""
    pids = [service.proc.pid] + descendants(service.proc.pid)
    return pids + ([upstream.proc.pid] if upstream else [])


def memory_mb(pids):
    """(RSS, PSS) of these processes in MB; PSS shares each shared page among its users."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return rss / 1024, pss / 1024


def seed_app(module, threads):
    """A seed app under gunicorn's gthread worker, without this project's gunicorn.conf.py: its
    Service, stopped by a `with`."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-c", "/dev/null", "-k", "gthread",
               "-w", str(Config.WEB_WORKERS), "--threads", str(threads), "--backlog", "2048",
               "--timeout", "120", "-b", f"127.0.0.1:{port}", f"bench.{module}:app"]
    return Service(command, port, ready_path="/nonexistent")


def timed_get(url, times):
    """Median seconds of `times` sequential GETs of url, and the last body."""
    seconds, response = median_seconds(lambda: requests.get(url, timeout=600), times)
    return seconds, response.json()


def measure(seconds, data_dir):
    """Run every comparison; return the results as a dict."""
    results = {"reads": {}}
    with deployment(data_dir, LOG_LEVEL="error") as (service, upstream):
        requests.get(service.url + "/", timeout=10)  # a first request opens its connections
        pids = deployment_pids(service, upstream)
        results["memory_idle"] = memory_mb(pids)
        for label, path in (("service", "/"), ("sequential", "/?mode=sequential")):
            results["reads"][label] = [wrk(service.url + path, c, seconds) for c in CONCURRENCY]
        results["memory_loaded"] = memory_mb(deployment_pids(service, upstream))
        results["dispatch"] = dispatch(service.url)
        _, seed_body = timed_get(service.url + SEED_WORKLOAD, 1)
        results["seed_workload"] = {"service": wrk(service.url + SEED_WORKLOAD, 1, seconds),
                                    "service_body": seed_body}
        results["scaling"] = scaling(service.url)
    results["versus"] = {profile: versus(data_dir, delays, seconds)
                         for profile, delays in PROFILES.items()}
    results["overload"] = results["versus"]["seed"]["service"]
    results["overload_costs"] = costs(results["overload"])
    with seed_app("seed_thread_pool", SEED_THREADS) as seed:
        results["reads"]["seed"] = [wrk(seed.url + "/", c, seconds) for c in CONCURRENCY]
    with seed_app("seed_process_pool", SEED_THREADS) as seed:
        seed_seconds, body = timed_get(seed.url + SEED_WORKLOAD, 1)
        results["seed_workload"].update(seed_s=seed_seconds, seed_body=body)
    return results


def versus(data_dir, delays, seconds):
    """GET / from the service and from each peer (PEERS), all up at once with the same sources
    and the same latencies `delays` (file, database, API ms), under hey at each of
    OVERLOAD_CONCURRENCY in turn (who goes first rotates); {name: runs}, each run's CPU that of
    the server's own process tree."""
    file_ms, db_ms, api_ms = delays
    env = {"FILE_DELAY_MS": file_ms, "DB_DELAY_MS": db_ms, "LOG_LEVEL": "error"}
    runs = {"service": [], **{name: [] for name in PEERS}}
    with deployment(data_dir, api_delay_ms=api_ms, **env) as (service, upstream), \
            contextlib.ExitStack() as peers:
        peer_env = {**env, "API_URL": upstream.url + "/", "DATABASE_URL": sqlite_url(data_dir)}
        servers = [("service", service)] + [(name, peers.enter_context(module.running(peer_env)))
                                            for name, module in PEERS.items()]
        for i, clients in enumerate(OVERLOAD_CONCURRENCY):
            for name, server in servers[i % len(servers):] + servers[:i % len(servers)]:
                runs[name].append(overload(server.url, deployment_pids(server), clients, seconds))
    return runs


def overload(base_url, pids, clients, seconds):
    """GET / from `clients` keep-alive connections for `seconds` (hey); the figures of the 200s
    and of the 503s apart, and the CPU seconds and context switches of `pids` meanwhile."""
    url = base_url + "/"
    assert url.startswith("http://127.0.0.1:")
    time.sleep(SETTLE_S)
    cpu, switches = cpu_seconds(pids), context_switches(pids)
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(clients), "-t", str(HEY_TIMEOUT_S),
                          "-o", "csv", url], capture_output=True, text=True, check=True).stdout
    cpu, switches = cpu_seconds(pids) - cpu, context_switches(pids) - switches
    by_status = {}
    for row in list(csv.reader(io.StringIO(out)))[1:]:
        by_status.setdefault(row[6], []).append(float(row[0]) * 1000)
    ok, shed = sorted(by_status.pop("200", [])), sorted(by_status.pop("503", []))
    deadline_ms = Config.REQUEST_TIMEOUT_S * 1000
    in_time = [ms for ms in ok if ms <= deadline_ms]
    return {
        "connections": clients,
        "goodput": len(in_time) / seconds,
        "ok_rps": len(ok) / seconds,
        "shed_rps": len(shed) / seconds,
        "ok_p50_ms": _percentile(in_time, 0.5),  # of the 200s in time, which goodput counts
        "ok_p99_ms": _percentile(in_time, 0.99),
        "late": len(ok) - len(in_time),
        "ok_max_ms": max(ok + [0.0]),
        "shed_p99_ms": _percentile(shed, 0.99),
        "max_ms": max(ok + shed + [0.0]),
        "others": sum(map(len, by_status.values())),  # neither 200 nor 503, errors included
        "n_ok": len(ok), "n_shed": len(shed), "cpu_s": cpu, "switches": switches,
    }


def costs(runs):
    """CPU milliseconds of one 200 and of one 503, and context switches of one request: the
    least-squares fit of cpu = a x 200s + b x 503s over the overload runs."""
    ok = [r["n_ok"] for r in runs]
    shed = [r["n_shed"] for r in runs]
    cpu = [r["cpu_s"] * 1000 for r in runs]
    soo, sos, sss = _dot(ok, ok), _dot(ok, shed), _dot(shed, shed)
    det = soo * sss - sos * sos
    if not det:  # no 503 at all: every CPU second went to 200s
        per_ok, per_shed = sum(cpu) / max(1, sum(ok)), None
    else:
        per_ok = (sss * _dot(ok, cpu) - sos * _dot(shed, cpu)) / det
        per_shed = (soo * _dot(shed, cpu) - sos * _dot(ok, cpu)) / det
    requests = sum(ok) + sum(shed)
    return {"cpu_ms_per_200": per_ok, "cpu_ms_per_503": per_shed,
            "switches_per_request": sum(r["switches"] for r in runs) / max(1, requests),
            "cpu_bound_rps": (os.cpu_count() or 1) * 1000 / per_ok}


def context_switches(pids):
    """Voluntary and involuntary context switches of every thread of these processes."""
    total = 0
    for pid in pids:
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            try:
                total += sum(int(line.split()[1]) for line in status.read_text().splitlines()
                             if "ctxt_switches:" in line)
            except OSError:
                pass
    return total


def _percentile(sorted_values, share):
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))] \
        if sorted_values else float("nan")


def _dot(xs, ys):
    return sum(x * y for x, y in zip(xs, ys))


def dispatch(base_url):
    """Throughput of /is_prime/1,2,3 and of the trivial JSON route /healthz at 50 clients, in
    interleaved short runs; the ratio is the median of the pairs' ratios."""
    pairs = []
    for i in range(DISPATCH_PAIRS):
        # Each route goes first in every other pair, so a drift of the machine favours neither.
        paths = ["/healthz", "/is_prime/1,2,3"][::1 if i % 2 == 0 else -1]
        runs = {path: wrk(base_url + path, 50, DISPATCH_RUN_S, settle_s=0.2) for path in paths}
        pairs.append((runs["/healthz"], runs["/is_prime/1,2,3"]))
    return {
        "trivial": statistics.median(t["rps"] for t, _ in pairs),
        "is_prime": statistics.median(p["rps"] for _, p in pairs),
        "ratio": statistics.median(p["rps"] / t["rps"] for t, p in pairs),
    }


def scaling(base_url):
    """Median seconds of four 900-digit primes inline and on the process pool, interleaved so
    that both modes see the same machine (this one's speed drifts by tens of percent)."""
    big = ",".join(big_primes(900, 4))
    seconds = {"inline": [], "process": []}
    for i in range(SCALING_PAIRS):
        for mode in list(seconds)[::1 if i % 2 == 0 else -1]:
            seconds[mode].append(timed_get(f"{base_url}/is_prime/{big}?mode={mode}", 1)[0])
    return {mode: statistics.median(values) for mode, values in seconds.items()}


def targets(results):
    """[(what, target, measured, met)]: ratios against the peers (issue 24), latency at
    low load against the floor, and the CPU-bound comparisons against the seed."""
    rows = versus_targets(results["versus"])
    reads = {r["connections"]: r for r in results["reads"]["service"]}
    for c in (50, 200):
        r = reads[c]
        want_rps = 0.97 * c / FLOOR_S
        rows.append((f"`/` at {c} clients", f"p50 ≤ {FLOOR_S * 1000 + 5:.0f} ms, p99 ≤ 345 ms, "
                     f"≥ {want_rps:.0f} req/s", f"p50 {r['p50_ms']:.0f} ms, p99 "
                     f"{r['p99_ms']:.0f} ms, {r['ok_rps']:.0f} req/s 200",
                     r["p50_ms"] <= FLOOR_S * 1000 + 5 and r["p99_ms"] <= 345
                     and r["ok_rps"] >= want_rps))
    seed = results["seed_workload"]
    rows.append(("`/is_prime` seed workload", "p50 ≤ 10 ms",
                 f"p50 {seed['service']['p50_ms']:.1f} ms (seed app: {seed['seed_s']:.1f} s)",
                 seed["service"]["p50_ms"] <= 10))
    d = results["dispatch"]
    rows.append(("`/is_prime/1,2,3` vs a trivial JSON route", "≥ 0.8 ×",
                 f"{d['ratio']:.2f} × ({d['is_prime']:.0f} vs {d['trivial']:.0f} req/s)",
                 d["ratio"] >= 0.8))
    s = results["scaling"]
    speedup = s["inline"] / s["process"]
    rows.append(("four 900-digit primes", "`?mode=process` ≥ 1.7 × faster than inline",
                 f"{speedup:.2f} × ({s['inline'] * 1000:.0f} → {s['process'] * 1000:.0f} ms)",
                 speedup >= 1.7))
    idle, loaded = results["memory_idle"], results["memory_loaded"]
    rows.append(("memory, whole deployment", "≤ 400 MB RSS idle and after load",
                 f"RSS {idle[0]:.0f} / {loaded[0]:.0f} MB (PSS {idle[1]:.0f} / {loaded[1]:.0f} MB)",
                 max(idle[0], loaded[0]) <= 400))
    return rows


def versus_targets(versus):
    """[(what, target, measured, met)] for GET / beside both peers, as ratios measured in one
    run (issue 24), and the service's own overload behaviour."""
    seed = versus["seed"]
    rows = []
    for clients in (500, 1000, 2000):
        ours = _run_at(seed["service"], clients)
        theirs = {peer: _run_at(seed[peer], clients)["goodput"] for peer in PEERS}
        ratios = {peer: _ratio(ours["goodput"], goodput) for peer, goodput in theirs.items()}
        rows.append((f"seed latency, {clients} clients: goodput", "≥ 1.2 × each peer's",
                     " · ".join(f"{ratios[peer]:.2f} × {peer} ({ours['goodput']:.0f} vs "
                                f"{goodput:.0f} /s)" for peer, goodput in theirs.items()),
                     min(ratios.values()) >= 1.2))
    peak = max(run["goodput"] for run in seed["service"])
    at_2000 = _run_at(seed["service"], 2000)
    deadline_ms = Config.REQUEST_TIMEOUT_S * 1000
    latest = max(run["ok_max_ms"] for run in seed["service"])
    rows.append(("seed latency, 2000 clients: no collapse", "goodput ≥ 0.95 × the peak, "
                 f"no 200 later than {deadline_ms:.0f} ms",
                 f"{_ratio(at_2000['goodput'], peak):.2f} ×, latest 200 {latest:.0f} ms",
                 at_2000["goodput"] >= 0.95 * peak and latest <= deadline_ms))
    refusals = [_run_at(seed["service"], c)["shed_p99_ms"] for c in (1000, 2000)]
    rows.append(("seed latency, 1000 and 2000 clients: 503s", "p99 ≤ 20 ms",
                 " and ".join(f"{ms:.0f} ms" for ms in refusals), max(refusals) <= 20))
    fast = versus["fast"]
    ratios = [_ratio(_run_at(fast["service"], c)["goodput"], _run_at(fast["asyncio"], c)["goodput"])
              for c in (200, 1000)]
    rows.append(("fast sources, 200 and 1000 clients: goodput", "≥ 1.3 × asyncio's",
                 " and ".join(f"{r:.2f} ×" for r in ratios), min(ratios) >= 1.3))
    for clients in (200, 1000):
        ours, peer = _run_at(seed["service"], clients), _run_at(seed["asyncio"], clients)
        ratio = _ratio(_cpu_ms_per_200(ours), _cpu_ms_per_200(peer))
        rows.append((f"seed latency, {clients} clients: CPU per 200", "≤ 0.8 × asyncio's",
                     f"{ratio:.2f} × ({_cpu_ms_per_200(ours):.2f} vs {_cpu_ms_per_200(peer):.2f}"
                     " ms)", ratio <= 0.8))
    return rows


def _run_at(runs, clients):
    """The run of `runs` at `clients` clients."""
    return next(run for run in runs if run["connections"] == clients)


def _ratio(ours, theirs):
    return ours / theirs if theirs else math.inf


def _cpu_ms_per_200(run):
    """CPU milliseconds of the server's process tree per 200 answered (whatever else it
    answered meanwhile is part of the cost)."""
    return run["cpu_s"] * 1000 / run["n_ok"] if run["n_ok"] else math.inf


def write_report(results, seconds):
    """Write reports/bench.md and reports/bench.png; return the markdown."""
    REPORTS.mkdir(exist_ok=True)
    plot(results, REPORTS / "bench.png")
    plot_goodput(results, REPORTS / "goodput.png")
    cpu = _cpu_model()
    lines = [
        "# Benchmark",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} · {os.cpu_count()} cores ({cpu}) · Python "
        f"{platform.python_version()} · load from wrk (1 thread, keep-alive, {seconds} s a point) "
        "on the same machine · seed latency profile (file 100, db 200, api 300 ms).",
        "",
        "## Targets",
        "",
        "| what | target | measured | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {w} | {t} | {m} | {'yes' if ok else '**no**'} |" for w, t, m, ok in targets(results)]
    lines += ["", "## GET / by concurrency", "",
              "| app | clients | req/s (200) | req/s (all) | p50 ms | p99 ms | non-2xx | errors |",
              "|---|---|---|---|---|---|---|---|"]
    names = {"service": "this service", "sequential": "this service, `?mode=sequential`",
             "seed": f"seed app (global `ThreadPoolExecutor()`, gthread {SEED_THREADS} threads)"}
    for label in ("service", "sequential", "seed"):
        for r in results["reads"][label]:
            lines.append(f"| {names[label]} | {r['connections']} | {r['ok_rps']:.0f} | {r['rps']:.0f} "
                         f"| {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['non_2xx']} | {r['errors']} |")
    lines += versus_report(results)
    seed = results["seed_workload"]
    lines += ["", "![goodput by offered concurrency, beside the peers](goodput.png)", "",
              "![throughput and p99 by concurrency](bench.png)", "",
              "## Other comparisons", "",
              f"- seed workload (`/is_prime/` + 100 × `{SEED_NUMBER}`): this service p50 "
              f"{seed['service']['p50_ms']:.1f} ms, seed process-pool app {seed['seed_s']:.1f} s; "
              f"same answer: {seed['service_body'] == seed['seed_body']} (`{seed['service_body']}`)",
              f"- four 900-digit primes: inline {results['scaling']['inline'] * 1000:.0f} ms, "
              f"process pool {results['scaling']['process'] * 1000:.0f} ms (medians of "
              f"{SCALING_PAIRS} interleaved pairs)",
              f"- dispatch at 50 clients (medians of {DISPATCH_PAIRS} interleaved pairs): `/healthz` "
              f"{results['dispatch']['trivial']:.0f} req/s, `/is_prime/1,2,3` "
              f"{results['dispatch']['is_prime']:.0f} req/s",
              f"- memory of the whole deployment (gunicorn master, workers, forkservers, pool "
              f"processes, resource trackers, upstream): idle RSS {results['memory_idle'][0]:.0f} MB "
              f"/ PSS {results['memory_idle'][1]:.0f} MB; after the load RSS "
              f"{results['memory_loaded'][0]:.0f} MB / PSS {results['memory_loaded'][1]:.0f} MB"]
    text = "\n".join(lines) + "\n"
    (REPORTS / "bench.md").write_text(text)
    return text


def versus_report(results):
    """Markdown lines: GET / of the service beside both peers, per latency profile."""
    costs_ = results["overload_costs"]
    per_shed = costs_["cpu_ms_per_503"]
    names = ("service", *PEERS)
    lines = ["", "## GET / beside the rewrites (hey, every response logged)", "",
             "The peers: FastAPI on uvicorn with uvloop and httptools (bench/peer_asyncio.py), "
             "and the service's own Flask code on gunicorn's gevent worker (bench/peer_gevent.py)"
             f", {Config.WEB_WORKERS} workers each. All up at once, taking turns at each level. "
             f"Goodput: 200s answered within the {Config.REQUEST_TIMEOUT_S:.0f} s deadline, per "
             "second; p50 and p99 are of those. CPU per 200: the server's process tree, whatever "
             "else it answered included. Fitted over the service's seed-latency runs: "
             f"{costs_['cpu_ms_per_200']:.2f} ms per 200, "
             + (f"{per_shed:.2f} ms per 503" if per_shed is not None else "no 503s")
             + f"; {costs_['switches_per_request']:.0f} context switches per request."]
    for profile, delays in PROFILES.items():
        runs = results["versus"][profile]
        lines += ["", f"### {profile} latencies: file {delays[0]}, database {delays[1]}, API "
                  f"{delays[2]} ms", "",
                  "| clients | goodput: " + " / ".join(names) + " | ratios | p50 ms | p99 ms "
                  "| 503/s | 503 p99 ms | late 200s, all | others, all | CPU ms per 200 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for ours in runs["service"]:
            clients = ours["connections"]
            row = [_run_at(runs[name], clients) for name in names]
            cells = [" / ".join(f"{run[key]:.0f}" for run in row) for key in
                     ("goodput", "ok_p50_ms", "ok_p99_ms", "shed_rps", "shed_p99_ms", "late",
                      "others")]
            cells.insert(1, " · ".join(f"{_ratio(ours['goodput'], run['goodput']):.2f}"
                                       for run in row[1:]))
            cells.append(" / ".join(f"{_cpu_ms_per_200(run):.2f}" for run in row))
            lines.append(f"| {clients} | " + " | ".join(cells) + " |")
    return lines


def plot(results, path):
    """Throughput of 200s and p99 against concurrency, one line per app."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, style in (("service", "o-"), ("sequential", "s--"), ("seed", "^:")):
        rows = results["reads"][label]
        xs = [r["connections"] for r in rows]
        left.plot(xs, [r["ok_rps"] for r in rows], style, label=label)
        right.plot(xs, [r["p99_ms"] for r in rows], style, label=label)
    left.set(xscale="log", xlabel="concurrent clients", ylabel="req/s answered 200",
             title="GET / throughput")
    right.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="p99 ms (all responses)",
              title="GET / p99 latency")
    for axes in (left, right):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_goodput(results, path):
    """Goodput against offered concurrency, the service's and each peer's, one panel
    per latency profile; on the seed's, the ideal c / 0.3 s and the bound that the service's
    CPU per 200 puts on the cores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, len(PROFILES), figsize=(12, 4.5))
    for axes, (profile, delays) in zip(panels, PROFILES.items()):
        runs = results["versus"][profile]
        for name, style in (("service", "o-"), ("asyncio", "s--"), ("gevent", "^:")):
            xs = [r["connections"] for r in runs[name]]
            axes.plot(xs, [r["goodput"] for r in runs[name]], style,
                      label=f"{name}: 200s within the deadline / s")
        if profile == "seed":
            axes.plot(xs, [c / FLOOR_S for c in xs], ":", color="grey",
                      label="ideal: clients / 0.3 s")
            axes.axhline(results["overload_costs"]["cpu_bound_rps"], color="red",
                         linestyle="-.", label="CPU bound of the service")
        top = max(r["goodput"] for name in runs for r in runs[name])
        axes.set(xscale="log", xlabel="concurrent clients", ylabel="per second",
                 ylim=(0, top * 1.3), title=f"GET /, {profile} latencies ({delays[2]} ms API)")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main(argv=None):
    """Measure, write the report, print it; exit 1 with --strict if a target was missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=ToolConfig.BENCH_SECONDS,
                        help="length of each wrk run")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--part", choices=("all", "one-host", "multihost"), default="all",
                        help="one host against the seed's apps (reports/bench.md), the Dask and "
                             "HAProxy comparisons (reports/multihost.md), or both")
    args = parser.parse_args(argv)
    for tool in ("wrk", "hey"):
        if not ensure_installed(tool, tool):
            sys.exit(f"{tool} is needed: apt-get install {tool}")
    missed = []
    if args.part != "multihost":
        with tempfile.TemporaryDirectory() as data_dir:
            results = measure(args.seconds, data_dir)
        print(write_report(results, args.seconds))
        missed = [row for row in targets(results) if not row[3]]
    if args.part != "one-host":
        print(multihost.write_report(multihost.measure(args.seconds)))
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
