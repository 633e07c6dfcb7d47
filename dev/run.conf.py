"""make run's gunicorn settings: the production ones (gunicorn.conf.py, which imports nothing
from dev/), and the stand-in upstream API beside them, started by the master before the workers
and stopped with it."""
import runpy
from pathlib import Path

from config import Config
from dev.harness import start_upstream

_production = runpy.run_path(str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py"))
globals().update({name: value for name, value in _production.items()
                  if not name.startswith("__")})
_upstream = None


def on_starting(server):
    """gunicorn.conf.py's on_starting, then the upstream API on UPSTREAM_PORT."""
    global _upstream
    _production["on_starting"](server)
    _upstream = start_upstream(Config.API_DELAY_MS, Config.UPSTREAM_PORT, exit_with_parent=True)
    server.log.info("upstream API listening on %s (pid %s)", _upstream.url, _upstream.proc.pid)


def on_exit(server):
    """Stop the upstream API, then gunicorn.conf.py's on_exit."""
    if _upstream is not None:
        _upstream.stop()
    _production["on_exit"](server)
