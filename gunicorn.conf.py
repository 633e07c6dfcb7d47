"""gunicorn's settings and hooks: `gunicorn` reads this file. Every value comes from config.Config,
so each has an environment override of the name given in its comment.

The processes it starts, and the code each runs:

    gunicorn master                     gunicorn.conf.py: settings and hooks
    |-- upstream API (make run only)    dev/upstream.py, started by dev/run.conf.py
    `-- worker x WEB_WORKERS            runtime/worker.py, app.py, pools.py, services/
        |-- request threads x WEB_THREADS   a request each; the API read runs here
        |-- read-loop thread                the file and SQLite reads, their waits
        |-- read threads (thread pool)      blocking reads (a database server)
        |-- resource tracker                multiprocessing's, for the process pool
        `-- forkserver                      started by post_worker_init, before pinning
            `-- pool child x PROCESS_POOL_SIZE   runtime/pool_child.py, services/primes.py
"""
import gc
import glob
import os
import shutil
import sys
import tempfile
from typing import Any

from gunicorn import glogging
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

import pools
import telemetry
from config import Config
from runtime import dask_executor, host_cpu, pinning, pool_child
from services.db import init_db

# What to serve: the app factory, so importing app.py builds nothing (flaskr's create_app).
wsgi_app = "app:create_app()"
# BIND, or HOST:PORT: where to listen; make run and the tests set PORT.
bind = Config.BIND
# WORKER_CLASS: gthread (a few processes of many threads: a request mostly waits on I/O, and
# threads are far cheaper than processes), reading each request whole in its poller thread
# before a thread gets it, stamping when each request was queued so that overload is shed, and
# leaving connections to a less busy worker (runtime/worker.py maps each job to its module).
# With TLS, a worker runs as its parent, StampedThreadWorker, whose bytes gthread reads.
worker_class = Config.WORKER_CLASS
# WEB_WORKERS: one worker per core; each has its own thread and process pools.
workers = Config.WEB_WORKERS
# WEB_THREADS: requests one worker serves at once; app.py sizes the thread pool from it.
threads = Config.WEB_THREADS
# WORKER_CONNECTIONS: open connections per worker, busy or idle keep-alive. Far above `threads`
# on purpose: a connection gthread has accepted is queued with a time stamp and shed with a quick
# 503 once it has waited too long, while one left in the kernel's backlog waits unseen. When all
# are taken, a new connection closes the one that has waited longest for its request
# (runtime/channel.py), so idle or slow clients cannot keep new ones out.
worker_connections = Config.WORKER_CONNECTIONS
# BACKLOG: accept queue of the listening socket, so a burst of clients is not refused at connect.
backlog = Config.BACKLOG
# WORKER_TIMEOUT: a worker silent this long is killed and replaced (a stuck worker, not a slow
# request).
timeout = Config.WORKER_TIMEOUT
# GRACEFUL_TIMEOUT: on SIGTERM, workers get this long to finish the requests they hold.
graceful_timeout = Config.GRACEFUL_TIMEOUT
# KEEPALIVE: seconds an idle keep-alive connection stays open.
keepalive = Config.KEEPALIVE
# MAX_REQUESTS, MAX_REQUESTS_JITTER: recycle a worker after this many requests (0: never),
# staggered by the jitter.
max_requests = Config.MAX_REQUESTS
max_requests_jitter = Config.MAX_REQUESTS_JITTER
# LIMIT_REQUEST_LINE: longest request line; four 900-digit numbers in one GET /is_prime need
# about 3.7 kB.
limit_request_line = Config.LIMIT_REQUEST_LINE
# PRELOAD: import the app in the master before forking (pools are created per worker either way).
preload_app = Config.PRELOAD
# ACCESS_LOG ("-" for stdout; off by default, for speed) and ACCESS_LOG_FORMAT, whose lines
# carry the request id.
accesslog = Config.ACCESS_LOG
access_log_format = Config.ACCESS_LOG_FORMAT
# CONTROL_SOCKET: gunicorn's control socket ($HOME/.gunicorn/gunicorn.ctl) is one path per user,
# so two instances (tests, benchmarks) would fight over it: off unless asked for.
control_socket_disable = not Config.CONTROL_SOCKET
# ERROR_LOG and LOG_LEVEL: gunicorn's own log, where the service's log lines go too.
errorlog = Config.ERROR_LOG
loglevel = Config.LOG_LEVEL


