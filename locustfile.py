"""Load for the service: `make load` runs it headless (settings in locust.conf); `locust` alone
gives the web UI; `--master` / `--worker` spread it over processes.

Every response is checked (right keys, right answers); when the run ends, the failure ratio and
the p95/p99 response times are held against thresholds, which set the exit code.
"""
import logging

from locust import HttpUser, between, events, task
from locust.runners import WorkerRunner

from bench.workloads import SEED_NUMBER, SEED_WORKLOAD

SOURCES = ("result_file", "result_db", "result_api")
SMALL = "/is_prime/1,2,3,4"
SMALL_ANSWER = {"1": False, "2": True, "3": True, "4": False}
# Mersenne primes 2**p - 1 for p = 1279, 2203, 2281 (386 to 687 digits), and 2**1279 + 1,
# which 3 divides: known answers, so no oracle is needed here.
BIG_NUMBERS = [2**1279 - 1, 2**2203 - 1, 2**2281 - 1, 2**1279 + 1]
BIG = "/is_prime/" + ",".join(map(str, BIG_NUMBERS))
BIG_ANSWER = [True, True, True, False]


@events.init_command_line_parser.add_listener
def add_thresholds(parser):
    """Thresholds of a passing run (only here: locust.conf sets none), each settable on the
    command line."""
    parser.add_argument("--max-fail-ratio", type=float, default=0.01,
                        help="highest share of failed requests")
    parser.add_argument("--max-p95-ms", type=float, default=800, help="highest p95 of all requests")
    parser.add_argument("--max-p99-ms", type=float, default=1500, help="highest p99 of all requests")


@events.quitting.add_listener
def check_thresholds(environment, **_kwargs):
    """Fail the run (exit code 1) if it broke a threshold; the master or a local run decides."""
    if isinstance(environment.runner, WorkerRunner):
        return
    total, options = environment.stats.total, environment.parsed_options
    problems = []
    if total.num_requests == 0:
        problems.append("no requests were made")
    if total.fail_ratio > options.max_fail_ratio:
        problems.append(f"failure ratio {total.fail_ratio:.3f} > {options.max_fail_ratio}")
    for share, limit in ((0.95, options.max_p95_ms), (0.99, options.max_p99_ms)):
        measured = total.get_response_time_percentile(share)
        if measured > limit:
            problems.append(f"p{share * 100:.0f} {measured:.0f} ms > {limit:.0f} ms")
    for problem in problems:
        logging.error("threshold broken: %s", problem)
    if problems:
        environment.process_exit_code = 1


class ReadUser(HttpUser):
    """Reads GET /, mostly concurrently, sometimes in the sequential baseline mode."""

    weight = 3
    wait_time = between(0.5, 1.5)

    @task(4)
    def concurrent(self):
        """GET / must answer 200 with all three results."""
        self._read("/", "/")

    @task(1)
    def sequential(self):
        """GET /?mode=sequential must answer the same."""
        self._read("/?mode=sequential", "/?mode=sequential")

    def _read(self, path, name):
        with self.client.get(path, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
            elif any(response.json().get(key) is None for key in SOURCES):
                response.failure(f"missing results: {response.text[:200]}")


class PrimeUser(HttpUser):
    """Checks small numbers, the seed's workload and big numbers."""

    weight = 1
    wait_time = between(0.2, 0.8)

    @task(5)
    def small(self):
        """Four small numbers, checked inline."""
        self._check(SMALL, "/is_prime/[small]", lambda body: body == SMALL_ANSWER)

    @task(2)
    def seed_workload(self):
        """The seed's 100 x 112272535095293, which collapse into one prime."""
        self._check(SEED_WORKLOAD, "/is_prime/[seed workload]",
                    lambda body: body == {SEED_NUMBER: True})

    @task(1)
    def big(self):
        """Four numbers of 386 to 687 digits, checked on the process pool."""
        self._check(BIG, "/is_prime/[big]", lambda body: list(body.values()) == BIG_ANSWER)

    def _check(self, path, name, is_right):
        with self.client.get(path, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
            elif not is_right(response.json()):
                response.failure(f"wrong answer: {response.text[:200]}")
