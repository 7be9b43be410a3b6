# Two commands from a fresh clone: `make run` and `make test`. Both create the environment first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
# requirements.lock: what the pipeline runs on (make run, the worker image); requirements-dev.lock: the test
# and development tools on top (make test). Both resolve for Linux and macOS (make lock).
RUNTIME_LOCKS := requirements.lock
DEV_LOCKS := requirements.lock requirements-dev.lock
# The installer: uv (a registry package, pinned here) where it installs, else pip; INSTALLER=pip forces pip.
# uv reads pip's configured extra indexes and find-links, so both installers see the same wheels, and compiles
# the bytecode as pip does (without it no .pyc was ever written there: every stage and test process took ~10 s
# longer to import torch, Prefect and DVC).
INSTALLER ?= uv
UV_VERSION := 0.13.9
PIP := $(BIN)/python -m pip --disable-pip-version-check
UV_ENV = UV_NO_CONFIG=1 UV_INDEX_STRATEGY=unsafe-best-match \
  UV_EXTRA_INDEX_URL="$$($(PIP) config get global.extra-index-url 2>/dev/null)" \
  UV_FIND_LINKS="$$($(PIP) config get global.find-links 2>/dev/null | tr ' ' ',')"

.PHONY: setup setup-dev run lint test test-fast bench ui deploy worker drift-ui lock clean-env

# $(call environment,<lock files>): install the locks into .venv unless the stamp says they are in. The stamp
# holds one hash per installed set (of the lock files and pyproject.toml): a second call with unchanged locks
# does nothing, and the dev set satisfies the runtime one.
define environment
	@hash=$$(cat $(1) pyproject.toml | sha256sum | cut -c1-16); \
	if [ -f $(STAMP) ] && grep -qx "$$hash" $(STAMP); then \
	  echo "setup: environment up to date ($(VENV), $(1))"; \
	else \
	  set -e; start=$$(date +%s); \
	  command -v $(PYTHON) >/dev/null || { echo "setup: $(PYTHON) not found; Python 3.11 is required" >&2; exit 1; }; \
	  [ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV); \
	  used=pip; \
	  if [ "$(INSTALLER)" = uv ] && $(PIP) install --quiet uv==$(UV_VERSION) >/dev/null 2>&1; then \
	    if $(UV_ENV) $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $(addprefix -r ,$(1)); \
	    then used=uv; \
	    else echo "setup: uv failed; installing with pip" >&2; fi; \
	  fi; \
	  if [ $$used = pip ]; then \
	    $(PIP) install --quiet $(addprefix -r ,$(1)) 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); \
	  fi; \
	  $(PIP) check >/dev/null || { $(PIP) check; exit 1; }; \
	  $(PIP) install --quiet --no-deps --no-build-isolation -e . ; \
	  { [ "$(1)" = "$(DEV_LOCKS)" ] && cat $(RUNTIME_LOCKS) pyproject.toml | sha256sum | cut -c1-16; echo "$$hash"; } > $(STAMP); \
	  echo "setup: environment ready with $$used in $$(( $$(date +%s) - start ))s; in a shell: source $(VENV)/bin/activate"; \
	fi
endef

setup:
	$(call environment,$(RUNTIME_LOCKS))

setup-dev:
	$(call environment,$(DEV_LOCKS))

# PREFECT_HOME keeps Prefect's local state (SQLite) in the project, not in ~/.prefect; runs are offline,
# so the server's telemetry is off (it would only log failed connections)
PREFECT_ENV = PREFECT_HOME=$(CURDIR)/.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1

# PROFILE=gpu applies params.gpu.yaml over params.yaml for this run (committed with the run's params)
run: setup
	$(PREFECT_ENV) $(BIN)/python -m flows.retrain $(if $(PROFILE),--profile $(PROFILE))

# ruff's rules and line length: pyproject.toml [tool.ruff]
lint: setup-dev
	$(BIN)/ruff check pipeline flows tests bench

# the whole suite, as CI runs it, in TEST_WORKERS processes (pytest-xdist; each test file stays on one worker, so
# its module-scoped chain or server is built once; tests/conftest.py gives each worker one compute thread and
# starts the files of slow tests first); three on CI's two cores: the tests wait on servers, polls and subprocesses,
# which left the cores 84-87% busy with two workers (docs/development.md has the figures);
# TEST_WORKERS=0 runs it in this process
TEST_WORKERS ?= 3
PYTEST = $(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile \
  --no-loadscope-reorder)

test: lint
	$(PYTEST)

# the edit loop: the linter and every test not marked `slow` (no server started, no network trained, no
# stage run in a subprocess); `make test` before a commit
test-fast: lint
	$(PYTEST) -m "not slow"

bench: setup-dev
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

# Re-resolve the locks from requirements.in and requirements-dev.in with uv (needs the package registry):
# one lock for Linux and macOS (markers keep the CUDA wheels to Linux); the existing pins are kept where
# they still fit, so only what the .in files changed moves.
lock:
	$(PIP) install --quiet uv==$(UV_VERSION)
	UV_NO_CONFIG=1 $(BIN)/uv pip compile requirements.in --universal --python-version 3.11 --no-header \
	  --annotation-style line --quiet -o requirements.lock
	UV_NO_CONFIG=1 $(BIN)/uv pip compile requirements-dev.in -c requirements.lock --universal --python-version 3.11 \
	  --no-header --annotation-style line --quiet -o requirements-dev.lock

clean-env:
	rm -rf $(VENV)
