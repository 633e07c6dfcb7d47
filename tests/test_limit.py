"""The in-flight limit (runtime/limit.py): down when requests take longer than the target,
up when it was reached and they do not, unchanged when the clients held concurrency down."""
from runtime import limit

TARGET_S = 1.0


def window(adaptive, latency_s, in_flight, start):
    """Feed one window's worth of requests, all of `latency_s`; return the time after it."""
    for i in range(limit.WINDOW_SAMPLES):
        adaptive.sample(latency_s, in_flight, start + i * limit.WINDOW_S / limit.WINDOW_SAMPLES)
    end = start + limit.WINDOW_S
    adaptive.sample(latency_s, in_flight, end)  # the first sample past the window closes it
    return end


def test_requests_slower_than_the_target_shrink_the_limit_down_to_its_minimum():
    adaptive = limit.AdaptiveLimit(16, 512, TARGET_S)
    adaptive._window_start = now = 0.0
    now = window(adaptive, 1.5 * TARGET_S, 512, now)
    assert adaptive.current == int(512 * limit.DECREASE)
    for _ in range(100):
        now = window(adaptive, 1.5 * TARGET_S, 512, now)
    assert adaptive.current == 16


def test_a_limit_reached_by_requests_within_the_target_grows_up_to_its_maximum():
    adaptive = limit.AdaptiveLimit(16, 512, TARGET_S, initial=64)
    adaptive._window_start = now = 0.0
    now = window(adaptive, 0.3 * TARGET_S, 64, now)
    assert adaptive.current == 64 + 8  # + sqrt(64)
    for _ in range(100):
        now = window(adaptive, 0.3 * TARGET_S, adaptive.current, now)
    assert adaptive.current == 512


def test_a_limit_not_reached_does_not_grow():
    adaptive = limit.AdaptiveLimit(16, 512, TARGET_S, initial=64)
    adaptive._window_start = now = 0.0
    for _ in range(10):
        now = window(adaptive, 0.3 * TARGET_S, 10, now)
    assert adaptive.current == 64
