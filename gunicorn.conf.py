"""gunicorn settings: `gunicorn app:app` reads this file. Every setting has an env override."""
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from config import Config, env_bool, env_int, env_str
from worker import least_used_cpu, pin_process

# Where to listen; make run and the tests set PORT.
bind = env_str("BIND", f"{Config.HOST}:{Config.PORT}")
# gthread (a few processes of many threads: a request mostly waits on I/O, and threads are far
# cheaper than processes), stamping when each request was queued so overload is shed (worker.py).
worker_class = env_str("WORKER_CLASS", "worker.QueueTimedThreadWorker")
# One worker per core (Config.WEB_WORKERS); each has its own thread and process pools.
workers = Config.WEB_WORKERS
# Requests one worker serves at once; pools.py sizes the thread pool from the same number.
threads = Config.WEB_THREADS
# Open connections per worker, busy or idle keep-alive. Far above `threads` on purpose: a
# connection gthread has accepted is queued with a time stamp and shed with a quick 503 once it
# has waited too long, while one left in the kernel's backlog waits unseen, without bound.
worker_connections = env_int("WORKER_CONNECTIONS", 1000)
# Accept queue of the listening socket, so a burst of clients is not refused at connect.
backlog = env_int("BACKLOG", 2048)
# A worker silent this long is killed and replaced (a stuck worker, not a slow request).
timeout = env_int("WORKER_TIMEOUT", 30)
# On SIGTERM, workers get this long to finish the requests they hold.
graceful_timeout = env_int("GRACEFUL_TIMEOUT", 30)
# Seconds an idle keep-alive connection stays open.
keepalive = env_int("KEEPALIVE", 5)
# Recycle a worker after this many requests (0: never), staggered by the jitter.
max_requests = env_int("MAX_REQUESTS", 0)
max_requests_jitter = env_int("MAX_REQUESTS_JITTER", 0)
# Longest request line: four 900-digit numbers in one GET /is_prime need about 3.7 kB.
limit_request_line = env_int("LIMIT_REQUEST_LINE", 8190)
# Import the app in the master before forking (pools are created per worker either way).
preload_app = env_bool("PRELOAD", False)
# Access log destination ("-" for stdout); off by default for speed. Lines carry the request id.
accesslog = env_str("ACCESS_LOG", None)
access_log_format = env_str("ACCESS_LOG_FORMAT",
                            '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s')

# gunicorn's control socket ($HOME/.gunicorn/gunicorn.ctl) is one path per user, so two
# instances (tests, benchmarks) would fight over it: off unless CONTROL_SOCKET=1.
control_socket_disable = not env_bool("CONTROL_SOCKET", False)
# Error log destination and level.
errorlog = env_str("ERROR_LOG", "-")
loglevel = Config.LOG_LEVEL

UPSTREAM_READY_S = 10.0
_upstream = None

# prometheus_client's multiprocess mode: every worker writes its samples to files in one
# directory, which must be set before any process imports prometheus_client and be empty at start.
_OWN_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="flask-pools-metrics-")


def on_starting(server):
    """Empty the metrics directory, seed the database once, and start the upstream if asked to."""
    from services.db import init_db

    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(metrics_dir, exist_ok=True)
    for name in os.listdir(metrics_dir):
        if name.endswith(".db"):
            os.remove(os.path.join(metrics_dir, name))

    try:
        init_db(Config.DATABASE_URL)
    except Exception as exc:  # the database may come up later: serve, and let /readyz say so
        server.log.warning("could not create or seed the database: %s", exc)
    if Config.UPSTREAM_START:
        _start_upstream(server)


def on_exit(server):
    """Stop the upstream API that on_starting started, and remove our metrics directory."""
    if _upstream is not None and _upstream.poll() is None:
        _upstream.terminate()
        _upstream.wait(timeout=5)
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def pre_fork(server, worker):
    """In the master: choose the CPU the new worker will be pinned to (PIN_WORKERS, Linux)."""
    if Config.PIN_WORKERS and hasattr(os, "sched_setaffinity"):
        worker.cpu = least_used_cpu(server.WORKERS.values(), os.sched_getaffinity(0))


def post_worker_init(worker):
    """Start this worker's pools, pin it to its CPU, and exempt what exists now from the GC."""
    worker.wsgi.extensions["pools"].warm()
    # After warm(): the forkserver is started unpinned, so pool processes may use every CPU.
    if getattr(worker, "cpu", None) is not None:
        pin_process(worker.cpu)
    if Config.GC_FREEZE:
        # The ~60,000 objects of the loaded app never die, yet every full collection walks them
        # all: a 40 ms pause of every thread of the worker here, a p99 of its own. Frozen, they
        # are skipped (gc.freeze, Python 3.7+).
        gc.freeze()


def worker_exit(server, worker):
    """Shut down the pools of the exiting worker, so no pool process outlives it."""
    import pools

    pools.shutdown_all()


def child_exit(server, worker):
    """In the master: drop the dead worker's live gauges from /metrics."""
    import telemetry

    telemetry.mark_process_dead(worker.pid)


def _start_upstream(server):
    global _upstream
    command = [sys.executable, "upstream.py", "--port", str(Config.UPSTREAM_PORT),
               "--delay-ms", str(Config.API_DELAY_MS), "--exit-with-parent"]
    _upstream = subprocess.Popen(command, cwd=os.path.dirname(os.path.abspath(__file__)))
    url = f"http://127.0.0.1:{Config.UPSTREAM_PORT}/healthz"
    give_up = time.monotonic() + UPSTREAM_READY_S
    while time.monotonic() < give_up:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            server.log.info("upstream API listening on %s (pid %s)", url, _upstream.pid)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the upstream API did not answer on {url}")
