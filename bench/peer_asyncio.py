"""The asyncio rewrite users are told to make, as `make bench` runs it beside the service.

FastAPI on uvicorn with uvloop and httptools, two workers: the stack an asyncio rewrite of a
Flask service is most often told to use, run the fastest way uvicorn offers. Its `GET /` does
what the service's does, with the same `Config`: the same file, the same SQLite database through
SQLAlchemy's asyncio engine (aiosqlite), the same upstream through aiohttp, the same simulated
latencies (as `asyncio.sleep`, where the service sleeps a thread), all three at once under the
same deadline (504 past it), and the same JSON body, `Server-Timing` and `X-Request-ID`. It keeps
no metrics and logs nothing per request, which makes it the faster peer, not the slower.

Its file and SQLite reads run on the event loop itself, as the service's own loop runs them (a
small file from the page cache and a one-row query take microseconds): through anyio's thread
limiter and aiosqlite's connection threads, each read paid a thread hop, and the peer was
weaker than a plain FastAPI app (issue 24; figures: docs/performance.md).
Another SQL server goes through SQLAlchemy's asyncio engine.

    python -m uvicorn bench.peer_asyncio:app --workers 2 --loop uvloop --http httptools
"""
import asyncio
import sys
import time
import uuid
from contextlib import asynccontextmanager

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from config import Config
from dev.harness import Service, free_port
from services.db import FIRST_QUOTE

# Connections to the upstream and to the database for one worker: enough that neither queues
# a read at 2000 clients (aiohttp's default of 100 would cap the API read at 100 / 0.3 s).
API_CONNECTIONS = 0  # aiohttp: no limit
DB_CONNECTIONS = 20  # a server's; the query itself takes well under a millisecond


@asynccontextmanager
async def _lifespan(app):
    url = make_url(Config.DATABASE_URL)
    app.state.sqlite = app.state.engine = None
    if url.get_backend_name() == "sqlite":  # one connection: only the loop's thread uses it
        app.state.sqlite = create_engine(url, pool_size=1, max_overflow=0)
    else:
        app.state.engine = create_async_engine(url, pool_size=DB_CONNECTIONS, max_overflow=0,
                                               pool_timeout=Config.REQUEST_TIMEOUT_S)
    app.state.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=API_CONNECTIONS))
    yield
    await app.state.http.close()
    if app.state.engine is not None:
        await app.state.engine.dispose()


app = FastAPI(lifespan=_lifespan, openapi_url=None, docs_url=None, redoc_url=None)


async def _read_file():
    await asyncio.sleep(Config.FILE_DELAY_MS / 1000)
    with open(Config.FILE_PATH, encoding="utf-8") as file:
        return file.read().strip()


async def _read_db():
    await asyncio.sleep(Config.DB_DELAY_MS / 1000)
    if app.state.sqlite is not None:
        with app.state.sqlite.connect() as conn:
            return dict(conn.execute(FIRST_QUOTE).mappings().one())
    async with app.state.engine.connect() as conn:
        return dict((await conn.execute(FIRST_QUOTE)).mappings().one())


async def _read_api():
    async with app.state.http.get(Config.API_URL, headers={"Accept": "application/json"}) as r:
        r.raise_for_status()
        return await r.json()


async def _timed(read, timings, name):
    start = time.monotonic()
    try:
        return await read()
    finally:
        timings[name] = round((time.monotonic() - start) * 1000, 1)


@app.get("/")
async def index(request: Request):
    """The three reads at once, joined before answering, within REQUEST_TIMEOUT_S."""
    arrived = time.monotonic()
    reads = {"file": _read_file, "db": _read_db, "api": _read_api}
    timings, errors = {}, {}
    tasks = {name: asyncio.ensure_future(_timed(read, timings, name))
             for name, read in reads.items()}
    done, pending = await asyncio.wait(tasks.values(), timeout=Config.REQUEST_TIMEOUT_S)
    for task in pending:
        task.cancel()
    body = {}
    for name, task in tasks.items():
        if task in done and task.exception() is None:
            body[f"result_{name}"] = task.result()
        else:
            body[f"result_{name}"] = None
            errors[name] = "TimeoutError" if task in pending else repr(task.exception())
    timings["total"] = round((time.monotonic() - arrived) * 1000, 1)
    body.update(mode="concurrent", timings_ms=timings)
    status = 200
    if errors:
        body["errors"] = errors
        status = 504 if pending else 502
    return JSONResponse(body, status, headers={
        "Server-Timing": ", ".join(f"{k};dur={v}" for k, v in timings.items()),
        "X-Request-ID": request.headers.get("x-request-id") or uuid.uuid4().hex})


@app.get("/healthz")
async def healthz():
    """Liveness."""
    return {"status": "ok"}


def running(env, workers=Config.WEB_WORKERS):
    """Run the peer under uvicorn on a free port of 127.0.0.1 with `env` over the environment
    (the same settings the service gets): its Service, stopped by a `with`."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", f"{__name__}:app", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers), "--loop", "uvloop", "--http",
               "httptools", "--no-access-log", "--log-level", "warning", "--backlog",
               str(Config.BACKLOG), "--timeout-keep-alive", str(Config.KEEPALIVE)]
    return Service(command, port, {k: str(v) for k, v in env.items()})
