# Two commands for a new user: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-requirements

.PHONY: install lock run lint test bench profile load cluster clean

install: $(STAMP)

# The service, Dask and the tools of the tests and benchmarks, each package pinned with its
# hashes (requirements-dev.lock); re-installed whenever the lock changes. A deployment of the
# service alone: pip install --require-hashes -r requirements.lock.
$(STAMP): requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	touch $@

# Write the locks anew from requirements.txt, requirements-dask.txt and requirements-dev.txt
# (pip-tools' pip-compile, in a venv of its own).
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet pip-tools==7.7.0
	for name in requirements requirements-dask requirements-dev; do \
	  .venv-lock/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	    --no-emit-index-url --no-emit-find-links -o $$name.lock $$name.txt || exit 1; \
	done

# gunicorn on 127.0.0.1:$(PORT) in the foreground, with the upstream API it starts beside it.
run: $(STAMP)
	exec $(BIN)/gunicorn -c dev/run.conf.py

# The linter and the type checker (settings: pyproject.toml), in seconds; make test runs them first.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Side-by-side benchmarks against the seed's apps: reports/bench.md and reports/bench.png.
bench: $(STAMP)
	$(BIN)/python -m bench.bench $(BENCH_ARGS)

# Where one GET / spends its CPU (py-spy), and what a request in flight costs: reports/profile.md
# and reports/profile.svg.
profile: $(STAMP)
	$(BIN)/python -m bench.profile $(PROFILE_ARGS)

# A bounded headless locust run against a deployment it starts: reports/load.html and CSVs.
load: $(STAMP)
	$(BIN)/python -m bench.load $(LOAD_ARGS)

# Several gunicorn hosts behind HAProxy, PostgreSQL, Dask: deploy/cluster.py. Ctrl-C stops all.
cluster: $(STAMP)
	exec $(BIN)/python -m deploy.cluster $(CLUSTER_ARGS)

clean:
	rm -rf $(VENV) .venv-lock instance reports .pytest_cache .mypy_cache .ruff_cache
