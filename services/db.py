"""The database source: one SQL query through SQLAlchemy Core, on SQLite or any SQLAlchemy URL."""
import asyncio
import math
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, func, insert, select
from sqlalchemy.engine import Engine, make_url

from runtime.clock import Monotonic
from runtime.per_process import PerProcess
from services import remaining, simulate_latency, simulate_latency_async

metadata = MetaData()
quotes = Table(
    "quotes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("author", String(80), nullable=False),
    Column("text", String(400), nullable=False),
)
FIRST_QUOTE = select(quotes).order_by(quotes.c.id).limit(1)
DEFAULT_TIMEOUT_S = 2.0
SEED_ROWS = [
    {"id": 1, "author": "Rob Pike", "text": "Concurrency is not parallelism."},
    {"id": 2, "author": "Donald Knuth", "text": "Premature optimization is the root of all evil."},
    {"id": 3, "author": "Edsger Dijkstra", "text": "Simplicity is prerequisite for reliability."},
]


def make_engine(url: str, pool_size: int = 5, timeout_s: float = DEFAULT_TIMEOUT_S) -> Engine:
    """Create an engine for `pool_size` threads at once, whose waits all end within `timeout_s`.

    Connections open as threads first need them and then stay open: no overflow connections,
    which would be opened and closed again for every read beyond `pool_size` at once.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    connect_args: dict[str, Any] = {}
    # A ping before each checkout finds server connections that died; a file has none to find.
    pre_ping = backend != "sqlite"
    if backend == "sqlite":
        connect_args["timeout"] = timeout_s  # how long to wait for a lock held by a writer
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    elif backend == "postgresql" and parsed.get_driver_name() == "psycopg2":
        connect_args["connect_timeout"] = max(1, math.ceil(timeout_s))
        connect_args["options"] = f"-c statement_timeout={int(timeout_s * 1000)}"
    return create_engine(parsed, pool_size=pool_size, max_overflow=0, pool_timeout=timeout_s,
                         pool_pre_ping=pre_ping, connect_args=connect_args)


def init_db(url: str) -> None:
    """Create the quotes table and seed it if it is empty; safe to call on every start."""
    engine = make_engine(url, pool_size=1)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            if conn.execute(select(func.count()).select_from(quotes)).scalar_one() == 0:
                conn.execute(insert(quotes), SEED_ROWS)
    finally:
        engine.dispose()


class DbSource:
    """Runs one query per read, after the configured simulated latency."""

    name = "db"

    def __init__(self, url: str, delay_s: float = 0.0, pool_size: int = 5,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url
        self.delay_s = delay_s
        self.timeout_s = timeout_s
        self._engine = PerProcess(lambda: make_engine(url, pool_size, timeout_s))
        # SQLite in a file answers without a wait unless a writer holds its lock, so the event
        # loop may run the query, through an engine that never waits for the lock (a timeout of
        # 0). An in-memory database is private to each connection: it gets none.
        self._engine_nowait = None
        parts = make_url(url)
        if parts.get_backend_name() == "sqlite" and parts.database not in (None, "", ":memory:"):
            self._engine_nowait = PerProcess(lambda: make_engine(url, 1, 0.0))

    def engine(self) -> Engine:
        """Return this process's engine; a forked child builds its own, never sharing sockets."""
        return self._engine.get()

    def read(self, deadline: Monotonic) -> dict[str, Any]:
        """Return the first quote as a dict."""
        simulate_latency(self.delay_s, deadline)
        return self._query(self.engine())

    async def read_async(self, deadline: Monotonic) -> dict[str, Any]:
        """read() on the event loop. The query runs on the loop when it cannot wait (SQLite, its
        lock free); otherwise on the loop's executor, the thread pool, so that no wait for a
        server or a lock holds up the other requests' reads."""
        await simulate_latency_async(self.delay_s, deadline)
        if self._engine_nowait is not None:
            try:
                return self._query(self._engine_nowait.get())
            except TimeoutError:  # "database is locked": a writer holds it
                pass
        return await asyncio.get_running_loop().run_in_executor(None, self._query, self.engine())

    def _query(self, engine: Engine) -> dict[str, Any]:
        try:
            with engine.connect() as conn:
                return dict(conn.execute(FIRST_QUOTE).mappings().one())
        except sqlalchemy.exc.TimeoutError as exc:  # no pooled connection came free in time
            raise TimeoutError(f"no database connection within {self.timeout_s} s") from exc
        except sqlalchemy.exc.OperationalError as exc:
            if "statement timeout" in str(exc):
                raise TimeoutError("the query outlasted the statement timeout") from exc
            if "database is locked" in str(exc):
                raise TimeoutError("the database stayed locked by a writer") from exc
            raise ConnectionError("the database connection or query failed") from exc

    def check(self, deadline: Monotonic) -> None:
        """The quotes table answers a read (a database that opens but has no table is not
        ready: run `flask --app app init-db`)."""
        remaining(deadline)
        self._query(self.engine())
