"""The parts of one GET / timed one at a time, in one thread, with nothing else running:
`python -m bench.parts API_URL DATA_DIR` prints {part: µs of CPU per call} as JSON.

make profile (bench/profile.py) runs this in a process of its own, with PROMETHEUS_MULTIPROC_DIR
set as gunicorn sets it, so that the metrics cost what they cost in a worker. CPU is
time.process_time(), so that what the pool threads do for a call is counted with it. Every source
runs with no simulated latency: a sleep costs a call, not its length.
"""
import json
import sys
import time

CALLS = 400
REQUEST = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: hey/0.0.1\r\n"
           b"Content-Type: text/html\r\nAccept-Encoding: gzip\r\n\r\n")


def cpu_us(call, calls=CALLS):
    """Mean CPU µs of call() over `calls` calls, after ten to warm up."""
    for _ in range(10):
        call()
    start = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - start) / calls * 1e6


def measure(api_url, data_dir):
    """{part: CPU µs per call}."""
    from gunicorn.config import Config as GunicornConfig
    from gunicorn.http import get_parser
    from werkzeug.test import EnvironBuilder

    import telemetry
    from app import create_app
    from config import Config
    from dev.harness import sqlite_url
    from pools import get_pools
    from runtime.wire import Limits, RequestReader
    from services import get_sources
    from services.db import init_db

    init_db(sqlite_url(data_dir))
    app = create_app({"API_URL": api_url, "DATABASE_URL": sqlite_url(data_dir),
                      "FILE_DELAY_MS": 0, "DB_DELAY_MS": 0, "LOG_LEVEL": "error"})
    sources = get_sources(app)
    pools = get_pools(app)
    limits = Limits(1, 1, 1, 1, 1, 1, Config.READ_MAX_HEAD_BYTES, Config.MAX_BODY_BYTES)
    gunicorn_cfg = GunicornConfig()
    environ = EnvironBuilder("/", headers={"Accept": "*/*"}).get_environ()

    def parse():
        reader = RequestReader(limits, time.monotonic())
        reader.feed(REQUEST, time.monotonic())
        next(get_parser(gunicorn_cfg, [reader.take().canonical()], ("127.0.0.1", 1)))

    def whole():
        body = app.wsgi_app(dict(environ), lambda status, headers, exc_info=None: None)
        b"".join(body)
        getattr(body, "close", lambda: None)()

    def far():
        return time.monotonic() + 10

    def noop(_deadline):
        return None

    async def noop_async(_deadline):
        return None

    histogram = telemetry.REQUEST_SECONDS.labels("/", "GET", 200)
    parts = {
        "HTTP parsing: runtime/wire.py and gunicorn's parser": cpu_us(parse),
        "the app's GET / through WSGI, sources included": cpu_us(whole),
        "API read: http.client GET from the upstream": cpu_us(lambda: sources["api"].read(far())),
        "SQL read: SQLAlchemy, SQLite": cpu_us(lambda: sources["db"].read(far())),
        "file read": cpu_us(lambda: sources["file"].read(far())),
        "pool hand-offs: gather of 3 calls, 2 on the thread pool": cpu_us(
            lambda: pools.gather({"file": noop, "db": noop, "api": noop}, far(),
                                 run_here="api")),
        "loop hand-offs: gather of 3 calls, 2 on the event loop": cpu_us(
            lambda: pools.gather({"file": noop_async, "db": noop_async, "api": noop}, far(),
                                 run_here="api")),
        "metrics: one histogram observation": cpu_us(lambda: histogram.observe(0.3)),
    }
    pools.shutdown()
    return parts


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2])))
