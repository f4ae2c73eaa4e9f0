#!/usr/bin/env bash
# Churn and soak figures for `make bench` (hack/bench.sh, section churn):
# 1,000 pod create/delete cycles under 100 ContainerNetworkPolicies on a
# local node harness with the agent as its own process against envtest;
# then the maps, attached cgroups, agent goroutines and memory against the
# baseline, missed reconciles and leaked cgroup attachments. Exits non-zero
# on a leak or a missed reconcile. Bounded by BENCH_CHURN_TIMEOUT (seconds).
# Extra arguments go to the program, e.g. -cycles 200 -policies 20.
set -euo pipefail
cd "$(dirname "$0")/.."

export KUBEBUILDER_ASSETS="${KUBEBUILDER_ASSETS:-$PWD/bin/k8s}"
go build -o bin/sidewall-agent ./cmd/sidewall-agent
go build -o bin/bench-churn ./hack/bench/churn
exec timeout --kill-after=30s "$((${BENCH_CHURN_TIMEOUT:-600} + 30))" \
	bin/bench-churn -agent bin/sidewall-agent -timeout "${BENCH_CHURN_TIMEOUT:-600}s" "$@"
