#!/usr/bin/env bash
# Node agent figures for `make bench` (hack/bench.sh runs this when present):
# pod status update -> enforcement in the maps (p50/p99 over 200 pods), and
# 1,000 pods x 3 containers with 100 policies: time to program the maps on
# an agent restart (adopting the pins) and on a cold start, and the agent's
# peak memory; and ReplaceRules batched vs per policy. The agent runs as its own process against envtest on a local
# node harness. Printed, never asserted. Bounded by BENCH_AGENT_TIMEOUT.
# Extra arguments go to the program, e.g. -pods 200 -policies 20.
set -euo pipefail
cd "$(dirname "$0")/.."
# The benchmarks need root and built tools, as `make test` does.
export PRIVILEGED_TESTS=1 INTEGRATION_TESTS=1

export KUBEBUILDER_ASSETS="${KUBEBUILDER_ASSETS:-$PWD/bin/k8s}"
echo "rewriting every rule of 3,000 datapath policies (an agent restart): one ReplaceRules call vs one ReplacePolicyRules call per policy"
go test -count=1 -run '^$' -bench 'RewriteAllPolicies' -benchtime 1x ./bpfext |
	awk '/^Benchmark/ { sub(/-[0-9]+$/, "", $1); ns[$1] = $3; printf "   %-40s %10.1f ms\n", $1, $3 / 1e6 }
		END { b = ns["BenchmarkRewriteAllPolicies/batched"]; p = ns["BenchmarkRewriteAllPolicies/per-policy"]; if (b > 0) printf "   per-policy / batched: %.0fx\n", p / b }'
go build -o bin/sidewall-agent ./cmd/sidewall-agent
go build -o bin/bench-agent ./hack/bench/agent
exec timeout --kill-after=30s "${BENCH_AGENT_TIMEOUT:-600}" \
	bin/bench-agent -agent bin/sidewall-agent -timeout "${BENCH_AGENT_TIMEOUT:-600}s" "$@"
