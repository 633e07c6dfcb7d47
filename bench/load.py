"""make load: start the default deployment, run locust headless against it (locust.conf), stop
everything, and exit with locust's code (non-zero when a threshold was broken).

Extra arguments go to locust, e.g. `make load LOAD_ARGS="--users 120 --run-time 60s"`.
"""
import subprocess
import sys
import tempfile

from dev.harness import REPORTS, ROOT, deployment


def main(argv=None):
    """Run one bounded load run against 127.0.0.1; return locust's exit code."""
    REPORTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as data_dir:
        with deployment(data_dir, LOG_LEVEL="warning") as (service, _upstream):
            command = [sys.executable, "-m", "locust", "--config", "locust.conf",
                       "--host", service.url, *(sys.argv[1:] if argv is None else argv)]
            return subprocess.run(command, cwd=ROOT, timeout=600).returncode


if __name__ == "__main__":
    sys.exit(main())
