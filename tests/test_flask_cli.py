"""Flask's own development loop on a fresh checkout: `flask --app app init-db`, then
`flask --app app run --debug`, which serves the stand-in API itself (issue 25)."""
import os
import subprocess
import sys

import pytest
import requests

from dev.harness import ROOT, Service, free_port, sqlite_url
from pools import get_pools

pytestmark = pytest.mark.slow


def test_flask_run_serves_all_three_sources_once_init_db_ran(tmp_path):
    port, upstream_port = free_port(), free_port()
    env = {"DATABASE_URL": sqlite_url(tmp_path), "UPSTREAM_PORT": str(upstream_port),
           "API_URL": "", "FILE_DELAY_MS": "0", "DB_DELAY_MS": "0", "API_DELAY_MS": "0"}
    flask = [sys.executable, "-m", "flask", "--app", "app"]
    server = Service([*flask, "run", "--debug", "--port", str(port)], port, env)
    try:
        before = requests.get(server.url + "/readyz", timeout=10)
        init = subprocess.run([*flask, "init-db"], cwd=ROOT, env={**os.environ, **env},
                              capture_output=True, text=True, timeout=60)
        index = requests.get(server.url + "/", timeout=10)
        ready = requests.get(server.url + "/readyz", timeout=10)
    finally:
        server.stop()
    # No table yet: the database opens, but it is not ready (was "ok": SELECT 1).
    assert before.status_code == 503 and before.json()["checks"]["db"].startswith("unavailable")
    assert init.returncode == 0, init.stderr
    body = index.json()
    assert index.status_code == 200, body
    assert body["result_db"]["author"] == "Rob Pike" and body["result_api"]["source"] == "upstream"
    assert ready.status_code == 200
    assert server.leftovers == []



def test_app_app_is_built_once_on_first_use():
    import app

    assert "app" not in vars(app)  # importing built nothing
    built = app.app
    assert built is app.app and built.name == "app"
    get_pools(built).shutdown()
    del app.app
