# Two commands for a new user: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-requirements

.PHONY: install run test bench profile load cluster clean

install: $(STAMP)

# Re-install whenever requirements.txt changes.
$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

# gunicorn on 127.0.0.1:$(PORT) in the foreground, with the upstream API it starts beside it.
run: $(STAMP)
	exec $(BIN)/gunicorn -c dev/run.conf.py

test: $(STAMP)
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
	rm -rf $(VENV) instance reports .pytest_cache
