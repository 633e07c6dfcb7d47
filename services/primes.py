"""Primality with GMP: parsing and validating requests, the test itself, and its cost estimate."""
import re

import gmpy2

# Miller-Rabin with the first 13 prime bases is exact below this bound (Sorenson and Webster,
# "Strong pseudoprimes to twelve prime bases", Math. Comp. 2017: psi_13 = 3317044064679887385961981).
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
_MR_EXACT_BELOW = 3317044064679887385961981
_SMALL_PRIMES = frozenset(_MR_BASES)
_INTEGER = re.compile(r"[+-]?[0-9]+")


class InputError(ValueError):
    """A request the service refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def is_prime(n):
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


def check_batch(numbers):
    """Return [is_prime(n) for n in numbers]; the unit of work sent to a pool process."""
    return [is_prime(n) for n in numbers]


def cost_us(n):
    """Estimate the CPU time of is_prime(n) in microseconds (a prime's; composites are cheaper)."""
    digits = gmpy2.num_digits(n, 10)
    # Fitted to gmpy2 2.3 / GMP 6.3 timings here: 15 digits ~20 us, 100 ~640 us, 900 ~99 ms.
    return 20 + digits**2.2 / 40


def parse_items(items, max_items, max_digits):
    """Turn request items into distinct integers keyed by canonical decimal, in request order."""
    if len(items) > max_items:
        raise InputError(f"too many numbers: {len(items)} > {max_items}; send fewer", 413)
    numbers = {}
    for position, item in enumerate(items, start=1):
        if not isinstance(item, str) or not _INTEGER.fullmatch(item):
            raise InputError(
                f"item {position} ({_preview(item)}) is not an integer: "
                "expected an optional sign and ASCII digits 0-9"
            )
        digits = len(item.lstrip("+-").lstrip("0")) or 1
        if digits > max_digits:
            raise InputError(f"item {position} has {digits} digits; the limit is {max_digits}", 413)
        # gmpy2 parses without CPython's 4300-digit int limit and canonicalises 007 and -0.
        number = gmpy2.mpz(item)
        numbers.setdefault(number.digits(10), number)
    if not numbers:
        raise InputError("no numbers given")
    return numbers


def _preview(item, width=20):
    """Show a bad item in an error message without echoing a huge value back."""
    text = repr(item)
    return text if len(text) <= width else text[:width] + "..."


def split_by_cost(numbers, parts):
    """Split positions 0..len(numbers)-1 into up to `parts` groups of about equal estimated cost."""
    costs = [cost_us(n) for n in numbers]
    groups = [[] for _ in range(max(1, min(parts, len(numbers))))]
    loads = [0.0] * len(groups)
    # Longest first onto the least-loaded group: within 4/3 of the best split (Graham's LPT rule).
    for position in sorted(range(len(numbers)), key=costs.__getitem__, reverse=True):
        lightest = loads.index(min(loads))
        groups[lightest].append(position)
        loads[lightest] += costs[position]
    return groups
