"""make profile: how py-spy's samples are put into parts, the report, and the parts timed alone."""
import json
import subprocess
import sys

import pytest

from bench import profile
from dev import harness

WORKER = "ThreadWorker.run (gunicorn/workers/gthread.py:425)"
VIEW = (f"{WORKER};run (runtime/stamps.py:86);Flask.wsgi_app (flask/app.py:1511);"
        "index (app.py:148)")
HAND_OFFS = "hand-offs: pools, futures, the event loop (pools.py, concurrent.futures, asyncio)"


@pytest.mark.parametrize("stack, part", [
    (f"{VIEW};Pools.gather (pools.py:302);wait (concurrent/futures/_base.py:263)", HAND_OFFS),
    ("Thread.run (threading.py:982);BaseEventLoop.run_forever (asyncio/base_events.py:608);"
     "BaseEventLoop._run_once (asyncio/base_events.py:1922)", HAND_OFFS),
    (f"{VIEW};jsonify (flask/json/__init__.py:170);dumps (json/__init__.py:238)", "JSON"),
    ("_worker (concurrent/futures/thread.py:83);_timed (pools.py:427);DbSource.read "
     "(services/db.py:83);Connection.execute (sqlalchemy/engine/base.py:1494);"
     "Lock.acquire (threading.py:100)", "SQL (SQLAlchemy, sqlite3)"),
    (f"{VIEW};ApiSource.read (services/api.py:37);HTTPResponse.begin (http/client.py:318);"
     "parse_headers (http/client.py:236);Parser.parsestr (email/parser.py:67)",
     "HTTP read (http.client)"),
    (f"{VIEW};ApiSource.read (services/api.py:37);HTTPResponse._read_status "
     "(http/client.py:286);SocketIO.readinto (socket.py:706)", profile.WAITING),
    (f"{WORKER};_Reading._on_readable (runtime/channel.py:290);RequestReader.feed (runtime/wire.py:80)",
     "HTTP parsing (gunicorn's parser, runtime/wire.py)"),
    ("Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982)", profile.OTHER),
])
def test_a_sample_goes_to_the_part_of_its_innermost_known_frame(stack, part):
    assert profile.part_of(stack) == part


def test_shares_weigh_each_stack_by_its_count():
    raw = (f"{VIEW};dumps (json/__init__.py:238) 3\n"
           f"{VIEW};Pools.gather (pools.py:302) 1\n"
           "not a sample line\n")
    shares, samples = profile.shares(raw)
    assert samples == 4
    assert shares["JSON"] == 0.75 and sum(shares.values()) == pytest.approx(1.0)


def test_report_says_what_a_request_in_flight_costs(tmp_path, monkeypatch):
    monkeypatch.setattr(profile, "REPORTS", tmp_path)
    parts = {"us": {"JSON": 100.0, profile.OTHER: 900.0}, "cpu_us": 1000.0, "rps": 800,
             "samples": 1500, "ticks": 3200, "cpu_share": 0.9}
    text = profile.write_report(parts, {"file read": 9.0}, [(50, 900, 12, 60), (250, 1300, 16, 100)])
    assert "| JSON | 10.0% | 100 |" in text and "| file read | 9 |" in text
    assert "Each request in flight beyond 50: 205 KB more RSS, and 2.00 µs of CPU" in text
    assert (tmp_path / "profile.md").read_text() == text


def test_every_part_is_timed_alone(upstream, tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.parts", upstream.url + "/", str(tmp_path)],
                         cwd=harness.ROOT, capture_output=True, text=True, timeout=120, check=True)
    parts = json.loads(out.stdout)
    assert len(parts) == 8 and all(us > 0 for us in parts.values())
    whole = parts["the app's GET / through WSGI, sources included"]
    assert whole > parts["API read: http.client GET from the upstream"] \
        + parts["SQL read: SQLAlchemy, SQLite"]
