"""Load for the service: `locust -H http://127.0.0.1:8000` (issue 4 adds thresholds and classes)."""
from locust import HttpUser, between, task

PRIME_CHECK = {"1": False, "2": True, "3": True, "4": False}
SOURCES = ("result_file", "result_db", "result_api")


class ServiceUser(HttpUser):
    """Reads / and checks small primes, validating every answer."""

    wait_time = between(0, 0.1)

    @task(3)
    def read_sources(self):
        """GET / must answer with all three results."""
        with self.client.get("/", name="/", catch_response=True) as response:
            body = response.json() if response.status_code == 200 else {}
            if any(body.get(key) is None for key in SOURCES):
                response.failure(f"{response.status_code}: missing results in {response.text[:200]}")

    @task(1)
    def check_primes(self):
        """GET /is_prime/1,2,3,4 must give the known answer."""
        with self.client.get("/is_prime/1,2,3,4", name="/is_prime/[small]",
                             catch_response=True) as response:
            if response.status_code != 200 or response.json() != PRIME_CHECK:
                response.failure(f"{response.status_code}: {response.text[:200]}")
