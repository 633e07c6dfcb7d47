"""A deployment of the service alone: a venv made from requirements.lock, nothing else, runs
gunicorn.conf.py and serves GET / (issue 25: one requirements file held the tests and the
benchmarks too, 572 MB)."""
import subprocess
import sys

import pytest
import requests

from dev.harness import ROOT, start_gunicorn

pytestmark = pytest.mark.slow
SERVICE_VENV_MB = 100


def test_a_venv_of_the_service_lock_alone_serves_get_slash(tmp_path, upstream):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    install = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--quiet",
                              "--require-hashes", "-r", ROOT / "requirements.lock"],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    size_mb = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file()) / 2**20
    service = start_gunicorn(upstream.url + "/", tmp_path, python=venv / "bin" / "python",
                             WEB_WORKERS=1, WEB_THREADS=8, PROCESS_POOL_SIZE=1)
    try:
        index = requests.get(service.url + "/", timeout=10)
        primes = requests.get(service.url + "/is_prime/1,2,3", timeout=10)
    finally:
        service.stop()
    assert index.status_code == 200, index.text
    assert index.json()["result_api"]["source"] == "upstream"
    assert primes.json() == {"1": False, "2": True, "3": True}
    print(f"\nthe service's venv: {size_mb:.0f} MB")
    assert size_mb <= SERVICE_VENV_MB
    # Nothing of the tests, benchmarks or Dask came along.
    listed = subprocess.run([venv / "bin" / "python", "-m", "pip", "list"], text=True,
                            capture_output=True, check=True).stdout.lower()
    assert not {"pytest", "locust", "matplotlib", "aiohttp", "distributed"} & set(
        line.split()[0] for line in listed.splitlines()[2:])
