"""The work that `make bench`, the locustfile and the tests send, so that all measure the same."""
from concurrent.futures import ProcessPoolExecutor

# The seed's CPU-bound benchmark (PRIMES = [112272535095293] * 100), as one GET.
SEED_NUMBER = "112272535095293"
SEED_WORKLOAD = "/is_prime/" + ",".join([SEED_NUMBER] * 100)


def big_primes(digits, count):
    """The first prime after 10**(digits-1) * k for k = 1..count, as decimal strings: numbers
    whose checks are CPU-heavy (finding each takes ~1 s at 900 digits, so on every core)."""
    starts = [10 ** (digits - 1) * k for k in range(1, count + 1)]
    with ProcessPoolExecutor() as pool:
        return [str(prime) for prime in pool.map(_next_prime, starts)]


def _next_prime(n):
    import gmpy2

    return gmpy2.next_prime(n)
