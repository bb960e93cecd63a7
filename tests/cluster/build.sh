#!/usr/bin/env bash
# Build the test cluster's binaries from source through the Go module proxy.
#
# Why this exists: the tests run the operator against a real Kubernetes control plane, and
# this machine (and CI) can neither run containers nor download release binaries. So etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and helm are compiled here
# and cached under ~/.cache/palimpsest/<component>-<version>/bin, keyed by version: a second
# run only checks that the binaries are there.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the staging modules
# (k8s.io/api, k8s.io/client-go, ...) with local directories. We build it from a generated
# wrapper module that requires k8s.io/kubernetes at the pinned version and replaces each
# staging module (the list is read from that version's own go.mod) with its published
# v0.X.Y release. etcd's server module has the same problem and gets the same treatment.
#
# Kueue is `go install`ed at its pinned release; its CRDs and webhook configurations are copied
# from the same module (config/components) beside the binary, so cluster-up installs the
# objects of the release it runs.
#
# Usage: tests/cluster/build.sh [--print-env | --trim-go-cache]
#   --print-env       print versions and binary directories, build nothing
#   --trim-go-cache   build, then delete the Go module and build caches (about 5 GB); the
#                     binaries stay cached, but a version bump then rebuilds from scratch
# Environment: PALIMPSEST_CACHE (default ~/.cache/palimpsest), BUILD_JOBS (default 2),
# K8S_VERSION, ETCD_VERSION, HELM_VERSION, KUEUE_VERSION (defaults pinned below).
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.35.8}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
CACHE="${PALIMPSEST_CACHE:-$HOME/.cache/palimpsest}"
JOBS="${BUILD_JOBS:-2}"

K8S_DIR="$CACHE/kubernetes-$K8S_VERSION"
ETCD_DIR="$CACHE/etcd-$ETCD_VERSION"
HELM_DIR="$CACHE/helm-$HELM_VERSION"
KUEUE_DIR="$CACHE/kueue-$KUEUE_VERSION"

# Never fetch another Go toolchain, never link C; keep the build within 2 cores.
export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS="-mod=mod -modcacherw -buildvcs=false"
export GOMAXPROCS="${GOMAXPROCS:-$JOBS}"
export GOCACHE="${GOCACHE_OVERRIDE:-$CACHE/go/build-cache}"
export GOMODCACHE="${GOMODCACHE_OVERRIDE:-$CACHE/go/mod}"

K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)

log() { printf '[cluster-build] %s\n' "$*" >&2; }

# The pinned etcd and helm releases declare `go 1.26.0`; nothing newer may be downloaded.
check_go() {
    command -v go >/dev/null || { log "go is not installed (need Go >= 1.26)"; exit 1; }
    local version major minor
    version=$(go env GOVERSION)
    major=$(echo "${version#go}" | cut -d. -f1)
    minor=$(echo "${version#go}" | cut -d. -f2)
    if ((major < 1 || (major == 1 && minor < 26))); then
        log "found $version; the test cluster build needs Go >= 1.26"
        exit 1
    fi
}

# is_built DIR NAME... : true when DIR/bin holds every NAME and the completion stamp.
is_built() {
    local dir="$1"
    shift
    [[ -f "$dir/bin/.complete" ]] || return 1
    local name
    for name in "$@"; do
        [[ -x "$dir/bin/$name" ]] || return 1
    done
}

# timed LABEL CMD... : runs CMD, logging how long it took (also appended to the build log).
timed() {
    local label="$1"
    shift
    local start end
    start=$(date +%s)
    "$@"
    end=$(date +%s)
    log "$label took $((end - start))s"
    printf '%s %s %ss\n' "$(date -u +%FT%TZ)" "$label" "$((end - start))" >>"$CACHE/build-times.log"
}

fetch_mod() {
    # Prints a module's go.mod as served by the module proxy (via the go command).
    local module="$1" version="$2" tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && go mod download -json "$module@$version") >"$tmp/info.json"
    local gomod
    gomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' "$tmp/info.json")
    cat "$gomod"
    rm -rf "$tmp"
}

# staging_replaces GOMOD VERSION : one `replace` line per staging module that GOMOD points at a
# local ./staging directory, redirected to its published release VERSION.
staging_replaces() {
    local gomod="$1" version="$2"
    sed -n '/^replace (/,/^)/p' "$gomod" \
        | awk -v v="$version" '$2 == "=>" && $3 ~ /^\.\/staging\// { print "replace " $1 " => " $1 " " v }'
}

build_kubernetes() {
    if is_built "$K8S_DIR" "${K8S_COMMANDS[@]}"; then
        log "kubernetes $K8S_VERSION cached in $K8S_DIR/bin"
        return
    fi
    local src="$K8S_DIR/src" minor staging_version
    minor=$(echo "$K8S_VERSION" | cut -d. -f2)
    staging_version="v0.${K8S_VERSION#v1.}"
    mkdir -p "$src" "$K8S_DIR/bin"
    fetch_mod k8s.io/kubernetes "$K8S_VERSION" >"$src/upstream.go.mod"
    local go_directive godebug
    go_directive=$(awk '$1 == "go" { print $2; exit }' "$src/upstream.go.mod")
    godebug=$(awk '$1 == "godebug" { print; exit }' "$src/upstream.go.mod")
    {
        echo "// Generated by tests/cluster/build.sh: builds k8s.io/kubernetes $K8S_VERSION commands."
        echo "module palimpsest.test/k8s-build"
        echo
        echo "go $go_directive"
        [[ -n "$godebug" ]] && echo "$godebug"
        echo
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo
        staging_replaces "$src/upstream.go.mod" "$staging_version"
    } >"$src/go.mod"
    rm -f "$src/go.sum"
    log "building kubernetes $K8S_VERSION (${K8S_COMMANDS[*]}) with -p $JOBS; this takes a while"
    local pkg ldflags="-s -w"
    local build_date
    build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date -X $pkg.gitCommit="
    done
    local targets=()
    for pkg in "${K8S_COMMANDS[@]}"; do targets+=("k8s.io/kubernetes/cmd/$pkg"); done
    (cd "$src" && timed "kubernetes $K8S_VERSION go build" \
        go build -p "$JOBS" -trimpath -ldflags "$ldflags" -o "$K8S_DIR/bin/" "${targets[@]}")
    touch "$K8S_DIR/bin/.complete"
}

