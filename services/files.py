"""The file source: a text file on disk."""
import os
from pathlib import Path

from runtime.clock import Monotonic
from services import simulate_latency, simulate_latency_async


class FileSource:
    """Reads one text file, after the configured simulated latency."""

    name = "file"

    def __init__(self, path: str | os.PathLike[str], delay_s: float = 0.0) -> None:
        self.path = Path(path)
        self.delay_s = delay_s

    def read(self, deadline: Monotonic) -> str:
        """Return the file's text, stripped of surrounding white space."""
        simulate_latency(self.delay_s, deadline)
        return self._text()

    async def read_async(self, deadline: Monotonic) -> str:
        """read() on the event loop: a small local file is read from the page cache in
        microseconds, so the read itself runs on the loop too."""
        await simulate_latency_async(self.delay_s, deadline)
        return self._text()

    def _text(self) -> str:
        return self.path.read_text(encoding="utf-8").strip()

    def check(self, deadline: Monotonic) -> None:
        """The file exists and this process may read it."""
        if not os.access(self.path, os.R_OK):
            raise FileNotFoundError(f"cannot read {self.path}")
