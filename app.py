"""The Flask app: routes that hand I/O to the thread pool and CPU work to the process pool.

gunicorn builds it with `create_app()` (gunicorn.conf.py's wsgi_app; `app:app` builds one too);
importing this builds nothing.
"""
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import click
from flask import Blueprint, Flask, current_app, g, jsonify, make_response, request
from flask.json.provider import DefaultJSONProvider
from flask.typing import ResponseReturnValue
from flask.wrappers import Response
from sqlalchemy.engine import make_url
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge
from werkzeug.sansio.response import Response as BaseResponse

import openapi
import pages
import pools
import services
import telemetry
from config import settings, stand_in_api_url
from pools import ExecutorFailed, PoolRestarted, Pools, Saturated, get_pools
from runtime import overload, stamps
from runtime.clock import Monotonic, wall_clock_of
from services import Source, get_sources, primes, public_failure
from services.api import ApiSource
from services.db import DbSource, init_db
from services.files import FileSource

bp = Blueprint("service", __name__)
READ_MODES = ("concurrent", "sequential")
PRIME_MODES = ("auto", "inline", "process")
LOGGED_ERRORS = {500, 502, 504}
# The request thread runs this source's read itself while the thread pool runs the others: it
# would only wait otherwise. The slowest read, so the others finish while it runs.
READ_IN_REQUEST_THREAD = "api"
# What the routes let through, and the status each is answered with (its message is its text,
# written to be public); an InputError carries its own (400 or 413). 503s say when to retry.
ERROR_STATUS: dict[type[Exception], int | None] = {
    primes.InputError: None, Saturated: 503, PoolRestarted: 503, TimeoutError: 504,
    ExecutorFailed: 502}


class OrderedJSONProvider(DefaultJSONProvider):
    """Keeps keys in insertion order (request order for /is_prime), formatted as json.dumps does."""

    sort_keys = False

    def response(self, *args: Any, **kwargs: Any) -> BaseResponse:
        """Serialise one object (or the keyword arguments) into a JSON response."""
        obj = args[0] if len(args) == 1 else (args or kwargs)
        return self._app.response_class(self.dumps(obj), mimetype=self.mimetype)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create the app: config from the environment (or `test_config`), its sources and pools."""
    app = Flask(__name__)
    # "/is_prime//" would otherwise be a 308 redirect whose body is an error; a "/" inside the
    # numbers is simply no route (404). Found by tests/test_app.py's property test.
    app.url_map.merge_slashes = False
    app.config.update(settings(test_config))
    cfg = app.config
    app.json = OrderedJSONProvider(app)
    telemetry.configure_logging(cfg["LOG_LEVEL"], cfg["LOG_FORMAT"])

    services.init_app(app, [
        FileSource(cfg["FILE_PATH"], cfg["FILE_DELAY_MS"] / 1000),
        DbSource(cfg["DATABASE_URL"], cfg["DB_DELAY_MS"] / 1000, cfg["DB_POOL_SIZE"],
                 cfg["REQUEST_TIMEOUT_S"]),
        ApiSource(cfg["API_URL"]),
    ])
    primes.calibrate()  # admission by cost needs this machine's speed
    pools.init_app(app, Pools(
        thread_size=cfg["THREAD_POOL_SIZE"],
        process_size=cfg["PROCESS_POOL_SIZE"],
        thread_queue=cfg["THREAD_QUEUE_LIMIT"],
        process_preload=[primes.__name__],
        cpu_executor=cfg["CPU_EXECUTOR"],
        connect_timeout_s=cfg["READY_TIMEOUT_S"],
        reconnect_after_s=cfg["DASK_RECONNECT_S"],
    ))

    _stand_in_for_flask_run(cfg)
    openapi.init_app(app)
    app.register_blueprint(bp)
    app.cli.add_command(init_db_command)
    overload.init_app(app, stamps.arrived_at, stamps.condemned)
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(RequestEntityTooLarge, _body_too_large)
    for error in ERROR_STATUS:
        app.register_error_handler(error, _known_error)
    return app


def _stand_in_for_flask_run(cfg: Mapping[str, Any]) -> None:
    # Flask's development loop (flask --app app run) on a fresh clone has no upstream API: when
    # API_URL is left at the stand-in's address, the stand-in (dev/upstream.py) is served from
    # the development server's own process. gunicorn never gets here.
    context = click.get_current_context(silent=True)
    if context is None or context.info_name != "run":
        return
    if cfg["API_URL"] != stand_in_api_url(cfg["UPSTREAM_PORT"]):
        return
    from dev import upstream

    if upstream.serve_in_thread(cfg["UPSTREAM_PORT"], cfg["API_DELAY_MS"]):
        telemetry.log.warning("serving the stand-in API on %s for flask run", cfg["API_URL"])


def __getattr__(name: str) -> Flask:
    """`app.app`, built on first use (PEP 562), for `gunicorn app:app` and other tools that look
    for one; importing this module still builds nothing."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()["app"] = create_app()
    return globals()["app"]


