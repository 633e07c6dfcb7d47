"""The sources that GET / reads and the prime checks of /is_prime, one module each.

A source has `read(deadline)`, which blocks (a request thread or a pool thread runs it), and may
have `read_async(deadline)`, a coroutine for the worker's event loop (runtime/loop_thread.py),
which must not block it.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from runtime.clock import Monotonic

if TYPE_CHECKING:
    from flask import Flask


class Source(Protocol):
    """A source GET / reads (files.py, db.py, api.py); it may have read_async too."""

    name: str

    def read(self, deadline: Monotonic) -> Any:
        """What GET / shows of it, read by `deadline`."""

    def check(self, deadline: Monotonic) -> None:
        """Raise if it cannot be read (GET /readyz)."""

def init_app(app: Flask, sources: Iterable[Source]) -> None:
    """Give `app` its sources, by name, for get_sources."""
    app.extensions["sources"] = {source.name: source for source in sources}


def get_sources(app: Flask | None = None) -> dict[str, Source]:
    """{name: source} of `app`, by default of the app handling this request."""
    # Imported here: the pool processes import services.primes, and so this package, and must
    # not load Flask (tests/test_pools.py).
    from flask import current_app

    return (app or current_app).extensions["sources"]


def simulate_latency(delay_s: float, deadline: Monotonic) -> None:
    """Sleep the configured extra latency of a source, but never past the request's deadline."""
    if delay_s <= 0:
        return
    time.sleep(_latency_left(delay_s, deadline))
    _check_latency(delay_s, deadline)


async def simulate_latency_async(delay_s: float, deadline: Monotonic) -> None:
    """simulate_latency, as a timer of the event loop instead of a sleeping thread."""
    if delay_s <= 0:
        return
    await asyncio.sleep(_latency_left(delay_s, deadline))
    _check_latency(delay_s, deadline)


def _latency_left(delay_s: float, deadline: Monotonic) -> float:
    return max(0.0, min(delay_s, deadline - time.monotonic()))


def _check_latency(delay_s: float, deadline: Monotonic) -> None:
    if time.monotonic() >= deadline:
        raise TimeoutError("the simulated latency outlasted the request deadline")


def public_failure(error: BaseException) -> str:
    """What a client is told of a failed read: its kind, never an address, SQL or exception text
    (pools.py logs those, with the request id)."""
    if isinstance(error, TimeoutError):
        return "timeout: no answer within the deadline"
    if isinstance(error, OSError):  # ConnectionError, a missing file, a refused connection
        return "unavailable: the source could not be reached or read"
    return "failed: the source answered with an error"


def remaining(deadline: Monotonic) -> float:
    """Seconds left until `deadline`; raise TimeoutError when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request deadline passed before the read began")
    return left
