"""The three sources of GET / against real parts: a file, SQLite and PostgreSQL, the upstream."""
import asyncio
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, event, func, select, text

from dev.harness import free_port
from services import simulate_latency, simulate_latency_async
from services.api import ApiSource
from services.db import SEED_ROWS, DbSource, init_db, quotes
from services.files import FileSource
from tests.helpers import far


def read_on(way, source, deadline):
    """source.read(deadline), blocking or as its coroutine on an event loop of its own."""
    if way == "blocking":
        return source.read(deadline)
    return asyncio.run(source.read_async(deadline))


async def _while_ticking(coroutine, tick_s=0.02):
    """Await `coroutine`; return its value and how often the loop ran a 20 ms timer meanwhile."""
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await asyncio.sleep(tick_s)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        return await coroutine, ticks
    finally:
        ticker.cancel()


@pytest.mark.parametrize("way", ["blocking", "on the loop"])
def test_file_source_reads_the_file(way, tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("  hello file \n", encoding="utf-8")
    assert read_on(way, FileSource(path), far()) == "hello file"


@pytest.mark.parametrize("way", ["blocking", "on the loop"])
def test_file_source_waits_its_delay(way, tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("x", encoding="utf-8")
    start = time.monotonic()
    read_on(way, FileSource(path, delay_s=0.1), far())
    assert time.monotonic() - start >= 0.1


def test_file_source_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        FileSource(tmp_path / "missing.txt").read(far())


@pytest.mark.parametrize("sleep", [simulate_latency,
                                   lambda *args: asyncio.run(simulate_latency_async(*args))])
def test_simulated_latency_stops_at_the_deadline(sleep):
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        sleep(5, start + 0.1)
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize("way", ["blocking", "on the loop"])
@pytest.mark.parametrize("url_kind", ["sqlite", "postgresql"])
def test_db_source_reads_the_seeded_row(url_kind, way, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'sub' / 'app.db'}" if url_kind == "sqlite" else (
        request.getfixturevalue("postgres_url"))
    init_db(url)
    init_db(url)  # a second start must not seed twice
    source = DbSource(url)
    assert read_on(way, source, far()) == SEED_ROWS[0]
    with source.engine().connect() as conn:
        assert conn.execute(select(func.count()).select_from(quotes)).scalar_one() == len(SEED_ROWS)
    source.engine().dispose()


def test_db_read_waits_no_longer_than_the_timeout_for_a_connection(tmp_path):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    init_db(url)
    source = DbSource(url, pool_size=1, timeout_s=0.2)
    with source.engine().connect():  # holds the pool's only connection; there is no overflow
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="no database connection"):
            source.read(far())
        assert 0.2 <= time.monotonic() - start < 1
    assert source.read(far()) == SEED_ROWS[0]
    source.engine().dispose()


def test_sqlite_locked_by_a_writer_is_read_off_the_loop_once_the_writer_is_done(tmp_path):
    path = tmp_path / "app.db"
    init_db(f"sqlite:///{path}")
    source = DbSource(f"sqlite:///{path}", timeout_s=2.0)
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN EXCLUSIVE")
    threading.Timer(0.3, writer.rollback).start()

    async def main():
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))
        return await _while_ticking(source.read_async(far()))

    start = time.monotonic()
    row, ticks = asyncio.run(main())
    assert row == SEED_ROWS[0] and time.monotonic() - start >= 0.25
    assert ticks >= 5  # the loop went on with its timers while the query waited for the lock
    writer.close()


def test_a_database_server_is_queried_off_the_loop(postgres_url):
    init_db(postgres_url)
    source = DbSource(postgres_url)
    threads = []
    event.listen(source.engine(), "before_cursor_execute",
                 lambda *args: threads.append(threading.current_thread().name))

    async def main():
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1, "pool"))
        return await source.read_async(far())

    try:
        assert asyncio.run(main()) == SEED_ROWS[0]
        assert threads and all(name.startswith("pool") for name in threads)
    finally:
        source.engine().dispose()


def test_db_read_blocked_past_the_statement_timeout_is_a_timeout(postgres_url):
    init_db(postgres_url)
    source = DbSource(postgres_url, timeout_s=0.3)
    blocker = create_engine(postgres_url)
    try:
        with blocker.begin() as conn:
            conn.execute(text("LOCK TABLE quotes IN ACCESS EXCLUSIVE MODE"))
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                source.read(far())
            assert time.monotonic() - start < 1.5
    finally:
        blocker.dispose()
        source.engine().dispose()


def test_db_source_unreachable_server_raises():
    source = DbSource("postgresql+psycopg2://postgres@127.0.0.1:1/test")
    with pytest.raises(Exception, match="(?i)connect"):
        source.read(far())


def test_api_source_returns_the_upstream_json(upstream):
    body = ApiSource(upstream.url + "/").read(far())
    assert body["source"] == "upstream" and body["delay_ms"] == 0


def test_api_source_reuses_its_connection(upstream):
    source = ApiSource(upstream.url + "/")
    first = source.read(far())["serial"]
    sock = source._connection.get().sock
    second = source.read(far())["serial"]
    assert second > first and source._connection.get().sock is sock


def test_api_source_threads_have_connections_of_their_own(upstream):
    source = ApiSource(upstream.url + "/")
    source.read(far())
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(lambda: (source.read(far()), source._connection.get().sock)[1]).result()
    assert other is not source._connection.get().sock


def test_api_source_sends_again_when_the_kept_connection_was_closed(upstream):
    source = ApiSource(upstream.url + "/")
    first = source.read(far())["serial"]
    source._connection.get().sock.shutdown(socket.SHUT_RDWR)  # as a server closing an idle connection
    assert source.read(far())["serial"] > first


def test_api_source_gives_up_at_the_deadline(upstream):
    source = ApiSource(upstream.url + "/?delay_ms=2000")
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        source.read(start + 0.2)
    assert time.monotonic() - start < 1


@pytest.mark.parametrize("warm", [False, True], ids=["new connection", "kept-alive"])
def test_api_source_keeps_the_deadline_against_an_upstream_that_drips(upstream, warm):
    source = ApiSource(upstream.url + "/?drip_ms=100")  # every recv gets a byte within 0.1 s
    if warm:
        source._target = "/"
        source.read(far())
        source._target = "/?drip_ms=100"
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        source.read(start + 0.5)
    assert time.monotonic() - start < 0.6


def test_api_source_refused_connection_raises():
    with pytest.raises(ConnectionError, match="refused"):
        ApiSource(f"http://127.0.0.1:{free_port()}/").read(far())


def test_api_source_http_error_raises(upstream):
    with pytest.raises(ConnectionError, match="404"):
        ApiSource(upstream.url + "/no-such-path").read(far())


def test_api_source_after_the_deadline_does_not_call(upstream):
    with pytest.raises(TimeoutError):
        ApiSource(upstream.url + "/").read(time.monotonic() - 1)
