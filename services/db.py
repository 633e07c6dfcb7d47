"""The database source: one SQL query through SQLAlchemy Core, on SQLite or any SQLAlchemy URL."""
import os
import threading
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, func, insert, select
from sqlalchemy.engine import make_url

from services import simulate_latency

metadata = MetaData()
quotes = Table(
    "quotes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("author", String(80), nullable=False),
    Column("text", String(400), nullable=False),
)
SEED_ROWS = [
    {"id": 1, "author": "Rob Pike", "text": "Concurrency is not parallelism."},
    {"id": 2, "author": "Donald Knuth", "text": "Premature optimization is the root of all evil."},
    {"id": 3, "author": "Edsger Dijkstra", "text": "Simplicity is prerequisite for reliability."},
]


def make_engine(url, pool_size=5):
    """Create an engine whose connection pool serves `pool_size` threads at once."""
    url = make_url(url)
    if url.get_backend_name() == "sqlite" and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def init_db(url):
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

    def __init__(self, url, delay_s=0.0, pool_size=5):
        self.url = url
        self.delay_s = delay_s
        self.pool_size = pool_size
        self._engine = None
        self._pid = None
        self._lock = threading.Lock()

    def engine(self):
        """Return this process's engine; a forked child builds its own, never sharing sockets."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._engine = make_engine(self.url, self.pool_size)
                    self._pid = os.getpid()
        return self._engine

    def read(self, deadline):
        """Return the first quote as a dict."""
        simulate_latency(self.delay_s, deadline)
        query = select(quotes).order_by(quotes.c.id).limit(1)
        with self.engine().connect() as conn:
            return dict(conn.execute(query).mappings().one())
