"""The API source: an HTTP GET to a remote JSON API with requests."""
import threading

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
        response = self._session().get(self.url, timeout=remaining(deadline))
        response.raise_for_status()
        return response.json()
