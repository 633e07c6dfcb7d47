"""The other rewrite users are told to make: the service's own Flask code on gunicorn's gevent
worker, as `make bench` runs it beside the service.

gunicorn's gevent worker monkey-patches the process before the app is loaded, so the same views
run on greenlets: the thread pool's threads, `time.sleep`, the sockets of the API read and the
waits of `concurrent.futures` all become cooperative, and a worker holds up to
`--worker-connections` requests in flight. Set up as gevent's users do: one worker a core,
worker_connections at its default (1000), and a read pool as large as that (its "threads" are
greenlets). The asyncio read loop is off (a gevent app waits on gevent's hub, not on asyncio).

    gunicorn -k gevent -w 2 --worker-connections 1000 'app:create_app()'
"""
import sys

from config import Config
from dev.harness import Service, free_port

WORKER_CONNECTIONS = 1000


def running(env, workers=Config.WEB_WORKERS):
    """Run the peer under gunicorn's gevent worker on a free port of 127.0.0.1 with `env` over
    the environment (the same settings the service gets): its Service, stopped by a `with`."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-c", "/dev/null", "-k", "gevent",
               "-w", str(workers), "--worker-connections", str(WORKER_CONNECTIONS),
               "--backlog", str(Config.BACKLOG), "--keep-alive", str(Config.KEEPALIVE),
               "--log-level", "warning", "-b", f"127.0.0.1:{port}", "app:create_app()"]
    settings = {**{k: str(v) for k, v in env.items()}, "READ_LOOP": "0",
                "WEB_THREADS": str(WORKER_CONNECTIONS)}
    return Service(command, port, settings)
