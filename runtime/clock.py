"""The two clocks a time can be on, as distinct types: a deadline within this process is on the
monotonic clock, a stop time sent to another process or host on the wall clock (issue 26).

mypy keeps them apart: a Monotonic passed where a WallClock is expected is an error, and each
crossing goes through wall_clock_of.
"""
import time
from typing import NewType

# time.monotonic(): never jumps, but means nothing outside this process (nor across a fork's
# children on another host, as Dask's workers are).
Monotonic = NewType("Monotonic", float)
# time.time(): the same on every process and host that keeps its clock in time (NTP).
WallClock = NewType("WallClock", float)


def monotonic() -> Monotonic:
    """Now, on the monotonic clock."""
    return Monotonic(time.monotonic())


def wall_clock_of(deadline: Monotonic) -> WallClock:
    """The wall-clock time at which `deadline` falls."""
    return WallClock(time.time() + (deadline - time.monotonic()))
