# fedsec — the two commands of the README, and what they need.
#   make example   install (once) and run the breast-cancer example locally: `fedsec run examples/breast-cancer`
#   make test      install (once), build/start the test control plane, run the whole test suite
# Everything installs into .venv from uv.lock; torch and friends come from uv's cache outside the
# clone, so a second clone installs in seconds.

SHELL := bash
# uv, bootstrapped into the user's Python if the machine has none on PATH.
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
VENV_STAMP := .venv/.fedsec-synced
PYTEST_ARGS ?=

.PHONY: install example test
install: $(VENV_STAMP)
$(VENV_STAMP): pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
	@# bytecode compiled at install: imports stay fast where PYTHONDONTWRITEBYTECODE is set
	$(UV) sync --frozen --extra dev --compile-bytecode
	@touch $@

example: $(VENV_STAMP)
	$(UV) run --frozen fedsec run examples/breast-cancer

test: $(VENV_STAMP) cluster-build
	$(UV) run --frozen pytest $(PYTEST_ARGS)

## control plane --------------------------------------------------------------
# A real Kubernetes control plane for the test suite, built once from pinned
# sources into a cache outside the work tree (docs/test-cluster.md).
#   make cluster-build   build the binaries if the cache lacks them (cold: 6-15 min on 2 cores)
#   make cluster-up      start etcd, API server, controller-manager, scheduler, node agent;
#                        the last line printed is the admin kubeconfig's path
#   make cluster-down    stop every process cluster-up started
# The cached binaries (kube-apiserver, kubectl, etcd, helm, promtool, ...) are on
# the PATH of every recipe in this Makefile.
CLUSTER_PY ?= $(UV) run --frozen python
CLUSTER_BIN := $(shell bash tests/cluster/build.sh --print-bindir)
export PATH := $(CLUSTER_BIN):$(PATH)

.PHONY: cluster-build cluster-up cluster-down
cluster-build:
	@bash tests/cluster/build.sh
cluster-up:
	@$(CLUSTER_PY) tests/cluster/clusterctl.py up
cluster-down:
	@$(CLUSTER_PY) tests/cluster/clusterctl.py down
