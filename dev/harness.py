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
    """A real server process, stopped with its whole process group (by stop(), or at the end of
    a `with` block)."""

    def __init__(self, command, port, env=None, ready_path="/healthz", is_ready=None):
        """Start `command`; wait until GET ready_path answers, or, when ready_path is None,
        until is_ready() is true (by default: something accepts TCP connections on `port`)."""
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
        if ready_path is not None:
            self._wait_ready(self._answers_http, ready_path)
        else:
            self._wait_ready(is_ready or self._accepts_tcp, f"port {port}")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def _answers_http(self, path):
        requests.get(self.url + path, timeout=1)

    def _accepts_tcp(self, _what):
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()

    def _wait_ready(self, check, what):
        give_up = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < give_up:
            if self.proc.poll() is not None:
                break
            try:
                if check(what) is not False:
                    return
            except OSError:  # requests' ConnectionError is one too
                pass
            time.sleep(0.05)
        self.stop()  # also whatever it started before it failed
        raise RuntimeError(f"{self.proc.args} was not ready ({what}) within "
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


def proc_stat(pid):
    """The fields of /proc/<pid>/stat after the command name (state, ppid, …, utime, stime at
    11 and 12), or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pids):
    """User and system CPU seconds these processes have used."""
    ticks = sum(int(fields[11]) + int(fields[12])
                for fields in map(proc_stat, pids) if fields)
    return ticks / os.sysconf("SC_CLK_TCK")


def _live_pids():
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := proc_stat(entry)) and fields[0] != "Z":
            yield int(entry)


def _sid(pid):
    try:
        return os.getsid(pid)
    except OSError:
        return None


def parent_of(pid):
    """The parent pid of `pid`, or None if it is gone."""
    fields = proc_stat(pid)
    return int(fields[1]) if fields else None


def worker_pids(service):
    """gunicorn's worker processes: the direct children of `service`'s master."""
    master = service.proc.pid
    return [pid for pid in descendants(master) if parent_of(pid) == master]


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


def start_gunicorn(api_url, data_dir, port=None, cpus=None, python=sys.executable, **env):
    """Start real gunicorn (gunicorn.conf.py) on `port` (a free one by default), reading its API
    at `api_url` and its database in `data_dir`, on the CPUs `cpus` (all by default), with the
    interpreter `python` (of another venv, say); `env` overrides any other setting."""
    port = port or free_port()
    command = [str(python), "-m", "gunicorn"]
    if cpus:  # taskset execs gunicorn: the pid is gunicorn's, and every process below inherits
        command = ["taskset", "--cpu-list", ",".join(map(str, sorted(cpus))), *command]
    settings = {
        "PORT": str(port),
        "API_URL": api_url,
        "DATABASE_URL": sqlite_url(data_dir),
    }
    settings.update({key: str(value) for key, value in env.items()})
    return Service(command, port, settings)


def sqlite_url(data_dir):
    """The URL of the SQLite database that start_gunicorn gives a service in `data_dir`."""
    return f"sqlite:///{Path(data_dir) / 'app.db'}"


def start_dask_scheduler(port=None):
    """A Dask scheduler (the dask CLI) on `port` (else a free one) of 127.0.0.1, without its
    dashboard."""
    port = port or free_port()
    return Service([_dask_cli(), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                    "--no-dashboard"], port, _PLAIN_ENV, ready_path=None)


def start_dask_worker(scheduler, name, preload=None):
    """A Dask worker of one thread for `scheduler`, ready once the scheduler knows it. Without a
    nanny, so that killing it loses it (a nanny would restart it). A plain worker, as on
    another host: this checkout is not importable there (tasks bring their code); `preload` is
    a script it runs first."""
    address = f"tcp://127.0.0.1:{scheduler.port}"

    def known(_what):
        from distributed import Client

        with Client(address, timeout=2, set_as_default=False) as client:
            return any(w["name"] == name for w in client.scheduler_info()["workers"].values())

    command = [_dask_cli(), "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
               "--no-nanny", "--no-dashboard", "--name", name]
    if preload:
        command += ["--preload", str(preload)]
    return Service(command, None, _PLAIN_ENV, ready_path=None, is_ready=known)


# Nothing of this checkout on the path of a scheduler or a worker.
_PLAIN_ENV = {"PYTHONPATH": ""}


def _dask_cli():
    return str(Path(sys.executable).with_name("dask"))


@contextmanager
def deployment(data_dir, api_delay_ms=Config.API_DELAY_MS, **env):
    """The default deployment with the seed's latency profile, as `make run` starts it:
    the upstream (answering after `api_delay_ms`) and gunicorn; yields (gunicorn, upstream)
    and stops both."""
    with start_upstream(delay_ms=api_delay_ms) as upstream, \
            start_gunicorn(upstream.url + "/", data_dir, **env) as service:
        yield service, upstream