build_etcd() {
    if is_built "$ETCD_DIR" etcd; then
        log "etcd $ETCD_VERSION cached in $ETCD_DIR/bin"
        return
    fi
    local src="$ETCD_DIR/src"
    mkdir -p "$src" "$ETCD_DIR/bin"
    fetch_mod go.etcd.io/etcd/server/v3 "$ETCD_VERSION" >"$src/upstream.go.mod"
    local go_directive
    go_directive=$(awk '$1 == "go" { print $2; exit }' "$src/upstream.go.mod")
    # The server module replaces its sibling modules with ../ paths; pin their releases instead.
    {
        echo "// Generated by tests/cluster/build.sh: builds etcd $ETCD_VERSION."
        echo "module palimpsest.test/etcd-build"
        echo
        echo "go $go_directive"
        echo
        echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
        echo
        sed -n '/^replace (/,/^)/p' "$src/upstream.go.mod" \
            | awk -v v="$ETCD_VERSION" '$2 == "=>" && $3 ~ /^\.\./ { print "replace " $1 " => " $1 " " v }'
    } >"$src/go.mod"
    # etcd's own main package lives in the root module, which is not published; this is the
    # whole of what it does.
    cat >"$src/main.go" <<'EOF'
// Generated by tests/cluster/build.sh: the etcd command, from the published server module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
    rm -f "$src/go.sum"
    local ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}"
    (cd "$src" && timed "etcd $ETCD_VERSION go build" \
        go build -p "$JOBS" -trimpath -ldflags "$ldflags" -o "$ETCD_DIR/bin/etcd" .)
    touch "$ETCD_DIR/bin/.complete"
}

build_helm() {
    if is_built "$HELM_DIR" helm; then
        log "helm $HELM_VERSION cached in $HELM_DIR/bin"
        return
    fi
    mkdir -p "$HELM_DIR/bin"
    # helm reports the Kubernetes version it assumes for `helm template` from these variables;
    # set them from the client-go it builds against, as helm's own release build does.
    local client_go major minor ldflags
    client_go=$(fetch_mod "helm.sh/helm/v3" "$HELM_VERSION" | awk '$1 == "k8s.io/client-go" { print $2; exit }')
    major=$(($(echo "${client_go#v}" | cut -d. -f1) + 1))
    minor=$(echo "${client_go#v}" | cut -d. -f2)
    ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        ldflags+=" -X $pkg.k8sVersionMajor=$major -X $pkg.k8sVersionMinor=$minor"
    done
    GOBIN="$HELM_DIR/bin" GOFLAGS="-modcacherw -buildvcs=false" timed "helm $HELM_VERSION go install" \
        go install -p "$JOBS" -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    touch "$HELM_DIR/bin/.complete"
}

build_kueue() {
    if is_built "$KUEUE_DIR" kueue && [[ -f "$KUEUE_DIR/config/webhooks.yaml" ]]; then
        log "kueue $KUEUE_VERSION cached in $KUEUE_DIR/bin"
        return
    fi
    mkdir -p "$KUEUE_DIR/bin" "$KUEUE_DIR/config/crd"
    local ldflags="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
    GOBIN="$KUEUE_DIR/bin" GOFLAGS="-modcacherw -buildvcs=false" timed "kueue $KUEUE_VERSION go install" \
        go install -p "$JOBS" -trimpath -ldflags "$ldflags" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
    local module="$GOMODCACHE/sigs.k8s.io/kueue@$KUEUE_VERSION"
    cp "$module"/config/components/crd/bases/*.yaml "$KUEUE_DIR/config/crd/"
    cp "$module/config/components/webhook/manifests.yaml" "$KUEUE_DIR/config/webhooks.yaml"
    touch "$KUEUE_DIR/bin/.complete"
}

main() {
    if [[ "${1:-}" == "--print-env" ]]; then
        # What the cluster scripts need to find the binaries, without building anything.
        printf '%s\n' "K8S_VERSION=$K8S_VERSION" "ETCD_VERSION=$ETCD_VERSION" "HELM_VERSION=$HELM_VERSION" \
            "KUEUE_VERSION=$KUEUE_VERSION" "K8S_BIN=$K8S_DIR/bin" "ETCD_BIN=$ETCD_DIR/bin" \
            "HELM_BIN=$HELM_DIR/bin" "KUEUE_BIN=$KUEUE_DIR/bin" "KUEUE_CONFIG=$KUEUE_DIR/config"
        return
    fi
    if ! is_built "$K8S_DIR" "${K8S_COMMANDS[@]}" || ! is_built "$ETCD_DIR" etcd || ! is_built "$HELM_DIR" helm \
        || ! is_built "$KUEUE_DIR" kueue; then
        check_go
    fi
    mkdir -p "$CACHE"
    build_etcd
    build_helm
    build_kubernetes
    build_kueue
    if [[ "${1:-}" == "--trim-go-cache" ]]; then
        log "deleting the Go caches under $CACHE/go"
        rm -rf "$CACHE/go"
    fi
    log "done: $K8S_DIR/bin $ETCD_DIR/bin $HELM_DIR/bin $KUEUE_DIR/bin"
}

main "$@"
