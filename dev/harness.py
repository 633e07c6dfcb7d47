"""Start and stop the real processes (the stand-in upstream, gunicorn) on free ports: for
`make run`, the tests, `make bench` and `make load`.

Every process is started in a session of its own, so stopping it also stops whatever it started.
"""
import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from config import Config

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 40.0
_running = set()


def ensure_installed(command, *packages):
    """Return the path of `command`, installing Debian's `packages` first when it is missing
    (as root, with apt-get); None if it is still missing."""
    if not shutil.which(command) and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True,
                       stdout=subprocess.DEVNULL)
    return shutil.which(command)


def free_port():
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """A real server process, stopped with its whole process group."""

    def __init__(self, command, port, env=None, ready_path="/healthz"):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._owner = os.getpid()
        # A file, not a pipe: a pipe nobody reads fills up and blocks the server's logging.
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **(env or {})}, start_new_session=True,
            stdout=self.log, stderr=subprocess.STDOUT, text=True,
        )
        _running.add(self)
        self._wait_ready(ready_path)

    def _wait_ready(self, path):
        give_up = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < give_up:
            if self.proc.poll() is not None:
                break
            try:
                requests.get(self.url + path, timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        self.stop()  # also whatever it started before it failed
        raise RuntimeError(f"{self.proc.args} did not answer on {self.url + path} within "
                           f"{READY_TIMEOUT_S} s: {self.output()[-2000:]}")

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
        _running.discard(self)
        return self.proc.returncode


@atexit.register
def _stop_all():
    # A run that dies between start and stop (an error, Ctrl-C) still leaves nothing behind.
    # Only in the process that started them: gunicorn's workers are forked from a master that
    # started the upstream (make run), and a worker that exits must not take it along.
    for service in list(_running):
        if service._owner == os.getpid():
            service.stop(signal.SIGKILL)


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


def start_upstream(delay_ms=0, port=None, exit_with_parent=False):
    """Start the stand-in upstream API on `port` (a free one by default)."""
    port = port or free_port()
    command = [sys.executable, "-m", "dev.upstream", "--port", str(port), "--delay-ms", str(delay_ms)]
    return Service(command + ["--exit-with-parent"] * exit_with_parent, port)


def start_gunicorn(api_url, data_dir, **env):
    """Start real gunicorn (gunicorn.conf.py) on a free port, reading its API at `api_url` and
    its database in `data_dir`; `env` overrides any other setting."""
    port = free_port()
    settings = {
        "PORT": str(port),
        "API_URL": api_url,
        "DATABASE_URL": f"sqlite:///{Path(data_dir) / 'app.db'}",
    }
    settings.update({key: str(value) for key, value in env.items()})
    return Service([sys.executable, "-m", "gunicorn"], port, settings)


@contextmanager
def deployment(data_dir, **env):
    """The default deployment with the seed's latency profile, as `make run` starts it:
    the upstream (API_DELAY_MS) and gunicorn; yields (gunicorn, upstream) and stops both."""
    upstream = start_upstream(delay_ms=Config.API_DELAY_MS)
    try:
        service = start_gunicorn(upstream.url + "/", data_dir, **env)
        try:
            yield service, upstream
        finally:
            service.stop()
    finally:
        upstream.stop()
