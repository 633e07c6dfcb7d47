"""What every part of `make bench` measures with: wrk (bench.py says why wrk) and a timer."""
import re
import statistics
import subprocess
import time

WRK_TIMEOUT_S = 10
SETTLE_S = 2.0


def wrk(url, connections, seconds, settle_s=None):
    """Load `url` from `connections` keep-alive connections; return its figures."""
    assert url.startswith("http://127.0.0.1:")
    time.sleep(SETTLE_S if settle_s is None else settle_s)  # let queued requests drain first
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency",
         "--timeout", f"{WRK_TIMEOUT_S}s", url],
        capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", out).group(1))
    duration = _seconds(*re.search(r"requests in ([\d.]+)(\w+)", out).groups())
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {
        "connections": connections,
        "rps": total / duration,
        "ok_rps": (total - non_2xx) / duration,
        "p50_ms": _seconds(*re.search(r" 50%\s+([\d.]+)(\w+)", out).groups()) * 1000,
        "p99_ms": _seconds(*re.search(r" 99%\s+([\d.]+)(\w+)", out).groups()) * 1000,
        "non_2xx": non_2xx,
        "errors": errors,
    }


def _seconds(value, unit):
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def median_seconds(send, runs):
    """Median seconds of `runs` calls of send(), each of which must answer 200, and the last
    response."""
    seconds = []
    for _ in range(runs):
        start = time.monotonic()
        response = send()
        seconds.append(time.monotonic() - start)
        assert response.status_code == 200, response.text
    return statistics.median(seconds), response
