"""The sources that GET / reads and the prime checks of /is_prime, one module each.

A source has `read(deadline)`, which blocks (a request thread or a pool thread runs it), and may
have `read_async(deadline)`, a coroutine for the worker's event loop (runtime/loop_thread.py),
which must not block it.
"""
import asyncio
import time


def init_app(app, sources):
    """Give `app` its sources, by name, for get_sources."""
    app.extensions["sources"] = {source.name: source for source in sources}


def get_sources(app=None):
    """{name: source} of `app`, by default of the app handling this request."""
    # Imported here: the pool processes import services.primes, and so this package, and must
    # not load Flask (tests/test_pools.py).
    from flask import current_app

    return (app or current_app).extensions["sources"]


def simulate_latency(delay_s, deadline):
    """Sleep the configured extra latency of a source, but never past the request's deadline."""
    if delay_s <= 0:
        return
    time.sleep(_latency_left(delay_s, deadline))
    _check_latency(delay_s, deadline)


async def simulate_latency_async(delay_s, deadline):
    """simulate_latency, as a timer of the event loop instead of a sleeping thread."""
    if delay_s <= 0:
        return
    await asyncio.sleep(_latency_left(delay_s, deadline))
    _check_latency(delay_s, deadline)


def _latency_left(delay_s, deadline):
    return max(0.0, min(delay_s, deadline - time.monotonic()))


def _check_latency(delay_s, deadline):
    if time.monotonic() >= deadline:
        raise TimeoutError("the simulated latency outlasted the request deadline")


def public_failure(error):
    """What a client is told of a failed read: its kind, never an address, SQL or exception text
    (pools.py logs those, with the request id)."""
    if isinstance(error, TimeoutError):
        return "timeout: no answer within the deadline"
    if isinstance(error, OSError):  # ConnectionError, a missing file, a refused connection
        return "unavailable: the source could not be reached or read"
    return "failed: the source answered with an error"


def remaining(deadline):
    """Seconds left until `deadline`; raise TimeoutError when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request deadline passed before the read began")
    return left
