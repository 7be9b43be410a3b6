# Two commands from a fresh clone: `make run` and `make test`. Both create the environment first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
# The stamp holds the hash of everything that decides the environment: a second `make setup`
# with an unchanged lock file does nothing.
SETUP_HASH = $(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)

.PHONY: setup run test bench ui deploy worker drift-ui lock clean-env

setup:
	@if [ -f $(STAMP) ] && [ "$$(cat $(STAMP))" = "$(SETUP_HASH)" ]; then \
	  echo "setup: environment up to date ($(VENV), lock $(SETUP_HASH))"; \
	else \
	  set -e; start=$$(date +%s); \
	  command -v $(PYTHON) >/dev/null || { echo "setup: $(PYTHON) not found; Python 3.11 is required" >&2; exit 1; }; \
	  [ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV); \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true; \
	  $(BIN)/python -m pip check >/dev/null || { $(BIN)/python -m pip check; exit 1; }; \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . ; \
	  echo "$(SETUP_HASH)" > $(STAMP); \
	  echo "setup: environment ready in $$(( $$(date +%s) - start ))s"; \
	fi

# PREFECT_HOME keeps Prefect's local state (SQLite) in the project, not in ~/.prefect; runs are offline,
# so the server's telemetry is off (it would only log failed connections)
PREFECT_ENV = PREFECT_HOME=$(CURDIR)/.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1

# PROFILE=gpu applies params.gpu.yaml over params.yaml for this run (committed with the run's params)
run: setup
	$(PREFECT_ENV) $(BIN)/python -m flows.retrain $(if $(PROFILE),--profile $(PROFILE))

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m bench

# a local server with the deployments served from this terminal (SQLite; DATABASE_URL=postgresql+asyncpg://...
# puts the server on PostgreSQL) and a web server for the reports on :8080
ui: setup
	$(PREFECT_ENV) $(BIN)/python -m flows.deploy --start-server $(if $(DATABASE_URL),--database-url '$(DATABASE_URL)')

# Unattended: register the deployments on the work pool of the server in PREFECT_API_URL (params
# orchestrate.work_pool / work_pool_type), and run a worker on that pool; no foreground `serve`.
PREFECT_API_URL ?= http://127.0.0.1:4200/api
deploy: setup
	$(PREFECT_ENV) PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/python -m flows.deploy --register

worker: setup
	$(PREFECT_ENV) PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/python -m flows.deploy --worker

drift-ui: setup
	$(BIN)/python -m pipeline.cli drift-ui

# Re-resolve the lock from requirements.in (needs the package registry).
lock:
	rm -rf /tmp/tlops-lock-venv && $(PYTHON) -m venv /tmp/tlops-lock-venv
	/tmp/tlops-lock-venv/bin/pip install --quiet -r requirements.in
	/tmp/tlops-lock-venv/bin/pip freeze --exclude-editable | sort -f > requirements.lock

clean-env:
	rm -rf $(VENV)
