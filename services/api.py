"""The API source: an HTTP GET to a remote JSON API, with urllib3 (the engine under requests)."""
import json
import socket
from urllib.parse import urlsplit

import urllib3

from services import PerProcess, remaining


class ApiSource:
    """GETs one URL per read over a pool of keep-alive connections shared by all threads."""

    name = "api"

    def __init__(self, url, connections=10):
        self.url = url
        # urllib3, not requests: requests re-reads proxy settings from the environment on every
        # call and costs 1.8 ms of CPU per GET here against urllib3's 0.6 ms (README: Performance).
        # A PoolManager is thread-safe, so one per process serves every thread.
        self._http = PerProcess(lambda: urllib3.PoolManager(maxsize=connections, retries=False))

    def read(self, deadline):
        """Return the API's JSON body; the timeout is what is left of the request's budget."""
        try:
            response = self._http.get().request("GET", self.url, timeout=remaining(deadline))
        except urllib3.exceptions.NewConnectionError as exc:  # a subclass of TimeoutError, but
            raise ConnectionError(f"cannot connect to {self.url}: {exc}") from exc  # refused
        except urllib3.exceptions.TimeoutError as exc:
            raise TimeoutError(f"no answer from {self.url} within the deadline") from exc
        if response.status >= 400:
            raise ConnectionError(f"{self.url} answered {response.status} {response.reason}")
        return json.loads(response.data)

    def check(self, deadline):
        """The API's host accepts a TCP connection (a GET would wait out its latency)."""
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname, port), timeout=remaining(deadline)).close()
