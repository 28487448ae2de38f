# container-agent: `make run` starts the agent from a local .venv; `make test` installs
# everything the tests need (system packages included, as root) and runs them.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python

.PHONY: run test test-v2 lint system-deps bench dashboards clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/agentd

system-deps:
	bash tests/setup/install-system.sh

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check --no-cache agent collectors dashboards tests
	$(VENV)/bin/mypy
	$(VPY) -m dashboards --check

$(VENV)/.installed-dashboards: pyproject.toml $(VENV)/.installed
	$(VPY) -m pip install -q -e '.[dashboards]'
	touch $@

dashboards: $(VENV)/.installed-dashboards
	$(VPY) -m dashboards

# CA_STRICT_SKIPS=1: a skip outside tests/skip_allowlist.py fails the run.
test: system-deps $(VENV)/.installed-test lint
	CA_STRICT_SKIPS=1 $(VPY) -m pytest -p no:cacheprovider tests

# The pure cgroup v2 tests (tests/test_v2_*.py) in a Debian 12 guest with systemd, under qemu.
test-v2: system-deps $(VENV)/.installed-test
	PYTHON=$(VPY) bash tests/v2host/run.sh

bench: $(VENV)/.installed-test
	for b in tests/bench/bench_*.py; do $(VPY) $$b || exit 1; done

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