@click.command("init-db")
def init_db_command() -> None:
    """Create the quotes table and seed it (flask --app app init-db); safe to run again."""
    init_db(current_app.config["DATABASE_URL"])
    click.echo(f"database ready: {make_url(current_app.config['DATABASE_URL'])!r}")


def _start_request() -> None:
    g.request_id = telemetry.set_request_id(request.headers.get(telemetry.REQUEST_ID_HEADER))
    # For gunicorn's access log: its atoms include the environ ({service.trace_id}e).
    request.environ["service.trace_id"] = telemetry.start_trace(
        request.headers.get(telemetry.TRACEPARENT_HEADER))
    # The budget starts when the request arrived, not when a thread picked it up.
    g.arrived = stamps.arrived_at() or time.monotonic()
    g.deadline = g.arrived + current_app.config["REQUEST_TIMEOUT_S"]


def _finish_request(response: Response) -> Response:
    response.headers[telemetry.REQUEST_ID_HEADER] = g.request_id
    seconds = time.monotonic() - g.arrived
    route = request.url_rule.rule if request.url_rule else "unmatched"
    request.environ["service.route"] = route
    telemetry.REQUEST_SECONDS.labels(route, telemetry.method_label(request.method),
                                     response.status_code).observe(seconds)
    # Shed requests (503) are counted in /metrics; a log line each would add to the overload.
    level = logging.WARNING if response.status_code in LOGGED_ERRORS else logging.DEBUG
    if telemetry.log.isEnabledFor(level):
        telemetry.log.log(level, "%s %s %s %.1f ms", request.method,
                          request.full_path.rstrip("?"), response.status_code, seconds * 1000)
    return response


@bp.get("/")
@overload.work
def index() -> ResponseReturnValue:
    """Read the file, the database and the API, concurrently (default) or one after another;
    JSON, or a page with a waterfall of the reads for a browser."""
    mode = _choice("mode", READ_MODES)
    _choice("format", pages.FORMATS)
    sources = get_sources()
    on_loop = mode == "concurrent" and current_app.config["READ_LOOP"]
    outcomes = get_pools().gather(
        {name: _read_of(source, on_loop) for name, source in sources.items()}, g.deadline,
        run_here=READ_IN_REQUEST_THREAD, sequential=mode == "sequential")
    timings = {name: round(outcome.elapsed_ms, 1) for name, outcome in outcomes.items()}
    timings["total"] = round((time.monotonic() - g.arrived) * 1000, 1)

    body = {f"result_{name}": outcome.value for name, outcome in outcomes.items()}
    body.update(mode=mode, timings_ms=timings)
    errors = {name: public_failure(o.error) for name, o in outcomes.items()
              if o.error is not None}
    status = 200
    if errors:
        body["errors"] = errors
        timed_out = any(isinstance(o.error, TimeoutError) for o in outcomes.values())
        status = 504 if timed_out else 502
    if pages.wants_html():
        page = pages.index_page(mode, READ_MODES, outcomes, timings, errors, g.arrived)
        response = make_response(page, status)
    else:
        response = jsonify(body)
        response.status_code = status
    response.headers["Server-Timing"] = ", ".join(f"{k};dur={v}" for k, v in timings.items())
    response.vary.add("Accept")  # a cache must not give a browser's page to an API client
    return response


@bp.get("/is_prime/", defaults={"numbers": ""})
@bp.get("/is_prime/<numbers>")
@overload.work
def is_prime_get(numbers: str) -> Response:
    """Check the comma-separated integers of the path."""
    return _check_primes(numbers.split(","))


