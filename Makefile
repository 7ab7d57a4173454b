# fedsec — the two commands of the README, and what they need.
#   make example        install (once) and run the breast-cancer example locally: `fedsec run examples/breast-cancer`
#   make test           install (once), build/start the test control plane, run the whole test suite
#   make test-fast      only the fast tests (no `slow`, no `cluster` marks): no root, Go or control plane
#   make cluster-demo   the operator end to end on the test control plane (docs/test-cluster.md)
#   make images         build the operator and runtime images (docs/install.md#the-images)
# Everything installs into .venv from uv.lock; torch and friends come from uv's cache outside the
# clone, so a second clone installs in seconds.

SHELL := bash

## uv ------------------------------------------------------------------------
# The uv on PATH if there is one; else a pinned uv in a virtualenv of its own outside the clone,
# keyed by its version. Never `python3 -m uv` or `pip install --user`: with .venv activated `python3`
# is the venv's (no uv in it), and a PEP 668 distribution refuses --user installs. That private
# virtualenv is made from the base interpreter behind whatever `python3` is on PATH, so removing or
# re-creating .venv cannot break it, and a venv is not the system site PEP 668 protects.
UV_VERSION := 0.13.9
UV_HOME := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/fedsec/uv-$(UV_VERSION)
UV_PRIVATE := $(UV_HOME)/bin/uv
UV := $(or $(shell command -v uv 2>/dev/null),$(UV_PRIVATE))
BOOTSTRAP_PYTHON ?= python3
# An activated virtualenv (this clone's .venv or any other) must not steer uv: every recipe syncs and
# runs this clone's .venv, and uv would warn that VIRTUAL_ENV does not match it.
unexport VIRTUAL_ENV

VENV_STAMP := .venv/.fedsec-synced
PYTEST_ARGS ?=
FAST_MARKS := not slow and not cluster

.PHONY: uv install example test test-fast
uv: $(UV)
	@$(UV) --version

$(UV_PRIVATE):
	@echo "no uv on PATH: installing uv $(UV_VERSION) into $(UV_HOME)" >&2
	@base="$$($(BOOTSTRAP_PYTHON) -c 'import sys; print(getattr(sys, "_base_executable", "") or sys.executable)')" \
	  || { echo "error: '$(BOOTSTRAP_PYTHON)' cannot run; install Python 3.11, or put uv on PATH" >&2; exit 1; }; \
	rm -rf "$(UV_HOME)"; \
	"$$base" -m venv "$(UV_HOME)" \
	  || { echo "error: '$$base -m venv' failed; on Debian/Ubuntu install python3-venv, or put uv on PATH" >&2; exit 1; }; \
	"$(UV_HOME)/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)" \
	  || { rm -rf "$(UV_HOME)"; echo "error: installing uv==$(UV_VERSION) from PyPI into $(UV_HOME) failed" >&2; exit 1; }

install: $(VENV_STAMP)
$(VENV_STAMP): pyproject.toml uv.lock | $(UV)
	@# bytecode compiled at install: imports stay fast where PYTHONDONTWRITEBYTECODE is set
	$(UV) sync --frozen --extra dev --compile-bytecode
	@$(UV) run --frozen --no-sync python -c 'import sys, importlib.metadata as m; print("fedsec", m.version("fedsec"), "installed in", sys.prefix)'
	@touch $@

example: $(VENV_STAMP)
	$(UV) run --frozen fedsec run examples/breast-cancer

test: $(VENV_STAMP) cluster-build
	$(UV) run --frozen pytest $(PYTEST_ARGS)

# Unit tests and the quick integration tests (6.5 min measured on 2 shared cores); needs neither root nor Go.
test-fast: $(VENV_STAMP)
	$(UV) run --frozen pytest -m "$(FAST_MARKS)" $(PYTEST_ARGS)

## control plane --------------------------------------------------------------
# A real Kubernetes control plane for the test suite, built once from pinned
# sources into a cache outside the work tree (docs/test-cluster.md).
#   make cluster-build   build the binaries if the cache lacks them (cold: 6-15 min on 2 cores)
#   make cluster-up      start etcd, API server, controller-manager, scheduler, node agent;
#                        the last line printed is the admin kubeconfig's path
#   make cluster-down    stop every process cluster-up started
#   make cluster-demo    cluster up, the chart installed, examples/breast-cancer applied, status watched
#   make cluster-demo-down  remove the demo, then stop the cluster
# The cached binaries (kube-apiserver, kubectl, etcd, helm, promtool, ...) are on
# the PATH of every recipe in this Makefile.
CLUSTER_PY ?= $(UV) run --frozen python
CLUSTER_BIN := $(shell bash tests/cluster/build.sh --print-bindir)
export PATH := $(CLUSTER_BIN):$(PATH)
DEMO_ARGS ?=

.PHONY: cluster-build cluster-up cluster-down cluster-demo cluster-demo-down
cluster-build:
	@bash tests/cluster/build.sh
cluster-up: $(VENV_STAMP)
	@$(CLUSTER_PY) tests/cluster/clusterctl.py up
cluster-down: $(VENV_STAMP)
	@$(CLUSTER_PY) tests/cluster/clusterctl.py down
cluster-demo: $(VENV_STAMP) cluster-build
	@$(CLUSTER_PY) tests/cluster/demo.py up $(DEMO_ARGS)
cluster-demo-down: $(VENV_STAMP)
	@$(CLUSTER_PY) tests/cluster/demo.py down $(DEMO_ARGS)
	@$(CLUSTER_PY) tests/cluster/clusterctl.py down

## images -------------------------------------------------------------------
# The chart's default images are $(IMAGE_REGISTRY)/fedsec-operator and .../fedsec-runtime, tagged with
# the chart's appVersion, which is the project's version (docs/install.md#the-images).
IMAGE_REGISTRY ?= ghcr.io/fedsec
CONTAINER_ENGINE ?= docker
VERSION := $(shell awk -F'"' '/^version = /{print $$2; exit}' pyproject.toml)
OPERATOR_IMAGE := $(IMAGE_REGISTRY)/fedsec-operator:$(VERSION)
RUNTIME_IMAGE := $(IMAGE_REGISTRY)/fedsec-runtime:$(VERSION)

.PHONY: images push-images
images:
	$(CONTAINER_ENGINE) build -f images/operator/Dockerfile --build-arg VERSION=$(VERSION) -t $(OPERATOR_IMAGE) .
	$(CONTAINER_ENGINE) build -f images/runtime/Dockerfile --build-arg VERSION=$(VERSION) -t $(RUNTIME_IMAGE) .
push-images: images
	$(CONTAINER_ENGINE) push $(OPERATOR_IMAGE)
	$(CONTAINER_ENGINE) push $(RUNTIME_IMAGE)
