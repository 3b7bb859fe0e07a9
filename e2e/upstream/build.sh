#!/usr/bin/env bash
# Builds the upstream Kubernetes components pinned in go.mod (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, etcd, CoreDNS) and the sandbox's pause program into
# $TRELLIS_UPSTREAM/bin (default /var/tmp/trellis-upstream/bin). Go's module and build caches live
# under $TRELLIS_UPSTREAM too, so a rebuild on the same machine takes seconds; nothing is written
# into the clone. One `go build` for the Kubernetes module (linking is the slow part, and one
# invocation shares the compiled packages and runs the links in parallel), one for CoreDNS's own
# module (coredns/: it needs other client-go and etcd client releases).
#
#   e2e/upstream/build.sh            # builds what is missing or stale, prints the bin directory
set -euo pipefail
cd "$(dirname "$0")"

. ../go-env.sh "${TRELLIS_UPSTREAM:-/var/tmp/trellis-upstream}" 1.24

# What `kube-apiserver --version`, /version and the Node's kubeletVersion report (upstream's
# release builds set the same variables).
k8s=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
minor=$(echo "$k8s" | cut -d. -f2)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$k8s -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

started=$SECONDS
go build -trimpath -ldflags "$ldflags" -o "$bin/" tool ./pause
(cd coredns && go build -trimpath -ldflags "-s -w" -o "$bin/coredns" .)
# The etcd server's main package is the module root go.etcd.io/etcd/server/v3, so Go names it
# after its last non-version element; `server` stays so the next build finds it up to date.
ln -f "$bin/server" "$bin/etcd"
echo "build.sh: built $(ls "$bin" | tr '\n' ' ')in $((SECONDS - started))s (Kubernetes $k8s) into $bin" >&2
echo "$bin"
