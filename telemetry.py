"""Request ids in every log line, and Prometheus metrics that add up across gunicorn workers.

Under gunicorn, gunicorn.conf.py puts PROMETHEUS_MULTIPROC_DIR in the environment before anything
uses a metric, so each worker writes its samples to files there and /metrics sums them
(prometheus_client's multiprocess mode). Outside gunicorn the default in-process registry is used.
Importing this module does nothing: the metrics are built, and prometheus_client imported, on the
first use of one, so any module may import it at its top.
"""
import contextvars
import datetime
import json
import logging
import os
import random
import re
import sys
import threading
from typing import Any

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_request_id = contextvars.ContextVar("request_id", default="-")
# W3C Trace Context (https://www.w3.org/TR/trace-context/): version-traceid-parentid-flags.
TRACEPARENT_HEADER = "traceparent"
_VALID_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_trace: contextvars.ContextVar[tuple[str, str, str] | None] = contextvars.ContextVar(
    "trace", default=None)  # (trace id, this span's id, flags)
LOG_FORMAT = ("[%(asctime)s] [%(process)d] [%(levelname)s] [%(threadName)s] [rid=%(request_id)s] "
              "%(name)s: %(message)s")

log = logging.getLogger("service")

# The methods a `method` label may name; any other is "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# The pid part of the file that holds dead workers' counts (mark_process_dead).
ARCHIVE = "archive"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 2.5, 5, 10)


# Each metric: (attribute, prometheus_client class, name, help, labels, keyword arguments).
_METRICS: tuple[tuple[str, str, str, str, list[str], dict[str, Any]], ...] = (
    ("REQUEST_SECONDS", "Histogram", "http_request_duration_seconds",
     "Time from gunicorn queueing a request to its response", ["route", "method", "status"],
     {"buckets": LATENCY_BUCKETS}),
    ("SOURCE_SECONDS", "Histogram", "source_read_duration_seconds",
     "Time of one read of a GET / source", ["source", "outcome"], {"buckets": LATENCY_BUCKETS}),
    ("POOL_QUEUED", "Gauge", "pool_queue_depth", "Tasks submitted to a pool and not yet started",
     ["pool"], {"multiprocess_mode": "livesum"}),
    ("POOL_BUSY", "Gauge", "pool_busy_workers", "Pool threads or processes running a task",
     ["pool"], {"multiprocess_mode": "livesum"}),
    ("POOL_SIZE", "Gauge", "pool_size", "Threads or processes a pool may use", ["pool"],
     {"multiprocess_mode": "livesum"}),
    ("REJECTED", "Counter", "rejected_requests_total",
     "Requests answered 503 because the service was saturated", ["reason"], {}),
    ("READS_ENDED", "Counter", "request_reads_ended_total",
     "Connections the poller answered (408, 400, 413, 431, 503) or closed before their request "
     "was read whole", ["reason"], {}),
    ("OPEN_READS", "Gauge", "request_reads_open",
     "Connections whose next request is being read, or awaited", [],
     {"multiprocess_mode": "livesum"}),
    ("IN_FLIGHT_LIMIT", "Gauge", "requests_in_flight_limit",
     "Requests the workers let run at once now (runtime/limit.py)", [],
     {"multiprocess_mode": "livesum"}),
    ("IN_FLIGHT", "Gauge", "requests_in_flight", "Requests running in request threads", [],
     {"multiprocess_mode": "livesum"}),
    ("CPU_TASKS", "Counter", "cpu_tasks_total", "Chunks of prime checks submitted, by executor",
     ["executor"], {}),
    ("POOL_REBUILDS", "Counter", "process_pool_rebuilds_total",
     "Process pools replaced after a child process died", [], {}),
)
_metrics_lock = threading.Lock()


def _build_metrics() -> dict[str, Any]:
    # prometheus_client picks its multiprocess mode when it is first imported, so it is imported
    # here, on the first use of a metric, not when this module is (gunicorn's master imports the
    # worker class, and so this module, before gunicorn.conf.py sets the environment).
    multiproc_dir = _multiproc_dir()
    if multiproc_dir:
        # The first process to use a metric creates it: with --preload that is gunicorn's
        # master, before its on_starting hook could.
        os.makedirs(multiproc_dir, exist_ok=True)
    import prometheus_client

    return {attribute: getattr(prometheus_client, kind)(name, documentation, labels, **kwargs)
            for attribute, kind, name, documentation, labels, kwargs in _METRICS}


def __getattr__(name: str) -> Any:
    """The metrics (telemetry.REJECTED and the like), all built on the first use of one (PEP 562);
    after that they are plain attributes of this module."""
    if name not in {metric[0] for metric in _METRICS}:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _metrics_lock:
        if name not in globals():
            globals().update(_build_metrics())
    return globals()[name]


def _multiproc_dir() -> str | None:
    # prometheus_client reads this variable itself, so this module follows the environment, not
    # Config: gunicorn.conf.py sets it for the workers after config.py was imported.
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def set_request_id(incoming: str | None) -> str:
    """Adopt a well-formed incoming X-Request-ID or make a new one; return it."""
    # 128 random bits as uuid4().hex has, from the PRNG (which Python reseeds in a forked child)
    # rather than os.urandom: a system call, where a busy worker's thread may lose the GIL.
    request_id = (incoming if incoming and _VALID_REQUEST_ID.fullmatch(incoming)
                  else f"{random.getrandbits(128):032x}")
    _request_id.set(request_id)
    return request_id


