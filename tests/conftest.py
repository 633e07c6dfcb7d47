"""Fixtures: the app and its test client, and real upstream and gunicorn processes on free ports."""
import functools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gmpy2
import pytest
import requests

from app import create_app
from services.db import init_db

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 40.0
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


@functools.cache
def big_primes(digits, count):
    """The first `count` primes after 10**(digits-1) * k for k = 1..count, as decimal strings."""
    return [str(gmpy2.next_prime(gmpy2.mpz(10) ** (digits - 1) * k)) for k in range(1, count + 1)]


def free_port():
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """A real server process started for a test, stopped with its whole process group."""

    def __init__(self, command, port, env=None, ready_path="/healthz"):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        # A file, not a pipe: a pipe nobody reads fills up and blocks the server's logging.
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **(env or {})}, start_new_session=True,
            stdout=self.log, stderr=subprocess.STDOUT, text=True,
        )
        self._wait_ready(ready_path)

    def _wait_ready(self, path):
        give_up = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < give_up:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args} exited: {self.output()}")
            try:
                requests.get(self.url + path, timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.proc.args} did not answer within {READY_TIMEOUT_S} s")

    def output(self):
        """Everything the process has written to stdout and stderr so far."""
        self.log.seek(0)
        return self.log.read()

    def session_pids(self):
        """Pids of every live process in the server's session: it, its workers, their children."""
        return sorted(pid for pid in _live_pids() if _sid(pid) == self.proc.pid)

    def stop(self, sig=signal.SIGTERM):
        """Send `sig` to the main process and wait; return its exit code.

        Whatever it left behind is listed in `self.leftovers`, then killed with its group.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        self.leftovers = self.session_pids()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        return self.proc.returncode


def _live_pids():
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                        yield int(entry)
            except OSError:
                pass


def _sid(pid):
    try:
        return os.getsid(pid)
    except OSError:
        return None


def parent_of(pid):
    """The parent pid of `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def descendants(pid):
    """Pids of every live process below `pid`."""
    children = {}
    for child in _live_pids():
        children.setdefault(parent_of(child), []).append(child)
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return sorted(found)


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


def start_upstream(delay_ms=0):
    """Start the real upstream API on a free port."""
    port = free_port()
    command = [sys.executable, "upstream.py", "--port", str(port), "--delay-ms", str(delay_ms)]
    return Service(command, port)


def start_gunicorn(api_url, tmp_path, **env):
    """Start real gunicorn (gunicorn.conf.py) on a free port, reading its API at `api_url`."""
    port = free_port()
    settings = {
        "PORT": str(port),
        "API_URL": api_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        "WEB_WORKERS": "2",
        "WEB_THREADS": "32",
        "PROCESS_POOL_SIZE": "2",
    }
    settings.update({key: str(value) for key, value in env.items()})
    command = [sys.executable, "-m", "gunicorn", "app:app"]
    return Service(command, port, settings, ready_path="/is_prime/2")


@pytest.fixture(scope="session")
def upstream():
    """A real upstream API without delay, shared by the tests of one run."""
    service = start_upstream()
    yield service
    service.stop()


@pytest.fixture
def app(tmp_path, upstream):
    """An app on a fresh SQLite file and the real upstream, with no simulated latency."""
    database_url = f"sqlite:///{tmp_path / 'app.db'}"
    init_db(database_url)
    app = create_app({
        "TESTING": True,
        "DATABASE_URL": database_url,
        "API_URL": upstream.url + "/",
        "FILE_DELAY_MS": 0,
        "DB_DELAY_MS": 0,
        "WEB_THREADS": 4,
        "PROCESS_POOL_SIZE": 2,
    })
    yield app
    app.extensions["pools"].shutdown()


@pytest.fixture
def client(app):
    """A test client of `app`."""
    return app.test_client()


def postgres_available():
    """True when the PostgreSQL of POSTGRES_URL accepts connections."""
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_url():
    """POSTGRES_URL; skips without a server on a laptop, but fails under CI=true."""
    if not postgres_available():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but PostgreSQL at {POSTGRES_URL} is not reachable")
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}")
    return POSTGRES_URL
