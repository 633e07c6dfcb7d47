"""Request paths that `make bench` and the locustfile both send, so both measure the same work."""

# The seed's CPU-bound benchmark (PRIMES = [112272535095293] * 100), as one GET.
SEED_NUMBER = "112272535095293"
SEED_WORKLOAD = "/is_prime/" + ",".join([SEED_NUMBER] * 100)
