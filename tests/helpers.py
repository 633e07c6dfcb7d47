"""What the tests share that is not a fixture: deadlines, timed requests, client runs, the size of
the tests' deployments and starting them (Gunicorns), and whether a real part is missing (skip, or
fail under CI=true)."""
import functools
import math
import time

import gmpy2
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bench import workloads
from config import ToolConfig
from dev import harness
from services import primes

POSTGRES_URL = ToolConfig.POSTGRES_URL


def far():
    """A deadline that will not pass during a test."""
    return time.monotonic() + 30


def timed_get(url, **kwargs):
    """GET url; return (response, seconds)."""
    start = time.monotonic()
    response = requests.get(url, timeout=10, **kwargs)
    return response, time.monotonic() - start


@functools.cache
def big_primes(digits, count):
    """bench.workloads.big_primes, found once per test run."""
    return workloads.big_primes(digits, count)


def primes_lasting(cpu_s):
    """900-digit primes whose checks take about `cpu_s` seconds of CPU on this machine, counted
    from one check timed here: a fixed count ran inside a test's deadline on a faster machine."""
    one = gmpy2.mpz(big_primes(900, 1)[0])
    best_s = min(primes._time_us(primes.is_prime, one) for _ in range(3)) / 1e6
    return big_primes(900, math.ceil(cpu_s / best_s))


def run_clients(url, clients, per_client, timeout_s=30, headers=None):
    """Send clients x per_client GETs from `clients` concurrent connections (aiohttp).

    Returns [(status, seconds, headers)], one per request; a bounded run against 127.0.0.1 only.
    """
    import asyncio

    import aiohttp

    assert url.startswith("http://127.0.0.1:")

    async def client(session, results):
        for _ in range(per_client):
            start = time.monotonic()
            async with session.get(url, headers=headers) as response:
                await response.read()
                results.append((response.status, time.monotonic() - start, response.headers))

    async def main():
        results = []
        connector = aiohttp.TCPConnector(limit=clients)
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(client(session, results) for _ in range(clients)))
        return results

    return asyncio.run(main())


# Smaller than the default deployment, so that tests running side by side fit on two cores.
TEST_SIZE = {"WEB_WORKERS": 2, "WEB_THREADS": 32, "PROCESS_POOL_SIZE": 2}


class Gunicorns:
    """Starts real gunicorns as the tests run them, and stops every one it started.

    `serve(api_url=None, **env)` starts gunicorn.conf.py's deployment with TEST_SIZE, reading
    the shared upstream (or `api_url`) and a database in a directory of its own; `env`
    overrides any setting. It returns dev.harness.Service (url, stop(), leftovers, ...)."""

    def __init__(self, api_url, directory):
        self._api_url = api_url
        self._directory = directory
        self._started = []

    def __call__(self, api_url=None, **env):
        data_dir = self._directory / f"gunicorn-{len(self._started)}"
        data_dir.mkdir(exist_ok=True)
        service = harness.start_gunicorn(api_url or self._api_url, data_dir,
                                         **{**TEST_SIZE, **env})
        self._started.append(service)
        return service

    def stop_all(self):
        """Stop every gunicorn started (a stopped one again is a no-op)."""
        for service in reversed(self._started):
            service.stop()


def postgres_available():
    """True when the PostgreSQL of POSTGRES_URL accepts connections."""
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means no PostgreSQL here
        return False
    finally:
        engine.dispose()


def missing(what):
    """A real part the test needs is missing: skip on a laptop, but fail under CI=true."""
    if ToolConfig.CI:
        pytest.fail(f"CI=true but {what}")
    pytest.skip(what)


def ended_reads(service):
    """{reason: count} of request_reads_ended_total in /metrics."""
    text = requests.get(service.url + "/metrics", timeout=10).text
    return {sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "request_reads_ended" for sample in family.samples
            if sample.name.endswith("_total")}
