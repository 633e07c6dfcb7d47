"""make profile: where one GET / spends its CPU, by part, and what one more request in flight costs.

Writes reports/profile.md and reports/profile.svg (py-spy's flame graph).

1. By part: one worker, fast sources (file, database, API 1/2/3 ms), hey from CLIENTS clients.
   py-spy samples the thread holding the GIL (`--gil`) without stopping the worker
   (`--nonblocking`): stopping hundreds of threads at each sample slowed the worker several
   times, and without `--gil` most samples were threads blocked in a wait that py-spy took for
   running. Each sample goes to the part of its innermost frame that PARTS names; a part's µs
   per request is its share of the samples times the worker's CPU per request, measured over
   the same seconds from /proc. Time without the GIL (system calls, the kernel) is in that CPU
   but seen by no sample, so it is spread over the parts in proportion.
2. One at a time: bench/parts.py times each part alone, in one thread, without latency.
3. In flight: one worker at one rate (RATE_PER_S), the API answering after each of
   API_LATENCIES_MS, so that only how many requests wait at once differs: CPU and context
   switches per request and the worker's RSS at each; the difference, per request in flight,
   is what holding one more costs.
"""
import argparse
import collections
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench import context_switches, memory_mb
from dev.harness import (
    REPORTS,
    ROOT,
    cpu_seconds,
    deployment,
    ensure_installed,
    start_gunicorn,
    start_upstream,
    worker_pids,
)

CLIENTS = 32
FAST = {"FILE_DELAY_MS": 1, "DB_DELAY_MS": 2}
FAST_API_MS = 3
# The same rate of GET / with the API answering after each of these: so many more requests in
# flight (Little's law), each holding its threads longer, and nothing else different.
RATE_PER_S = 150
API_LATENCIES_MS = (300, 1200)
RATE_HZ = 400
# A sample's part: that of its innermost frame whose file starts with one of these paths.
PARTS = {
    "HTTP parsing (gunicorn's parser, runtime/wire.py)": (
        "gunicorn/http/message.py", "gunicorn/http/parser.py", "gunicorn/http/unreader.py",
        "gunicorn/http/body.py", "gunicorn/http/errors.py", "runtime/wire.py"),
    "response writing (gunicorn, runtime/outbox.py)": (
        "gunicorn/http/wsgi.py", "gunicorn/util.py", "runtime/outbox.py"),
    "worker: poller, request queue, admission": (
        "gunicorn/workers/", "runtime/worker.py", "runtime/channel.py", "runtime/accept.py",
        "runtime/stamps.py", "runtime/lifo_queue.py", "runtime/overload.py", "runtime/limit.py",
        "selectors.py"),
    "Flask and Werkzeug": ("flask/", "werkzeug/", "blinker/", "itsdangerous/"),
    "JSON": ("json/",),
    "the app's own code (app.py, pages.py)": ("app.py", "pages.py"),
    "hand-offs: pools, futures, the event loop (pools.py, concurrent.futures, asyncio)": (
        "pools.py", "runtime/fanout.py", "runtime/cpu_queue.py", "concurrent/futures/",
        "queue.py", "runtime/per_process.py", "contextvars",
        "asyncio/", "runtime/loop_thread.py"),
    "SQL (SQLAlchemy, sqlite3)": ("sqlalchemy/", "services/db.py", "sqlite3/"),
    "HTTP read (http.client)": ("http/client.py", "email/", "services/api.py"),
    "file read": ("services/files.py", "pathlib.py", "codecs.py", "<frozen codecs>"),
    "metrics (prometheus_client)": ("prometheus_client/",),
    "logging and request ids (telemetry.py)": ("logging/", "telemetry.py"),
}
OTHER = "other (threads, sockets, the rest of the stdlib)"
# A sample whose innermost frame is one of these waits caught its thread entering or leaving
# it (py-spy reads the GIL's holder, then its stack): the cost of a hand-over, not of the part.
WAITS = ("simulate_latency (services/__init__.py", "SocketIO.readinto (socket.py",
         "Condition.wait (threading.py", "_worker (concurrent/futures/thread.py",
         "EpollSelector.select (selectors.py", "_PollLikeSelector.select (selectors.py")
