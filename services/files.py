"""The file source: a text file on disk."""
import os
from pathlib import Path

from services import simulate_latency


class FileSource:
    """Reads one text file, after the configured simulated latency."""

    name = "file"

    def __init__(self, path, delay_s=0.0):
        self.path = Path(path)
        self.delay_s = delay_s

    def read(self, deadline):
        """Return the file's text, stripped of surrounding white space."""
        simulate_latency(self.delay_s, deadline)
        return self.path.read_text(encoding="utf-8").strip()

    def check(self, deadline):
        """The file exists and this process may read it."""
        if not os.access(self.path, os.R_OK):
            raise FileNotFoundError(f"cannot read {self.path}")
