"""The three sources of GET / against real parts: a file, SQLite and PostgreSQL, the upstream."""
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, func, select, text

from dev.harness import free_port
from services import simulate_latency
from services.api import ApiSource
from services.db import SEED_ROWS, DbSource, init_db, quotes
from services.files import FileSource
from tests.helpers import far


def test_file_source_reads_the_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("  hello file \n", encoding="utf-8")
    assert FileSource(path).read(far()) == "hello file"


def test_file_source_waits_its_delay(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("x", encoding="utf-8")
    start = time.monotonic()
    FileSource(path, delay_s=0.1).read(far())
    assert time.monotonic() - start >= 0.1


def test_file_source_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        FileSource(tmp_path / "missing.txt").read(far())


def test_simulated_latency_stops_at_the_deadline():
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        simulate_latency(5, start + 0.1)
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize("url_kind", ["sqlite", "postgresql"])
def test_db_source_reads_the_seeded_row(url_kind, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'sub' / 'app.db'}" if url_kind == "sqlite" else (
        request.getfixturevalue("postgres_url"))
    init_db(url)
    init_db(url)  # a second start must not seed twice
    source = DbSource(url)
    assert source.read(far()) == SEED_ROWS[0]
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


def test_api_source_refused_connection_raises():
    with pytest.raises(ConnectionError, match="refused"):
        ApiSource(f"http://127.0.0.1:{free_port()}/").read(far())


def test_api_source_http_error_raises(upstream):
    with pytest.raises(ConnectionError, match="404"):
        ApiSource(upstream.url + "/no-such-path").read(far())


def test_api_source_after_the_deadline_does_not_call(upstream):
    with pytest.raises(TimeoutError):
        ApiSource(upstream.url + "/").read(time.monotonic() - 1)
