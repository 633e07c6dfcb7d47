"""make load: start the default deployment, run locust headless against it (locust.conf), stop
everything, and exit with locust's code (non-zero when a threshold was broken).

Extra arguments go to locust, e.g. `make load LOAD_ARGS="--users 120 --run-time 60s"`.
"""
import subprocess
import sys
import tempfile

from bench.harness import ROOT, start_gunicorn, start_upstream
from config import Config


def main(argv=None):
    """Run one bounded load run against 127.0.0.1; return locust's exit code."""
    (ROOT / "reports").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as data_dir:
        upstream = start_upstream(delay_ms=Config.API_DELAY_MS)
        try:
            service = start_gunicorn(upstream.url + "/", data_dir, LOG_LEVEL="warning")
            try:
                command = [sys.executable, "-m", "locust", "--config", "locust.conf",
                           "--host", service.url, *(sys.argv[1:] if argv is None else argv)]
                return subprocess.run(command, cwd=ROOT, timeout=600).returncode
            finally:
                service.stop()
        finally:
            upstream.stop()


if __name__ == "__main__":
    sys.exit(main())