WAITING = "entering or leaving a wait (sleep, recv, lock, queue, select)"
_FRAME_FILE = re.compile(r"\((.*):\d+\)$")


def part_of(stack):
    """The part of one py-spy stack ('fn (file:line);…', outermost first)."""
    frames = stack.split(";")
    if frames[-1].strip().startswith(WAITS):
        return WAITING
    for frame in reversed(frames):
        match = _FRAME_FILE.search(frame.strip())
        path = match.group(1) if match else ""
        for part, prefixes in PARTS.items():
            if path.startswith(prefixes):
                return part
    return OTHER


def shares(raw_text):
    """{part: share of the samples} of py-spy's raw output ('stack count' lines)."""
    counts = collections.Counter()
    for line in raw_text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[part_of(stack)] += int(count)
    total = sum(counts.values()) or 1
    return ({part: counts[part] / total for part in [*PARTS, WAITING, OTHER]},
            sum(counts.values()))


def py_spy(pid, seconds, output, fmt):
    """Sample `pid` for `seconds` into `output` (fmt: raw or flamegraph)."""
    subprocess.run([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
                    "--duration", str(seconds), "--rate", str(RATE_HZ), "--gil",
                    "--nonblocking", "--format", fmt, "--output", str(output)],
                   check=True, capture_output=True)


def hey(url, clients, seconds, rate=None):
    """Start hey against `url` (127.0.0.1 only), each client at most `rate` requests a second;
    it stops by itself after `seconds`."""
    assert url.startswith("http://127.0.0.1:")
    limit = ["-q", f"{rate:.3f}"] if rate else []
    return subprocess.Popen(["hey", "-z", f"{seconds}s", "-c", str(clients), *limit, url],
                            stdout=subprocess.PIPE, text=True)


def requests_per_second(hey_process):
    """hey's figure of requests per second, once it is done."""
    out = hey_process.communicate()[0]
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def by_part(data_dir, seconds):
    """Profile one worker under fast sources; {part: µs per request}, and the figures behind."""
    settle = 2
    with deployment(data_dir, api_delay_ms=FAST_API_MS, WEB_WORKERS=1, LOG_LEVEL="error",
                    **FAST) as (service, _):
        worker = worker_pids(service)[0]
        load = hey(service.url + "/", CLIENTS, 2 * seconds + 3 * settle)
        time.sleep(settle)
        cpu, start = cpu_seconds([worker]), time.monotonic()
        with tempfile.TemporaryDirectory() as scratch:
            raw = Path(scratch) / "raw.txt"
            py_spy(worker, seconds, raw, "raw")
            cpu, elapsed = cpu_seconds([worker]) - cpu, time.monotonic() - start
            parts, samples = shares(raw.read_text())
        REPORTS.mkdir(exist_ok=True)
        py_spy(worker, seconds, REPORTS / "profile.svg", "flamegraph")
        rps = requests_per_second(load)
    cpu_us = cpu / (rps * elapsed) * 1e6
    return {"us": {part: share * cpu_us for part, share in parts.items()}, "cpu_us": cpu_us,
            "rps": rps, "samples": samples, "ticks": int(seconds * RATE_HZ),
            "cpu_share": cpu / elapsed}


