"""The locustfile against real gunicorn: short bounded runs, local and distributed."""
import csv
import subprocess
import sys

import pytest

from dev.harness import ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.load]

# Long enough that every task, even the rarest (1 in 8 of the prime user's), is sure to run.
RUN = ["--users", "20", "--spawn-rate", "20", "--run-time", "6s"]


@pytest.fixture(scope="module")
def server(serve_module):
    """gunicorn without simulated latency, so a short run makes many requests."""
    return serve_module(FILE_DELAY_MS=0, DB_DELAY_MS=0)


def locust(host, tmp_path, *extra, timeout=60):
    """Run locust with locust.conf and its reports in tmp_path; return the completed process."""
    command = [sys.executable, "-m", "locust", "--config", "locust.conf", "--host", host,
               "--csv", str(tmp_path / "load"), "--html", str(tmp_path / "load.html"), *RUN, *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def stats(tmp_path):
    """{name: (requests, failures)} from the run's CSV."""
    with open(tmp_path / "load_stats.csv") as rows:
        return {row["Name"]: (int(row["Request Count"]), int(row["Failure Count"]))
                for row in csv.DictReader(rows)}


def test_a_run_against_a_healthy_service_passes(server, tmp_path):
    run = locust(server.url, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    by_name = stats(tmp_path)
    for name in ("/", "/?mode=sequential", "/is_prime/[small]", "/is_prime/[seed workload]",
                 "/is_prime/[big]"):
        assert by_name[name][0] > 0 and by_name[name][1] == 0, (name, by_name)
    assert (tmp_path / "load.html").stat().st_size > 0


def test_a_broken_threshold_sets_the_exit_code(server, tmp_path):
    run = locust(server.url, tmp_path, "--max-p99-ms", "0")
    assert run.returncode == 1 and "threshold broken: p99" in run.stderr


def test_wrong_answers_count_as_failures(tmp_path, upstream):
    # The upstream answers GET / with JSON that has none of the service's keys.
    run = locust(upstream.url, tmp_path)
    assert run.returncode == 1 and stats(tmp_path)["/"][1] > 0


def test_distributed_run(server, tmp_path):
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "locust", "--worker", "--master-port", str(port),
         "-f", "locustfile.py"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run = locust(server.url, tmp_path, "--master", "--master-bind-port", str(port),
                     "--expect-workers", "1", "--expect-workers-max-wait", "20")
    finally:
        try:
            worker.wait(timeout=15)  # the master tells its worker to quit when the run ends
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    assert run.returncode == 0, run.stderr[-2000:]
    assert stats(tmp_path)["Aggregated"][0] > 0
