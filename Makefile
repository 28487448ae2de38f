# container-agent: `make run` starts the agent from a local .venv; `make test` installs
# everything the tests need (system packages included, as root) and runs them.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python

.PHONY: run test test-v2 lint system-deps bench dashboards clean bpf-optional
# The eBPF program that keeps a cgroup's CPU counter at its rmdir (collectors/final_cpu.py).
BPF_OBJ := collectors/bpf/final_cpu.bpf.o

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed bpf-optional
	$(VENV)/bin/agentd

$(BPF_OBJ): collectors/bpf/final_cpu.bpf.c collectors/bpf/build.sh
	bash collectors/bpf/build.sh

# `make run` without clang/bpftool: the agent runs without the rmdir probe (and says so).
bpf-optional:
	@if [ ! -e $(BPF_OBJ) ] || [ collectors/bpf/final_cpu.bpf.c -nt $(BPF_OBJ) ]; then \
		bash collectors/bpf/build.sh --optional; fi

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
test: system-deps $(VENV)/.installed-test $(BPF_OBJ) lint
	CA_STRICT_SKIPS=1 $(VPY) -m pytest -p no:cacheprovider tests

# The pure cgroup v2 tests (tests/test_v2_*.py) in a Debian 12 guest with systemd, under qemu.
test-v2: system-deps $(VENV)/.installed-test $(BPF_OBJ)
	PYTHON=$(VPY) bash tests/v2host/run.sh

bench: $(VENV)/.installed-test
	for b in tests/bench/bench_*.py; do $(VPY) $$b || exit 1; done

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache $(BPF_OBJ)