@bp.post("/is_prime")
@overload.work
def is_prime_post() -> Response:
    """Check a JSON list of integers (numbers or strings of digits): batches too long for a
    URL."""
    try:
        # parse_int=str: numbers stay text, so they meet the same checks as the path's, and
        # CPython's 4300-digit int limit never applies.
        items = current_app.json.loads(request.get_data(), parse_int=str)
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # json's decoder stops at the interpreter's recursion limit
        raise BadRequest("the body is nested too deeply: it must be a flat JSON list of "
                         "integers") from exc
    if not isinstance(items, list):
        raise BadRequest("the body must be a JSON list of integers")
    return _check_primes(items)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the worker answers. No I/O."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Readiness: both pools run a task and every source is reachable, within READY_TIMEOUT_S."""
    front = get_pools()
    deadline = time.monotonic() + current_app.config["READY_TIMEOUT_S"]
    sources = get_sources()
    checks = {}
    try:
        front.map_cpu(primes.check_batch, [[2]], deadline)
        checks["process_pool" if front.dask_address is None else "dask_scheduler"] = "ok"
        outcomes = front.gather({n: s.check for n, s in sources.items()}, deadline,
                                run_here=READ_IN_REQUEST_THREAD)
        checks["thread_pool"] = "ok"
        checks.update({n: public_failure(o.error) if o.error else "ok"
                       for n, o in outcomes.items()})
    except (Saturated, PoolRestarted, ExecutorFailed, TimeoutError) as exc:
        checks["pools"] = str(exc)  # pools.py's own words: no address, no exception text
    ready = all(result == "ok" for result in checks.values())
    response = jsonify({"status": "ready" if ready else "unavailable", "checks": checks})
    response.status_code = 200 if ready else 503
    return response


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3.1 document of this API."""
    return jsonify(openapi.get_document())


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics of all workers."""
    body, content_type = telemetry.render_metrics()
    return current_app.response_class(body, content_type=content_type)


def _check_primes(items: list[Any]) -> Response:
    cfg = current_app.config
    mode = _choice("mode", PRIME_MODES)
    front = get_pools()
    cores = 1 if mode == "inline" else front.process_size
    numbers = primes.parse_items(items, cfg["PRIME_MAX_ITEMS"], cfg["PRIME_MAX_DIGITS"],
                                 max_cpu_s=cores * cfg["REQUEST_TIMEOUT_S"])
    values = list(numbers.values())
    estimated_ms = sum(primes.cost_us(n) for n in values) / 1000
    if mode == "auto":
        mode = "process" if estimated_ms > cfg["PRIME_INLINE_BUDGET_MS"] else "inline"
    # Check the deadline between numbers, on the wall clock (a Dask worker's host has its own
    # monotonic clock), so that no CPU is spent past it.
    stop_at = wall_clock_of(g.deadline)
    if mode == "inline":
        return jsonify(dict(zip(numbers, primes.check_batch(values, stop_at))))
    parts = max(front.process_size, math.ceil(estimated_ms / cfg["CPU_CHUNK_MS"]))
    groups = primes.split_by_cost(values, parts)
    # Python ints, not gmpy2's: a Dask scheduler unpickles the task without needing gmpy2.
    chunks = [[int(values[i]) for i in group] for group in groups]
    costs = [primes.least_cost_s(chunk) for chunk in chunks]
    results: list[bool | None] = [None] * len(values)
    answers = front.map_cpu(primes.check_chunk, [(chunk, stop_at) for chunk in chunks],
                            g.deadline, costs=costs, priority=sum(costs))
    for group, chunk in zip(groups, answers):
        for position, result in zip(group, chunk):
            results[position] = result
    return jsonify(dict(zip(numbers, results)))


def _read_of(source: Source, on_loop: bool) -> Callable[[Monotonic], Any]:
    # A source's coroutine waits on the event loop; its blocking read holds a thread.
    return getattr(source, "read_async", source.read) if on_loop else source.read


def _choice(arg: str, allowed: Sequence[str]) -> str:
    value = request.args.get(arg, allowed[0])
    if value not in allowed:
        raise BadRequest(f"{arg} must be one of {', '.join(allowed)}; got {value[:40]!r}")
    return value


def _retry_after() -> list[tuple[str, str]]:
    return [("Retry-After", str(current_app.config["RETRY_AFTER_S"]))]


def _error(status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
    if pages.wants_html():
        response = make_response(pages.error_page(status, message), status)
    else:
        response = jsonify({"error": message, "status": status})
        response.status_code = status
    response.headers.update(headers)
    response.vary.add("Accept")
    return response


def _http_error(exc: HTTPException) -> Response:
    # Keep headers such as 405's Allow; the body is JSON, not Werkzeug's HTML page.
    headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
    return _error(exc.code or 500, f"{exc.name}: {exc.description}", headers)


def _body_too_large(exc: RequestEntityTooLarge) -> Response:
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    return _error(413, f"the body is too large: the limit is {limit} bytes")


def _known_error(exc: Exception) -> Response:
    status = next(status for kind, status in ERROR_STATUS.items() if isinstance(exc, kind))
    code = status if status is not None else int(getattr(exc, "status", 500))  # InputError's
    return _error(code, str(exc), _retry_after() if code == 503 else ())