class JsonLogger(glogging.Logger):
    """gunicorn's logger, its error and access lines written by telemetry.JsonFormatter."""

    def setup(self, cfg: Any) -> None:
        """Set up as gunicorn does, then give every handler the JSON formatter."""
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(telemetry.JsonFormatter())


# LOG_FORMAT: "json" for one JSON object a line, gunicorn's lines and the app's alike.
logger_class = JsonLogger if Config.LOG_FORMAT == "json" else "gunicorn.glogging.Logger"

# PROMETHEUS_MULTIPROC_DIR: prometheus_client's multiprocess mode, in which every worker writes
# its samples to files in one directory (telemetry.py). prometheus_client reads the variable when
# it is first imported, so it goes into the environment through raw_env, which gunicorn applies
# before a --preload import of the app; on_starting creates or empties the directory.
_METRICS_DIR_PREFIX = os.path.join(tempfile.gettempdir(), "flask-pools-metrics-")
_metrics_dir = Config.PROMETHEUS_MULTIPROC_DIR or f"{_METRICS_DIR_PREFIX}{os.getpid()}"
raw_env = [f"PROMETHEUS_MULTIPROC_DIR={_metrics_dir}"]


def on_starting(server: Arbiter) -> None:
    """Check CPU_EXECUTOR, empty the metrics directory (and remove dead masters' ones), and
    seed the database once."""
    dask_executor.parse(Config.CPU_EXECUTOR)  # a bad setting stops gunicorn here, saying why
    host_cpu.init()  # before any worker is forked: they all share it

    _remove_dead_masters_metrics()
    os.makedirs(_metrics_dir, exist_ok=True)
    for name in os.listdir(_metrics_dir):
        if name.endswith(".db"):
            os.remove(os.path.join(_metrics_dir, name))
    try:
        init_db(Config.DATABASE_URL)
    except Exception as exc:  # noqa: BLE001 - the database may come up later: /readyz says so
        server.log.warning("could not create or seed the database: %s", exc)


def _remove_dead_masters_metrics() -> None:
    # on_exit removes a master's own directory, but a master killed by SIGKILL (or the OOM
    # killer) never runs it: its directory would stay in the temp dir for good.
    for path in glob.glob(f"{_METRICS_DIR_PREFIX}*"):
        pid = path[len(_METRICS_DIR_PREFIX):]
        if pid.isdigit() and not pool_child.alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def on_exit(server: Arbiter) -> None:
    """Remove our own metrics directory."""
    if not Config.PROMETHEUS_MULTIPROC_DIR:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def pre_fork(server: Arbiter, worker: Worker) -> None:
    """In the master: choose the CPU the new worker will be pinned to (PIN_WORKERS, Linux)."""
    if Config.PIN_WORKERS and pinning.supported():
        worker.cpu = pinning.least_used_cpu(server.WORKERS.values(), os.sched_getaffinity(0))


def post_worker_init(worker: Worker) -> None:
    """Start this worker's pools, pin it to its CPU, set its GIL switch interval
    (GIL_SWITCH_MS), and exempt what exists now from the GC."""
    pools.get_pools(worker.wsgi).warm()
    # After warm(): the forkserver is started unpinned, so pool processes may use every CPU.
    if getattr(worker, "cpu", None) is not None:
        pinning.pin_process(worker.cpu)
    sys.setswitchinterval(Config.GIL_SWITCH_MS / 1000)
    if Config.GC_FREEZE:
        # The objects of the loaded app never die, yet every full collection walks them all,
        # pausing every thread of the worker: a p99 of its own (docs/performance.md). Frozen,
        # they are skipped (gc.freeze, Python 3.7+).
        gc.freeze()


def worker_exit(server: Arbiter, worker: Worker) -> None:
    """Shut down the pools of the exiting worker, so no pool process outlives it."""
    pools.shutdown_all()


def child_exit(server: Arbiter, worker: Worker) -> None:
    """In the master: drop the dead worker's live gauges, fold its counts into the archive,
    free its slot of the host's CPU ledger."""
    telemetry.mark_process_dead(worker.pid)
    host_cpu.release(worker.pid)