def in_flight(data_dir, seconds):
    """[(requests in flight, CPU µs per request, context switches per request, worker RSS MB)]
    at one rate, RATE_PER_S, with the API answering after each of API_LATENCIES_MS."""
    rows = []
    upstream = start_upstream()
    try:
        for api_ms in API_LATENCIES_MS:
            clients = math.ceil(RATE_PER_S * (api_ms / 1000) * 1.5)  # each client then waits
            service = start_gunicorn(f"{upstream.url}/?delay_ms={api_ms}", data_dir,
                                     WEB_WORKERS=1, WEB_THREADS=clients, LOG_LEVEL="error")
            try:
                worker = worker_pids(service)[0]
                load = hey(service.url + "/", clients, seconds + 3, rate=RATE_PER_S / clients)
                time.sleep(2)
                cpu, switches, start = cpu_seconds([worker]), context_switches([worker]), \
                    time.monotonic()
                time.sleep(seconds)
                cpu, switches = cpu_seconds([worker]) - cpu, context_switches([worker]) - switches
                elapsed = time.monotonic() - start  # before hey's end, which comes later
                rps = requests_per_second(load)
                served = rps * elapsed
                rows.append((round(rps * api_ms / 1000), cpu / served * 1e6, switches / served,
                             memory_mb([worker])[0]))  # in flight: Little's law
            finally:
                service.stop()
    finally:
        upstream.stop()
    return rows


def one_at_a_time(data_dir):
    """bench/parts.py's {part: CPU µs per call}, run in a process of its own as a worker is."""
    upstream = start_upstream()
    try:
        with tempfile.TemporaryDirectory() as metrics:
            out = subprocess.run([sys.executable, "-m", "bench.parts", upstream.url + "/",
                                  data_dir], cwd=ROOT, capture_output=True, text=True, check=True,
                                 env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics})
    finally:
        upstream.stop()
    return json.loads(out.stdout)


def write_report(parts, alone, flight):
    """Write reports/profile.md; return its text."""
    lines = ["# Where one GET / spends its CPU", "",
             f"One worker, fast sources, {CLIENTS} clients: {parts['rps']:.0f} req/s at "
             f"{parts['cpu_share']:.0%} of a core, **{parts['cpu_us']:.0f} µs of CPU per "
             f"request**; py-spy caught the GIL's holder in {parts['samples']} of "
             f"{parts['ticks']} ticks. Flame graph: profile.svg.", "",
             "| part | share of the samples | µs per request |", "|---|---|---|"]
    lines += [f"| {part} | {us / parts['cpu_us']:.1%} | {us:.0f} |"
              for part, us in sorted(parts["us"].items(), key=lambda item: -item[1])]
    lines += ["", "## The parts one at a time", "",
              "One thread, one call at a time, no latency, CPU of the whole process "
              "(bench/parts.py):", "", "| part | µs of CPU a call |", "|---|---|"]
    lines += [f"| {part} | {us:.0f} |" for part, us in alone.items()]
    lines += ["", "## What a request in flight costs", "",
              f"One worker, {RATE_PER_S} GET / a second, the API answering after "
              + " or ".join(f"{ms} ms" for ms in API_LATENCIES_MS)
              + ": the same work, more of it waiting at once.", "",
              "| requests in flight | CPU µs per request | context switches per request "
              "| worker RSS MB |", "|---|---|---|---|"]
    lines += [f"| {n} | {cpu:.0f} | {cs:.1f} | {rss:.0f} |" for n, cpu, cs, rss in flight]
    (few, cpu_few, cs_few, rss_few), (many, cpu_many, cs_many, rss_many) = flight[0], flight[-1]
    extra = max(1, many - few)
    lines += ["", f"Each request in flight beyond {few}: {(rss_many - rss_few) * 1024 / extra:.0f}"
              f" KB more RSS, and {(cpu_many - cpu_few) / extra:.2f} µs of CPU and "
              f"{(cs_many - cs_few) / extra:.3f} context switches more for every request."]
    text = "\n".join(lines) + "\n"
    (REPORTS / "profile.md").write_text(text)
    return text


def main(argv=None):
    """Profile, write the report, print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each sampling")
    args = parser.parse_args(argv)
    if not ensure_installed("hey", "hey"):
        sys.exit("hey is needed: apt-get install hey")
    with tempfile.TemporaryDirectory() as data_dir:
        parts = by_part(data_dir, args.seconds)
        alone = one_at_a_time(data_dir)
        flight = in_flight(data_dir, args.seconds)
    print(write_report(parts, alone, flight))


if __name__ == "__main__":
    main()
