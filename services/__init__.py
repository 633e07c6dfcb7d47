"""The sources that GET / reads and the prime checks of /is_prime, one module each."""
import time


def simulate_latency(delay_s, deadline):
    """Sleep the configured extra latency of a source, but never past the request's deadline."""
    if delay_s <= 0:
        return
    remaining = deadline - time.monotonic()
    time.sleep(max(0.0, min(delay_s, remaining)))
    if delay_s > remaining:
        raise TimeoutError("the simulated latency outlasted the request deadline")


def remaining(deadline):
    """Seconds left until `deadline`; raise TimeoutError when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request deadline passed before the read began")
    return left
