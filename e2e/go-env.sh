# Sourced by the Go build scripts (e2e/upstream/build.sh, e2e/observability/build.sh):
#   . ../go-env.sh ROOT MIN_GO
# checks that `go` is installed (naming how to install it when not), keeps Go's module and build
# caches under ROOT (outside the clone, so a rebuild on the same machine takes seconds), builds
# static, read-only-module binaries, and sets `bin` to ROOT/bin (created).
command -v go >/dev/null || {
    echo "$(basename "$0"): 'go' not found; install Go $2 or newer (https://go.dev/dl/: tar -C /usr/local -xzf go1.26.*.linux-amd64.tar.gz && export PATH=\$PATH:/usr/local/go/bin)" >&2
    exit 1
}
bin="$1/bin"
export GOMODCACHE="$1/gomod" GOCACHE="$1/gocache"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly
mkdir -p "$bin"
