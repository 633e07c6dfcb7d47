"""The API source: an HTTP GET to a remote JSON API with requests."""
import socket
import threading
from urllib.parse import urlsplit

import requests

from services import remaining


class ApiSource:
    """GETs one URL per read over a keep-alive connection of the calling thread."""

    name = "api"

    def __init__(self, url):
        self.url = url
        # requests.Session is not documented as thread-safe, so each pool thread keeps its own.
        self._local = threading.local()

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def read(self, deadline):
        """Return the API's JSON body; the timeout is what is left of the request's budget."""
        try:
            response = self._session().get(self.url, timeout=remaining(deadline))
        except requests.Timeout as exc:
            raise TimeoutError(f"no answer from {self.url} within the deadline") from exc
        response.raise_for_status()
        return response.json()

    def check(self, deadline):
        """The API's host accepts a TCP connection (a GET would wait out its latency)."""
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname, port), timeout=remaining(deadline)).close()
