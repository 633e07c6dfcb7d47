"""Primality with GMP: parsing and validating requests, the test itself, and its cost estimate."""
from __future__ import annotations

import functools
import heapq
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import gmpy2

# Dask ships this module by value (runtime/dask_executor.py): a worker must need gmpy2 alone, so
# the hints' types are imported for the checker only, and annotations stay strings.
if TYPE_CHECKING:
    from runtime.clock import WallClock

# Miller-Rabin with the first 13 prime bases is exact below this bound (Sorenson and Webster,
# "Strong pseudoprimes to twelve prime bases", Math. Comp. 2017:
# psi_13 = 3317044064679887385961981).
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
_MR_EXACT_BELOW = 3317044064679887385961981
_SMALL_PRIMES = frozenset(_MR_BASES)
_INTEGER = re.compile(r"[+-]?[0-9]+")


class InputError(ValueError):
    """A request the service refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def is_prime(n: int) -> bool:
    """Return True if n is prime: exact below 3.3e24, strong BPSW above."""
    n = gmpy2.mpz(n)
    if n < 2:
        return False
    if n in _SMALL_PRIMES:
        return True
    if n % 2 == 0:
        return False
    if n < _MR_EXACT_BELOW:
        return all(gmpy2.is_strong_prp(n, base) for base in _MR_BASES)
    # BPSW has no known counterexample; none exists below 2**64 (Feitsma and Galway).
    return gmpy2.is_strong_bpsw_prp(n)


def check_batch(numbers: Sequence[int], stop_at: WallClock | None = None) -> list[bool]:
    """Return [is_prime(n) for n in numbers], the unit of work of a pool process; raise
    TimeoutError, between two numbers, once time.time() is past `stop_at`."""
    results: list[bool] = []
    for n in numbers:
        # Wall-clock time, not monotonic: a Dask worker on another host has its own monotonic
        # clock. The longest a check can run late is one number's test.
        if stop_at is not None and time.time() > stop_at:
            raise TimeoutError(f"the prime check passed its deadline after {len(results)} of "
                               f"{len(numbers)} numbers")
        results.append(is_prime(n))
    return results


def check_chunk(chunk: tuple[Sequence[int], WallClock | None]) -> list[bool]:
    """check_batch(*chunk) for a (numbers, stop_at) pair: a plain function of this module, which
    Dask ships by value (a functools.partial would be pickled by reference)."""
    return check_batch(*chunk)


# Fitted to gmpy2 / GMP timings of primes (docs/performance.md); calibrate() rescales it to the
# machine it runs on.
_scale = 1.0
# A composite without small factors fails the first strong-probable-prime round: a share of a
# prime's time that grows with its digits (fitted: docs/performance.md). A batch's least cost
# counts every number as a composite.
def _composite_share(digits: int) -> float:
    return 0.1 * (digits / 100) ** 0.3


_CALIBRATION_DIGITS = 300
_SCALE_BOUNDS = (0.25, 4.0)


def cost_us(n: int) -> float:
    """Estimate the CPU time of is_prime(n) in microseconds (a prime's; composites are cheaper)."""
    return _cost_of_digits_us(gmpy2.num_digits(n, 10))


def least_cost_s(numbers: Iterable[int]) -> float:
    """The CPU seconds a batch takes at least, if none of its numbers is prime."""
    return _least_s(gmpy2.num_digits(n, 10) for n in numbers)


def _cost_of_digits_us(digits: int) -> float:
    return (20 + digits**2.2 / 40) * _scale


def _least_s(digit_counts: Iterable[int]) -> float:
    return sum(_cost_of_digits_us(d) * _composite_share(d) for d in digit_counts) / 1e6


def calibrate(rounds: int = 3) -> float:
    """Rescale cost_us to this machine: time a 300-digit prime's test (a few ms) and return
    the new scale (bounded, so one preempted round cannot make it absurd)."""
    global _scale
    prime = _calibration_prime()
    fitted = _cost_of_digits_us(_CALIBRATION_DIGITS) / _scale
    best = min(_time_us(is_prime, prime) for _ in range(rounds))
    _scale = min(max(best / fitted, _SCALE_BOUNDS[0]), _SCALE_BOUNDS[1])
    return _scale


@functools.cache
def _calibration_prime() -> int:
    return gmpy2.next_prime(gmpy2.mpz(10) ** (_CALIBRATION_DIGITS - 1))  # found once


def _time_us(fn: Callable[[int], object], arg: int) -> float:
    start = time.perf_counter()
    fn(arg)
    return (time.perf_counter() - start) * 1e6


def parse_items(items: Sequence[object], max_items: int, max_digits: int,
                max_cpu_s: float = math.inf) -> dict[str, int]:
    """Turn request items into distinct integers keyed by canonical decimal, in request order.

    InputError (413) when their least cost is over `max_cpu_s` seconds of CPU, checked before
    any item is converted: refusing a flood of the largest batches costs little."""
    if len(items) > max_items:
        raise InputError(f"too many numbers: {len(items)} > {max_items}; send fewer", 413)
    digit_counts = {}  # distinct items, by their text
    for position, item in enumerate(items, start=1):
        if not isinstance(item, str) or not _INTEGER.fullmatch(item):
            raise InputError(
                f"item {position} ({_preview(item)}) is not an integer: "
                "expected an optional sign and ASCII digits 0-9"
            )
        digits = len(item.lstrip("+-").lstrip("0")) or 1
        if digits > max_digits:
            raise InputError(f"item {position} has {digits} digits; the limit is {max_digits}", 413)
        digit_counts[item] = digits
    if not digit_counts:
        raise InputError("no numbers given")
    least_s = _least_s(digit_counts.values())
    if least_s > max_cpu_s:
        raise InputError(f"the batch needs at least {least_s:.1f} s of CPU, more than the "
                         f"{max_cpu_s:.1f} s its cores can give it by the deadline; send fewer "
                         "or smaller numbers", 413)
    numbers: dict[str, int] = {}
    for item in digit_counts:
        # gmpy2 parses without CPython's 4300-digit int limit and canonicalises 007 and -0.
        number = gmpy2.mpz(item)
        numbers.setdefault(number.digits(10), number)
    return numbers


def _preview(item: object, width: int = 20) -> str:
    """Show a bad item in an error message without echoing a huge value back (nor taking the
    repr of a deeply nested list, which may exhaust the stack)."""
    if isinstance(item, (list, dict)):
        return "a list" if isinstance(item, list) else "an object"
    text = repr(item)
    return text if len(text) <= width else text[:width] + "..."


def split_by_cost(numbers: Sequence[int], parts: int) -> list[list[int]]:
    """Split positions 0..len(numbers)-1 into up to `parts` groups of about equal estimated cost."""
    costs = [cost_us(n) for n in numbers]
    groups: list[list[int]] = [[] for _ in range(max(1, min(parts, len(numbers))))]
    loads = [(0.0, index) for index in range(len(groups))]  # a heap: the lightest on top
    # Longest first onto the least-loaded group: within 4/3 of the best split (Graham's LPT rule).
    for position in sorted(range(len(numbers)), key=costs.__getitem__, reverse=True):
        load, lightest = loads[0]
        groups[lightest].append(position)
        heapq.heapreplace(loads, (load + costs[position], lightest))
    return groups
