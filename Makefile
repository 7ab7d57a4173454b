## control plane --------------------------------------------------------------
# A real Kubernetes control plane for the test suite, built once from pinned
# sources into a cache outside the work tree (docs/test-cluster.md).
#   make cluster-build   build the binaries if the cache lacks them (cold: ~25 min on 2 cores)
#   make cluster-up      start etcd, API server, controller-manager, scheduler, node agent;
#                        the last line printed is the admin kubeconfig's path
#   make cluster-down    stop every process cluster-up started
# The cached binaries (kube-apiserver, kubectl, etcd, helm, promtool, ...) are on
# the PATH of every recipe in this Makefile.
CLUSTER_PY ?= uv run --frozen python
CLUSTER_BIN := $(shell bash tests/cluster/build.sh --print-bindir)
export PATH := $(CLUSTER_BIN):$(PATH)

.PHONY: cluster-build cluster-up cluster-down
cluster-build:
	@bash tests/cluster/build.sh
cluster-up:
	@$(CLUSTER_PY) tests/cluster/clusterctl.py up
cluster-down:
	@$(CLUSTER_PY) tests/cluster/clusterctl.py down
