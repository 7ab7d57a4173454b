#!/usr/bin/env bash
# Builds, once, every binary of the test control plane into a cache outside the
# work tree, and prints that cache's bin directory as its last line.
#
#   tests/cluster/build.sh               build what is missing, print the bin dir
#   tests/cluster/build.sh --print-bindir print the bin dir only (no build; for the Makefile's PATH)
#
# The cache directory is keyed by versions.env and the build modules' go.mod/go.sum,
# so a version bump builds into a new directory and never mixes binaries.
# The kstatus test tool (modules/kstatus) is keyed on its own (go.mod, go.sum,
# main.go): it builds into <cache dir>/kstatus-<hash>/ and bin/kstatus links to it,
# so changing it rebuilds only kstatus, never Kubernetes.
# Environment: FEDSEC_CLUSTER_CACHE overrides the cache root.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${FEDSEC_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedsec/cluster}"
# The modules are named (not modules/*) so that kstatus, keyed below, does not key this directory.
key_hash="$(cat "$here/versions.env" "$here"/modules/{etcd,helm,kubernetes}/go.mod "$here"/modules/{etcd,helm,kubernetes}/go.sum | sha256sum | cut -c1-10)"
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_${key_hash}"
prefix="$cache_root/$key"
bindir="$prefix/bin"
kstatus_hash="$(cat "$here"/modules/kstatus/{go.mod,go.sum,main.go} | sha256sum | cut -c1-10)"
kstatus_link="../kstatus-${kstatus_hash}/kstatus" # bin/kstatus -> this, relative to bin/

if [[ "${1:-}" == "--print-bindir" ]]; then
  echo "$bindir"
  exit 0
fi

want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm promtool)
complete=1
for b in "${want[@]}"; do [[ -x "$bindir/$b" ]] || complete=0; done
[[ -x "$bindir/kstatus" && "$(readlink "$bindir/kstatus")" == "$kstatus_link" ]] || complete=0
if [[ $complete == 1 ]]; then
  echo "$bindir"
  exit 0
fi

mkdir -p "$bindir" "$prefix/logs"
# One build at a time per cache dir: a second `make cluster-up` waits for the first.
exec 9>"$prefix/build.lock"
flock 9

log() { echo "[cluster-build $(date -u +%H:%M:%S)] $*" >&2; }

# Use the machine's go if it is new enough, else let the go command fetch the
# release's toolchain through the module proxy.
have_go="$(go env GOVERSION | sed 's/^go//')"
if [[ "$(printf '%s\n%s\n' "$GO_TOOLCHAIN" "$have_go" | sort -V | head -n1)" != "$GO_TOOLCHAIN" ]]; then
  export GOTOOLCHAIN="go${GO_TOOLCHAIN}"
  log "machine go ${have_go} is older than ${GO_TOOLCHAIN}: using GOTOOLCHAIN=${GOTOOLCHAIN}"
else
  export GOTOOLCHAIN=local
fi
# -p 2: the machines have two cores; more parallel compiles only add memory pressure.
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath -p=2"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
info="$prefix/build-info.txt"
{
  echo "build started: $build_date"
  echo "go: $(go version)"
  echo "host: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
} >> "$info"

timed() { # name, command...
  local name="$1"; shift
  local t0=$SECONDS
  log "building $name"
  if ! "$@" >"$prefix/logs/$name.log" 2>&1; then
    tail -n 40 "$prefix/logs/$name.log" >&2
    log "building $name failed; full log: $prefix/logs/$name.log"
    exit 1
  fi
  log "built $name in $((SECONDS - t0))s"
  echo "$name: $((SECONDS - t0))s" >> "$info"
}

tmp="$(mktemp -d "$prefix/tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

if [[ ! -x "$bindir/etcd" ]]; then
  timed etcd bash -c "cd '$here/modules/etcd' && go build -ldflags='-s -w' -o '$tmp/etcd' go.etcd.io/etcd/server/v3"
  mv "$tmp/etcd" "$bindir/etcd"
fi

if [[ ! -x "$bindir/helm" ]]; then
  helm_minor="$(echo "$KUBERNETES_STAGING_VERSION" | cut -d. -f2)"
  helm_ld="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  helm_ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${helm_minor}"
  helm_ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${helm_minor}"
  timed helm bash -c "cd '$here/modules/helm' && go build -ldflags='$helm_ld' -o '$tmp/helm' helm.sh/helm/v3/cmd/helm"
  mv "$tmp/helm" "$bindir/helm"
fi

if [[ ! -x "$bindir/promtool" ]]; then
  fetch_promtool() {
    cd "$tmp"
    local spec="prometheus=${PROMETHEUS_DEB_VERSION}"
    if ! apt-cache show "$spec" >/dev/null 2>&1; then
      apt-get update -qq || true
    fi
    if ! apt-cache show "$spec" >/dev/null 2>&1; then
      echo "WARNING: Debian no longer offers ${spec}; using the candidate version instead." >&2
      echo "  Update PROMETHEUS_DEB_VERSION in tests/cluster/versions.env to pin it again." >&2
      spec=prometheus
    fi
    apt-get download -q "$spec"
    dpkg-deb -x prometheus_*.deb deb
    cp deb/usr/bin/promtool "$tmp/promtool"
    echo "promtool from Debian package: $(dpkg-deb -f prometheus_*.deb Version)" >> "$info"
  }
  timed promtool fetch_promtool
  mv "$tmp/promtool" "$bindir/promtool"
fi

k8s_missing=0
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do [[ -x "$bindir/$b" ]] || k8s_missing=1; done
if [[ $k8s_missing == 1 ]]; then
  # The same version variables the release's hack/lib/version.sh sets, so /version
  # reports the real release (helm's kubeVersion checks read it).
  minor="$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
  k8s_ld="-s -w"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    k8s_ld+=" -X $pkg.gitVersion=${KUBERNETES_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
    k8s_ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${build_date}"
  done
  # One go build for all four commands so shared packages compile once.
  timed kubernetes bash -c "cd '$here/modules/kubernetes' && go build -ldflags='$k8s_ld' -o '$tmp/' \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl"
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do mv "$tmp/$b" "$bindir/$b"; done
fi

if [[ ! -x "$prefix/kstatus-${kstatus_hash}/kstatus" ]]; then
  timed "kstatus-${kstatus_hash}" bash -c "cd '$here/modules/kstatus' && go build -ldflags='-s -w' -o '$tmp/kstatus' ."
  mkdir -p "$prefix/kstatus-${kstatus_hash}"
  mv "$tmp/kstatus" "$prefix/kstatus-${kstatus_hash}/kstatus"
fi
ln -sfn "$kstatus_link" "$bindir/kstatus"

echo "build finished: $(date -u +%Y-%m-%dT%H:%M:%SZ)" >> "$info"
log "all binaries in $bindir (timings: $info)"
echo "$bindir"
