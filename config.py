"""Every setting of the service, gunicorn and the stand-in upstream: the only reader of the
environment, and the only place a setting is derived from others (derive()). The README's
configuration table lists the same names (a test checks it)."""
import os
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
S = TypeVar("S", bound=MutableMapping[str, Any])
D = TypeVar("D", bound=str | None)
ROOT = Path(__file__).resolve().parent
GET_SOURCES = 3  # GET / reads a file, a database and an API (app.py)


class SettingError(ValueError):
    """An environment variable holds a value its setting cannot take."""

    def __init__(self, name: str, value: str, allowed: str) -> None:
        super().__init__(f"{name}={value!r} is not a valid setting: {allowed}")


def env_int(name: str, default: int) -> int:
    """Return environment variable `name` as an int, or `default` when unset or empty."""
    return _parsed(name, default, int, "a whole number")


def env_float(name: str, default: float) -> float:
    """Return environment variable `name` as a float, or `default` when unset or empty."""
    return _parsed(name, default, float, "a number")


def env_str(name: str, default: D) -> str | D:
    """Return environment variable `name`, or `default` when unset or empty."""
    return os.environ.get(name, "") or default


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_choice(name: str, default: str, choices: Sequence[str]) -> str:
    """Return environment variable `name`, one of `choices`, or `default` when unset or empty."""
    value = os.environ.get(name, "").strip().lower() or default
    if value not in choices:
        raise SettingError(name, os.environ[name], "one of " + ", ".join(choices))
    return value


