"""A flood of CPU-heavy batches (issue 16): clients post big batches in a loop while small checks
are timed beside them; then how soon the pool processes go idle once the flood stops.

`python -m bench.flood` runs it against the default deployment (harness.deployment) and prints
the figures; tests/test_faults.py runs a shorter one and asserts on the same figures.
"""
import argparse
import json
import statistics
import threading
import time
from collections import Counter

import requests

from bench.workloads import big_primes
from dev.harness import cpu_seconds, deployment, descendants, worker_pids

# The body: 1000 odd 1000-digit numbers, 1 MB, within PRIME_MAX_ITEMS and _DIGITS.
HUGE = [str(10**999 + 2 * i + 1) for i in range(1000)]
IDLE_CPU_SHARE = 0.1  # pool processes using less than this of a core are idle
SAMPLE_S = 0.1


def admissible(count=60):
    """Primes of 900 digits: little enough at the least cost (all composite) to be admitted,
    ten times more in truth, so they run until their deadline stops them."""
    return big_primes(900, count)


def small_batch():
    """The issue's small POST: ten numbers of 100 digits (primes: the most work they can be)."""
    return big_primes(100, 10)


def pool_pids(service):
    """The processes below gunicorn's workers: pool children, forkservers, resource trackers."""
    return [pid for worker in worker_pids(service) for pid in descendants(worker)]


def run(url, bodies, clients, seconds, small=None):
    """Post `bodies` (in turn) from `clients` loops for `seconds`; meanwhile time sequential
    GET /is_prime/1,2,3 and POST `small`. Returns the figures as a dict; 127.0.0.1 only."""
    assert url.startswith("http://127.0.0.1:")
    small = small or small_batch()
    stop_at = time.monotonic() + seconds
    answers = []  # (status, seconds) of the flood
    bodies = [json.dumps(body) for body in bodies]  # once: the clients share these cores

    def loop(index):
        with requests.Session() as session:
            turn = index
            while time.monotonic() < stop_at:
                body = bodies[turn % len(bodies)]
                turn += 1
                start = time.monotonic()
                status = session.post(url + "/is_prime", data=body, timeout=30,
                                      headers={"Content-Type": "application/json"}).status_code
                answers.append((status, time.monotonic() - start))

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(min(1.0, seconds / 4))  # the flood is on
    tiny, small_statuses = [], []
    with requests.Session() as session:
        while time.monotonic() < stop_at - 0.2:
            start = time.monotonic()
            response = session.get(url + "/is_prime/1,2,3", timeout=10)
            tiny.append((response.status_code, time.monotonic() - start))
            small_statuses.append(session.post(url + "/is_prime", json=small,
                                               timeout=10).status_code)
            time.sleep(SAMPLE_S)
    for thread in threads:
        thread.join()
    return {
        "flood": dict(Counter(status for status, _ in answers)),
        "flood_slowest_s": max(s for _, s in answers),
        "tiny": dict(Counter(status for status, _ in tiny)),
        "tiny_p50_ms": statistics.median(s for _, s in tiny) * 1000,
        "tiny_p99_ms": _p99([s for _, s in tiny]) * 1000,
        "small": dict(Counter(small_statuses)),
    }


def idle_after(pids, give_up_s=30):
    """Seconds from now until these processes together use less than IDLE_CPU_SHARE of a core,
    sampled every SAMPLE_S."""
    start = last_at = time.monotonic()
    last = cpu_seconds(pids)
    while time.monotonic() < start + give_up_s:
        time.sleep(SAMPLE_S)
        now, used = time.monotonic(), cpu_seconds(pids)
        if (used - last) / (now - last_at) < IDLE_CPU_SHARE:
            return last_at - start
        last, last_at = used, now
    return give_up_s


def _p99(values):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def main():
    """Run the flood of the issue against the default deployment and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as data, deployment(data) as (service, _):
        for name, bodies in (("huge", [HUGE]), ("admissible", [admissible()])):
            figures = run(service.url, bodies, args.clients, args.seconds)
            figures["idle_after_s"] = idle_after(pool_pids(service))
            print(name, json.dumps(figures, default=str))


if __name__ == "__main__":
    main()
