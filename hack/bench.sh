#!/usr/bin/env bash
# `make bench`: every benchmark of sidewall in one run, printed side by side.
# The machines are noisy, so each section compares within one run and prints
# ratios where there is a baseline. Figures are printed, never asserted.
# BENCH_ONLY=translator,controller,datapath,observer,agent,churn,node picks sections.
set -euo pipefail
cd "$(dirname "$0")/.."
# The benchmarks need root and built tools, as `make test` does.
export PRIVILEGED_TESTS=1 INTEGRATION_TESTS=1

only=",${BENCH_ONLY:-translator,controller,datapath,observer,agent,churn,node},"
want() { [[ "$only" == *",$1,"* ]]; }
failed=0
section() { printf '\n######## %s\n' "$*"; }
gobench() { # package, regexp, benchtime
	go test -count=1 -run '^$' -bench "$2" -benchtime "$3" -benchmem "$1" |
		grep -E '^(Benchmark|ok|FAIL|---)' || true
}

if want translator; then
	section "translator: one typical policy (10 rules, 2 with L7); target < 100 µs/op"
	gobench ./translator 'BenchmarkTo(CNP|RuleSet)$' 2000x
fi

if want controller; then
	section "controller: converge 1,000 ContainerNetworkPolicies into CNPs on envtest; targets < 60 s, < 200 MB"
	go build -o bin/sidewall-controller ./cmd/sidewall-controller
	go run ./hack/bench/controller -controller bin/sidewall-controller
fi

if want datapath; then
	section "datapath: verdict cost (BPF_PROG_TEST_RUN) and UDP pps vs iptables cgroup match"
	hack/bench-datapath.sh
fi

if want observer; then
	section "observer: flows per second to one 'hubble observe --follow' client"
	gobench ./agent/hubble 'FollowThroughput|Convert' 100000x
	section "observer: Cilium's flows joined to containers; target >= 50,000 flows/s on one core, join state bounded"
	out=$(gobench ./agent/hubble 'Join$|JoinFollow' 100000x; gobench ./agent/hubble 'JoinStateMemory' 1x)
	echo "$out"
	echo "$out" | awk '/JoinFollow\/plain/ {for (i=1;i<NF;i++) if ($(i+1)=="delivered-flows/s") p=$i}
		/JoinFollow\/joined/ {for (i=1;i<NF;i++) if ($(i+1)=="delivered-flows/s") j=$i}
		END {if (p && j) printf "joined/plain delivery to one follower (one core): %.2f\n", j/p}'
fi

if want agent && [ -x hack/bench-agent.sh ]; then
	section "agent: time from pod status to enforcement, restart programming time and memory"
	hack/bench-agent.sh
fi

if want churn && [ -x hack/bench-churn.sh ]; then
	section "churn: 1,000 pod create/delete cycles under 100 policies; maps, attachments, goroutines, memory back to baseline"
	hack/bench-churn.sh || { echo "churn: FAILED (a leak or a missed reconcile, above)"; failed=1; }
fi

if want node; then
	section "node: cgroup watcher latency (mkdir -> event) and local-node pod start"
	gobench ./agent/cgroups 'WatcherLatency' 200x
	gobench ./hack/harness/localnode 'RunPod' 20x
fi

exit "$failed"
