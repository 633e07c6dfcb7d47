"""The upstream API server: its delay, the per-request override and bad input."""
import time

import requests

from dev.harness import start_upstream


def test_upstream_waits_its_configured_delay():
    service = start_upstream(delay_ms=150)
    try:
        start = time.monotonic()
        body = requests.get(service.url + "/", timeout=5).json()
        assert time.monotonic() - start >= 0.15
        assert body["delay_ms"] == 150
    finally:
        assert service.stop() == 0


def test_delay_can_be_overridden_per_request(upstream):
    start = time.monotonic()
    body = requests.get(upstream.url + "/?delay_ms=120", timeout=5).json()
    assert time.monotonic() - start >= 0.12 and body["delay_ms"] == 120


def test_bad_delay_is_a_400(upstream):
    assert requests.get(upstream.url + "/?delay_ms=soon", timeout=5).status_code == 400


def test_serves_many_concurrent_waits_at_once(upstream):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(100) as pool:
        start = time.monotonic()
        statuses = list(pool.map(
            lambda _: requests.get(upstream.url + "/?delay_ms=300", timeout=5).status_code, range(100)))
    assert statuses == [200] * 100
    assert time.monotonic() - start < 1.5