def env_bool(name: str, default: bool) -> bool:
    """Return environment variable `name` as a bool (one of TRUE_WORDS or FALSE_WORDS), or
    `default` when unset or empty."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value not in TRUE_WORDS + FALSE_WORDS:
        raise SettingError(name, os.environ[name], "one of " + ", ".join(TRUE_WORDS + FALSE_WORDS))
    return value in TRUE_WORDS


def _parsed(name: str, default: T, kind: Callable[[str], T], allowed: str) -> T:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        raise SettingError(name, value, allowed) from None


def stand_in_api_url(port: int) -> str:
    """The URL of the stand-in upstream API (dev/upstream.py) listening on `port`."""
    return f"http://127.0.0.1:{port}/"


class Config:
    """Every tunable of the service, read from the environment once, with typed defaults."""

    HOST = env_str("HOST", "127.0.0.1")
    PORT = env_int("PORT", 8000)
    BIND = env_str("BIND", f"{HOST}:{PORT}")
    UPSTREAM_PORT = env_int("UPSTREAM_PORT", 8001)

    # gunicorn: one gthread worker per core, with WEB_THREADS request threads each: the most
    # requests it may hold in flight. Threads cap GET / at workers x threads / 0.3 s (Little's
    # law); how many of them run at once is the in-flight limit's (ADAPTIVE_LIMIT), so that more
    # threads than the cores can serve do not collapse the goodput (docs/performance.md).
    WEB_WORKERS = env_int("WEB_WORKERS", os.cpu_count() or 1)
    WEB_THREADS = env_int("WEB_THREADS", 512)
    # Pin each worker to a CPU of its own (Linux), so its threads pass the GIL on one core.
    PIN_WORKERS = env_bool("PIN_WORKERS", True)
    # Freeze what a worker holds once started, so full collections skip it (gunicorn.conf.py).
    GC_FREEZE = env_bool("GC_FREEZE", True)
    # How long a worker's thread may hold the GIL while another waits for it (Python's default,
    # 5 ms). Each forced hand-over costs two context switches; a longer interval helped only
    # past a thousand clients and hurt below, so the default stays (docs/performance.md).
    GIL_SWITCH_MS = env_float("GIL_SWITCH_MS", 5.0)
    # The rest of gunicorn's settings; gunicorn.conf.py says what each one does.
    WORKER_CLASS = env_str("WORKER_CLASS", "runtime.worker.GuardedThreadWorker")
    WORKER_CONNECTIONS = env_int("WORKER_CONNECTIONS", 1000)
    BACKLOG = env_int("BACKLOG", 2048)
    WORKER_TIMEOUT = env_int("WORKER_TIMEOUT", 30)
    GRACEFUL_TIMEOUT = env_int("GRACEFUL_TIMEOUT", 30)
    KEEPALIVE = env_int("KEEPALIVE", 5)
    MAX_REQUESTS = env_int("MAX_REQUESTS", 0)
    MAX_REQUESTS_JITTER = env_int("MAX_REQUESTS_JITTER", 0)
    LIMIT_REQUEST_LINE = env_int("LIMIT_REQUEST_LINE", 8190)
    PRELOAD = env_bool("PRELOAD", False)
    CONTROL_SOCKET = env_bool("CONTROL_SOCKET", False)
    ACCESS_LOG = env_str("ACCESS_LOG", None)
    ACCESS_LOG_FORMAT = env_str("ACCESS_LOG_FORMAT",
                                '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s')
    ERROR_LOG = env_str("ERROR_LOG", "-")
    # Where workers write their metrics; "" means a directory of this gunicorn master's own.
    PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR", "")

    # The three sources of GET /. The *_DELAY_MS settings are simulated latency (the seed's
    # profile); set them to 0 to measure raw speed. API_DELAY_MS is applied by the upstream.
    FILE_PATH = env_str("FILE_PATH", str(ROOT / "data" / "sample.txt"))
    FILE_DELAY_MS = env_int("FILE_DELAY_MS", 100)
    DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{ROOT / 'instance' / 'app.db'}")
    DB_DELAY_MS = env_int("DB_DELAY_MS", 200)
    # 0: a connection for every request thread (each request reads the database once at most).
    DB_POOL_SIZE = env_int("DB_POOL_SIZE", 0)
    API_URL = env_str("API_URL", stand_in_api_url(UPSTREAM_PORT))
    API_DELAY_MS = env_int("API_DELAY_MS", 300)

    # Time budget of one request, counted from when its bytes arrived (runtime/stamps.py); every
    # read gets what is left. Under overload a worker serves the newest waiting request first,
    # and refuses (503, before Flask) one that has waited longer than MAX_QUEUE_WAIT_S
    # (runtime/overload.py): at most 1 s of the 2 s goes to waiting, and a GET / served after it
    # (0.3 s) is still in time.
    REQUEST_TIMEOUT_S = env_float("REQUEST_TIMEOUT_S", 2.0)
    MAX_QUEUE_WAIT_S = env_float("MAX_QUEUE_WAIT_S", 1.0)
    # Once the queue has stood for 0.5 s (lifo_queue.CONGESTION_S), a request that waited this
    # long is refused at once (CoDel, as in Maurer's "Fail at Scale"): in milliseconds.
    QUEUE_TARGET_MS = env_float("QUEUE_TARGET_MS", 5.0)
    # Admit only as many requests at once as finish within LIMIT_TARGET x REQUEST_TIMEOUT_S on
    # average (runtime/limit.py), between MIN_LIMIT and WEB_THREADS; off: WEB_THREADS.
    ADAPTIVE_LIMIT = env_bool("ADAPTIVE_LIMIT", True)
    LIMIT_TARGET = env_float("LIMIT_TARGET", 0.5)
    MIN_LIMIT = env_int("MIN_LIMIT", 16)
    RETRY_AFTER_S = env_int("RETRY_AFTER_S", 1)
    READY_TIMEOUT_S = env_float("READY_TIMEOUT_S", 1.0)

    # Pools. THREAD_POOL_SIZE 0 means WEB_THREADS x (GET_SOURCES - 1): a thread for every read of
    # every request a worker can serve at once (the request thread does one read itself), so a
    # read never waits for a thread (derive()).
    THREAD_POOL_SIZE = env_int("THREAD_POOL_SIZE", 0)
    # The reads that only wait (a simulated latency, a local file, SQLite) wait on one asyncio
    # loop per worker instead of a pool thread each: fewer wake-ups, less CPU per GET /
    # (runtime/loop_thread.py). Off: every read on the thread pool.
    READ_LOOP = env_bool("READ_LOOP", True)
    PROCESS_POOL_SIZE = env_int("PROCESS_POOL_SIZE", os.cpu_count() or 1)
    # Where prime checks run: "process" (this worker's pool) or dask://HOST:PORT, a Dask
    # scheduler (runtime/dask_executor.py); PROCESS_POOL_SIZE still sets the chunks per batch.
    CPU_EXECUTOR = env_str("CPU_EXECUTOR", "process")
    # After a failed connect to the Dask scheduler (READY_TIMEOUT_S), a worker answers 503 at
    # once for this long before it tries again: how soon a scheduler that is back is used.
    DASK_RECONNECT_S = env_float("DASK_RECONNECT_S", 2.0)
    # Reads the thread pool may hold beyond one per thread before it answers 503 (the stdlib's
    # queue has no bound); a thread pool sized as above needs none. CPU work is admitted by its
    # estimated cost instead: only what can finish by its deadline (pools.py).
    THREAD_QUEUE_LIMIT = env_int("THREAD_QUEUE_LIMIT", 0)
    # A big batch is cut into chunks of about this much CPU (a prime's estimate), so that a
    # small batch, which goes first, waits for one running chunk at most.
    CPU_CHUNK_MS = env_float("CPU_CHUNK_MS", 20.0)

    LOG_LEVEL = env_str("LOG_LEVEL", "info")
    # text: the lines of telemetry.LOG_FORMAT; json: one JSON object a line (access log too).
    LOG_FORMAT = env_choice("LOG_FORMAT", "text", ("text", "json"))

    # /is_prime caps and the inline/process split.
    PRIME_MAX_ITEMS = env_int("PRIME_MAX_ITEMS", 1000)
    PRIME_MAX_DIGITS = env_int("PRIME_MAX_DIGITS", 1000)
    PRIME_INLINE_BUDGET_MS = env_float("PRIME_INLINE_BUDGET_MS", 2.0)

    # A request is read whole by the worker's poller thread before a request thread gets it
    # (runtime/wire.py), within Apache mod_reqtimeout's defaults: a head within 20 s of its
    # first byte, a second more for every 500 bytes, 40 s at most; a body likewise, 60 s at most
    # (mod_reqtimeout sets none: here every connection ends within a minute). Past one: 408.
    # A new connection that sends nothing is closed after READ_IDLE_TIMEOUT_S.
    READ_IDLE_TIMEOUT_S = env_float("READ_IDLE_TIMEOUT_S", 10.0)
    READ_HEAD_TIMEOUT_S = env_float("READ_HEAD_TIMEOUT_S", 20.0)
    READ_HEAD_MAX_S = env_float("READ_HEAD_MAX_S", 40.0)
    READ_BODY_TIMEOUT_S = env_float("READ_BODY_TIMEOUT_S", 20.0)
    READ_BODY_MAX_S = env_float("READ_BODY_MAX_S", 60.0)
    READ_MIN_RATE_BPS = env_float("READ_MIN_RATE_BPS", 500.0)
    # A head past this is a 431 (nginx's large_client_header_buffers hold 4 x 8 KiB).
    READ_MAX_HEAD_BYTES = env_int("READ_MAX_HEAD_BYTES", 32 * 1024)
    # The largest body read (a 413 beyond): by default a POST /is_prime of PRIME_MAX_ITEMS
    # numbers of PRIME_MAX_DIGITS digits, quoted, about 1 MB. No route takes more.
    MAX_BODY_BYTES = env_int("MAX_BODY_BYTES", PRIME_MAX_ITEMS * (PRIME_MAX_DIGITS + 4) + 64)
    # What a worker holds for its clients (issue 23, item 3): request bytes read and not yet
    # handed to a thread (past it, the largest incomplete request is refused: 503), and answer
    # bytes a client has not taken (past it, the connections holding the most are closed).
    MAX_BUFFERED_BYTES = env_int("MAX_BUFFERED_BYTES", 32 * 1024 * 1024)
    MAX_UNSENT_BYTES = env_int("MAX_UNSENT_BYTES", 32 * 1024 * 1024)
    # An answer the client takes no byte of for this long is dropped with its connection
    # (nginx's send_timeout, 60 s by default; an answer here is a few KB).
    SEND_TIMEOUT_S = env_float("SEND_TIMEOUT_S", 10.0)


class ToolConfig:
    """The settings of the tests, benchmarks and dev tools, not of the service."""

    # The PostgreSQL this machine runs (and CI's): make cluster's shared database, and the tests'.
    POSTGRES_URL = env_str("TEST_POSTGRES_URL",
                           "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    # Under CI=true a test whose real part (PostgreSQL, Chromium, ...) is missing fails, not skips.
    CI = env_bool("CI", False)
    # The length of each load run of make bench, in seconds.
    BENCH_SECONDS = env_int("BENCH_SECONDS", 8)


def settings(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every setting of Config, with `overrides` (a dict) on top and the derived ones filled in:
    what create_app puts in app.config, and what code outside a request reads."""
    values = {name: value for name, value in vars(Config).items() if name.isupper()}
    values.update(overrides or {})
    return derive(values)


def derive(settings: S) -> S:
    """Fill in, in place, the settings whose value follows from others: the pool sizes left at 0
    and Flask's MAX_CONTENT_LENGTH; return `settings` (a dict, or app.config)."""
    threads = settings["WEB_THREADS"]
    settings["THREAD_POOL_SIZE"] = settings["THREAD_POOL_SIZE"] or threads * (GET_SOURCES - 1)
    settings["DB_POOL_SIZE"] = settings["DB_POOL_SIZE"] or threads
    settings["MAX_CONTENT_LENGTH"] = settings["MAX_BODY_BYTES"]
    return settings
