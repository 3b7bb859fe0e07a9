#!/usr/bin/env bash
# Builds the observability tools the end-to-end suite proves Trellis' telemetry with
# (e2e/tests/observability.rs), each pinned by the Go module next to this script, into
# $TRELLIS_OBSERVABILITY/bin (default /var/tmp/trellis-observability/bin):
#   jaeger/      Jaeger v2 (cmd/jaeger: all-in-one, in-memory storage by default)
#   prometheus/  Prometheus (cmd/prometheus) with the Kubernetes service discovery only (build
#                tags below). Debian's `prometheus` package cannot serve: it is built without the
#                Kubernetes service discovery ("field kubernetes_sd_configs
#                not found in type config.ScrapeConfig"), which the suite's Prometheus uses.
# Go's module and build caches live under $TRELLIS_OBSERVABILITY too, so a rebuild on the same
# machine takes seconds; nothing is written into the clone and none of the tools' source is in it.
#
#   e2e/observability/build.sh       # builds what is missing or stale, prints the bin directory
set -euo pipefail
cd "$(dirname "$0")"

. ../go-env.sh "${TRELLIS_OBSERVABILITY:-/var/tmp/trellis-observability}" 1.26.7

for tool in jaeger prometheus; do
    started=$SECONDS
    tags=""
    # Prometheus (3.10 and later) leaves out every bundled service discovery under
    # `remove_all_sd` and takes back the ones named by `enable_<name>_sd`: the suite's Prometheus
    # discovers pods through Kubernetes only, and the cloud providers' SDKs it then skips are most
    # of its cold build (352 s instead of 970 s or more, measured on a busy 2-core machine).
    [ "$tool" = prometheus ] && tags="remove_all_sd,enable_kubernetes_sd"
    # `go build` of a tool is up to date in seconds when nothing changed (the build cache).
    (cd "$tool" && go build -tags "$tags" -trimpath -ldflags "-s -w" -o "$bin/" tool)
    echo "build.sh: built $tool in $((SECONDS - started))s into $bin" >&2
done
echo "$bin"