def current_request_id() -> str:
    """The id of the request this thread (or pool task) is working for."""
    return _request_id.get()


def start_trace(incoming: str | None) -> str:
    """Join the caller's W3C trace (a well-formed `traceparent`) or start one; this request is a
    span of its own in it. Return the trace id."""
    match = _VALID_TRACEPARENT.fullmatch(incoming.strip().lower()) if incoming else None
    if (match and match[1] != "ff" and match[2] != "0" * 32 and match[3] != "0" * 16):
        trace_id, flags = match[2], match[4]
    else:
        trace_id, flags = f"{random.getrandbits(128):032x}", "00"
    _trace.set((trace_id, f"{random.getrandbits(64):016x}", flags))
    return trace_id


def traceparent() -> str | None:
    """The `traceparent` to send on a call made for the current request (None outside one)."""
    trace = _trace.get()
    return None if trace is None else f"00-{trace[0]}-{trace[1]}-{trace[2]}"


def current_trace_id() -> str:
    """The trace id of the current request, or "-"."""
    trace = _trace.get()
    return "-" if trace is None else trace[0]


def describe(error: BaseException | None) -> str:
    """An exception and its causes as one log line's text ("TimeoutError: ...; from ...")."""
    parts: list[str] = []
    while error is not None and len(parts) < 4:
        parts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "; from ".join(parts)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        record.trace_id = current_trace_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log pipelines (Loki, CloudWatch, ELK): time, level, logger,
    message, request and trace ids; a line of gunicorn's access log also has the method, route,
    path, status and duration. The standard library's json, no dependency."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry = {"time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
                 .isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "pid": record.process}
        atoms = record.args if record.name == "gunicorn.access" else None
        if isinstance(atoms, dict):  # gunicorn's access atoms; '-' for what is missing
            entry.update(message=atoms["r"], method=atoms["m"], route=atoms["{service.route}e"],
                         path=atoms["U"], status=int(atoms["s"]),
                         duration_ms=round(atoms["D"] / 1000, 3),
                         request_id=atoms["{x-request-id}o"],
                         trace_id=atoms["{service.trace_id}e"])
        else:
            entry.update(message=record.getMessage(), thread=record.threadName,
                         request_id=getattr(record, "request_id", None) or _request_id.get(),
                         trace_id=getattr(record, "trace_id", None) or current_trace_id())
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str | int, log_format: str = "text") -> None:
    """Send the service's log lines, each with its request id, to stderr (gunicorn's error log);
    with "json", the lines of any other library too (the root logger's)."""
    if any(isinstance(f, _RequestIdFilter) for h in log.handlers for f in h.filters):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter(LOG_FORMAT))
    handler.addFilter(_RequestIdFilter())
    log.addHandler(handler)
    log.setLevel(level.upper() if isinstance(level, str) else level)
    log.propagate = False
    if log_format == "json":  # else a library's warning goes out as plain text (lastResort)
        logging.getLogger().addHandler(handler)
        logging.captureWarnings(True)


def method_label(method: str) -> str:
    """The `method` label of a request: one of METHODS, else "other", so that a client sending
    made-up methods cannot add a series each (issue 23, item 4; docs/performance.md)."""
    return method if method in METHODS else "other"


def render_metrics() -> tuple[bytes, str]:
    """Return (body, content type) of every metric, summed over all worker processes."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    if not _multiproc_dir():
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    for _ in range(2):
        try:
            return generate_latest(_multiprocess_registry()), CONTENT_TYPE_LATEST
        except FileNotFoundError:  # a dead worker's file merged away between glob and read
            pass
    return generate_latest(_multiprocess_registry()), CONTENT_TYPE_LATEST


def _multiprocess_registry() -> Any:
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def mark_process_dead(pid: int) -> None:
    """Drop a dead worker's live gauges, and fold its counters and histograms into one archive
    file a kind (gunicorn's child_exit hook calls this, in the master: the archive's only
    writer). prometheus_client keeps a dead process's files, so without this every recycled
    worker left two files that each scrape reads again, without end (docs/performance.md)."""
    directory = _multiproc_dir()
    if not directory:
        return
    from prometheus_client import multiprocess
    from prometheus_client.mmap_dict import MmapedDict

    multiprocess.mark_process_dead(pid)
    for kind in ("counter", "histogram"):
        dead = os.path.join(directory, f"{kind}_{pid}.db")
        if not os.path.exists(dead):
            continue
        archive = MmapedDict(os.path.join(directory, f"{kind}_{ARCHIVE}.db"))
        try:
            for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(dead):
                archive.write_value(key, archive.read_value(key)[0] + value, timestamp)
        finally:
            archive.close()
        # A scrape between the write above and this sees the dead worker's counts twice for
        # an instant; one whose glob found the file may miss it (render_metrics tries again).
        os.remove(dead)
