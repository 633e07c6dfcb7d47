"""Fixtures: the app and its test client, a real upstream, real gunicorns (`serve`), PostgreSQL
(tests/helpers.py holds what the tests share that is not a fixture)."""
import pytest

from app import create_app
from dev import harness
from dev.harness import start_upstream
from pools import get_pools
from services.db import init_db
from tests.helpers import POSTGRES_URL, Gunicorns, missing, postgres_available


@pytest.fixture(scope="session")
def upstream():
    """A real upstream API without delay, shared by the tests of one run."""
    service = start_upstream()
    yield service
    service.stop()


@pytest.fixture
def app(tmp_path, upstream):
    """An app on a fresh SQLite file and the real upstream, with no simulated latency."""
    database_url = harness.sqlite_url(tmp_path)
    init_db(database_url)
    app = create_app({
        "TESTING": True,
        "DATABASE_URL": database_url,
        "API_URL": upstream.url + "/",
        "FILE_DELAY_MS": 0,
        "DB_DELAY_MS": 0,
        "WEB_THREADS": 4,
        "PROCESS_POOL_SIZE": 2,
    })
    yield app
    get_pools(app).shutdown()


@pytest.fixture
def client(app):
    """A test client of `app`."""
    return app.test_client()


@pytest.fixture(scope="session")
def postgres_url():
    """POSTGRES_URL; skips without a server on a laptop, but fails under CI=true."""
    if not postgres_available():
        missing(f"no PostgreSQL at {POSTGRES_URL}")
    return POSTGRES_URL


@pytest.fixture
def serve(upstream, tmp_path):
    """Gunicorns for one test, stopped after it."""
    gunicorns = Gunicorns(upstream.url + "/", tmp_path)
    yield gunicorns
    gunicorns.stop_all()


@pytest.fixture(scope="module")
def serve_module(upstream, tmp_path_factory):
    """Gunicorns shared by a module's tests, stopped after the last of them."""
    gunicorns = Gunicorns(upstream.url + "/", tmp_path_factory.mktemp("gunicorns"))
    yield gunicorns
    gunicorns.stop_all()
