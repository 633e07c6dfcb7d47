"""Request ids, log lines and metrics rendering."""
import io
import json
import logging
import os
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

import telemetry


@pytest.mark.parametrize("incoming, kept", [
    ("abc-123", True),
    ("a.b:c_d-e", True),
    ("x" * 128, True),
    ("x" * 129, False),
    ("", False),
    (None, False),
    ("has space", False),
    ("new\nline", False),
    ("\u00e9t\u00e9", False),
])
def test_request_id_is_adopted_only_when_well_formed(incoming, kept):
    request_id = telemetry.set_request_id(incoming)
    assert (request_id == incoming) == kept
    assert telemetry.current_request_id() == request_id
    assert 1 <= len(request_id) <= 128


def our_handlers():
    """The handlers configure_logging added (pytest adds its own to every logger)."""
    return [h for h in telemetry.log.handlers
            if any(isinstance(f, telemetry._RequestIdFilter) for f in h.filters)]


def test_log_lines_carry_the_request_id():
    telemetry.configure_logging("debug")
    stream = io.StringIO()
    [handler] = our_handlers()
    old_stream = handler.setStream(stream)
    try:
        telemetry.set_request_id("rid-for-log")
        telemetry.log.warning("something happened")
    finally:
        handler.setStream(old_stream)
    assert "[rid=rid-for-log]" in stream.getvalue() and "something happened" in stream.getvalue()


def test_configure_logging_twice_adds_one_handler():
    telemetry.configure_logging("info")
    telemetry.configure_logging("info")
    assert len(our_handlers()) == 1


def test_metrics_render_as_prometheus_text():
    telemetry.REJECTED.labels("queue_wait").inc()
    body, content_type = telemetry.render_metrics()
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    assert content_type.startswith("text/plain")
    assert {"rejected_requests", "http_request_duration_seconds", "pool_queue_depth"} <= names


def test_importing_the_service_does_no_work(tmp_path):
    output = _python_with_metrics_dir(
        tmp_path / "metrics", "import sys, app, pools, telemetry, runtime.worker, "
        "runtime.overload; print('prometheus_client' in sys.modules)")
    assert output.strip() == "False" and not (tmp_path / "metrics").exists()


def test_the_first_metric_used_builds_them_in_the_multiprocess_directory(tmp_path):
    output = _python_with_metrics_dir(
        tmp_path / "metrics", "import telemetry; telemetry.REJECTED.labels('probe').inc(); "
        "print(telemetry.render_metrics()[0].decode())")
    assert any((tmp_path / "metrics").iterdir())
    assert 'rejected_requests_total{reason="probe"} 1.0' in output


def _python_with_metrics_dir(metrics_dir, code):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("incoming, joined", [
    (f"00-{TRACE}-00f067aa0ba902b7-01", True),
    (f"00-{TRACE.upper()}-00F067AA0BA902B7-01", True),
    (f"00-{'0' * 32}-00f067aa0ba902b7-01", False),  # an invalid trace id
    (f"00-{TRACE}-{'0' * 16}-01", False),
    (f"ff-{TRACE}-00f067aa0ba902b7-01", False),  # a forbidden version
    (f"00-{TRACE}-00f067aa0ba902b7", False),
    ("", False),
    (None, False),
])
def test_a_request_joins_a_well_formed_trace_or_starts_one(incoming, joined):
    trace_id = telemetry.start_trace(incoming)
    assert (trace_id == TRACE) == joined and len(trace_id) == 32
    version, sent_trace, span, flags = telemetry.traceparent().split("-")
    assert (version, sent_trace) == ("00", trace_id) and len(span) == 16
    assert span != "00f067aa0ba902b7"  # this request is a span of its own
    assert flags == ("01" if joined else "00")


def test_json_lines_carry_the_ids_and_gunicorn_s_access_fields():
    formatter = telemetry.JsonFormatter()
    telemetry.set_request_id("r-1")
    telemetry.start_trace(f"00-{TRACE}-00f067aa0ba902b7-01")
    record = logging.LogRecord("service", logging.WARNING, __file__, 1, "source %s: %s",
                               ("api", "timeout"), None)
    telemetry._RequestIdFilter().filter(record)
    line = json.loads(formatter.format(record))
    assert line["message"] == "source api: timeout" and line["level"] == "WARNING"
    assert (line["request_id"], line["trace_id"]) == ("r-1", TRACE)
    atoms = {"r": "GET /is_prime/7 HTTP/1.1", "m": "GET", "U": "/is_prime/7", "s": "200",
             "D": 1500, "{service.route}e": "/is_prime/<numbers>", "{x-request-id}o": "r-2",
             "{service.trace_id}e": TRACE}
    access = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, "%(r)s", (atoms,),
                               None)
    line = json.loads(formatter.format(access))
    assert line["route"] == "/is_prime/<numbers>" and line["status"] == 200
    assert (line["method"], line["duration_ms"], line["request_id"]) == ("GET", 1.5, "r-2")
