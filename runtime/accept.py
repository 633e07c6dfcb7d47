"""The accept hold-back: a worker whose threads are all taken leaves new connections to the
others for a moment.

Workers share one listening socket and the quickest to wake wins each connection, so one worker
took most of the kept-alive connections, more than its threads, and those requests queued and
were shed while the other worker idled (docs/performance.md). A worker that holds
as many requests as its in-flight limit therefore stops accepting for ACCEPT_YIELD_S, leaving new
connections to the others, and then takes every connection still waiting. `until` is the whole
state (0 when not holding back), and three of gthread's methods consult it:

    accept                        busy: start a hold-back; after one: drain the backlog
    set_accept_enabled            gthread's loop re-enables accepting every turn: not before
                                  the hold-back ends
    wait_for_and_dispatch_events  gthread's loop waits up to 1 s for events; during a hold-back
                                  only until it ends, so a hold-back lasts ACCEPT_YIELD_S
"""
import enum

ACCEPT_YIELD_S = 0.01


class Accept(enum.Enum):
    """What a worker does when its listener is readable."""

    ONE = "accept one connection, as gthread does"
    HOLD_BACK = "stop accepting for ACCEPT_YIELD_S"
    DRAIN = "the hold-back has ended: take every connection waiting"


class HoldBack:
    """When a busy worker stops accepting, and until when."""

    def __init__(self, yield_s: float = ACCEPT_YIELD_S) -> None:
        self.yield_s = yield_s
        self.until = 0.0  # monotonic; 0.0 when not holding back

    def on_readable(self, now: float, busy: bool) -> Accept:
        """What to do with a readable listener: `busy` when this worker holds as much as it
        admits and another worker could take the connection."""
        if self.until:
            self.until = 0.0  # accepting was re-enabled: the hold-back has ended
            return Accept.DRAIN
        if busy:
            self.until = now + self.yield_s
            return Accept.HOLD_BACK
        return Accept.ONE

    def holds(self, now: float) -> bool:
        """Whether accepting must stay off now."""
        return now < self.until

    def bound(self, timeout: float, now: float) -> float:
        """gthread's wait for events, ending no later than the hold-back."""
        left = self.until - now
        return min(timeout, left) if left > 0 else timeout
