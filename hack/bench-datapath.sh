#!/usr/bin/env bash
# Datapath benchmarks of bpfext, printed side by side:
#  (a) per-packet cost of the egress verdict from BPF_PROG_TEST_RUN at 10,
#      1,000 and 100,000 rules, next to an empty cgroup_skb program;
#  (b) pps of an iperf3 UDP 64-byte stream from a cgroup in a "pod" netns
#      over veth to a peer netns: no filter, sidewall, and iptables
#      `-m cgroup --path` rules in the pod netns, at the same rule counts,
#      as ratios to no filter;
#  (c) toFQDNs: the verdict cost of ordinary traffic, of a packet to a
#      learned address (1 and 1,024 learned, 1 and 16 selectors) and of a
#      refused one (BenchmarkVerdictFQDN), sw_fqdn's memory as addresses
#      grow (BenchmarkFQDNMemory); and ordinary traffic's verdict
#      next to the revision before toFQDNs (BENCH_BASE, default 2a85d8e),
#      built from a git worktree, as the ratio of the medians of
#      BENCH_REPEAT alternating runs.
# All traffic stays between two network namespaces this script creates
# (addresses 10.201.0.1/.2 exist only there). Needs root, iperf3, iptables.
# Bounded: BENCH_SECONDS per iperf3 run (default 3), BENCH_REPEAT runs per
# figure (default 5), each step under a timeout: about 8 minutes in all.
# BENCH_PARTS (default abc) picks the parts.
set -euo pipefail
cd "$(dirname "$0")/.."
# The benchmarks need root and built tools, as `make test` does.
export PRIVILEGED_TESTS=1 INTEGRATION_TESTS=1

SECONDS_PER_RUN=${BENCH_SECONDS:-3}
export SECS=$SECONDS_PER_RUN
REPEAT=${BENCH_REPEAT:-5}
RULE_COUNTS=${BENCH_RULES:-"10 1000 100000"}
id="$$$RANDOM"
pod_ns="swbench-pod-$id"
peer_ns="swbench-peer-$id"
cg_root=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
[ -n "$cg_root" ] || { echo "no cgroup2 mount" >&2; exit 1; }
cg_base="$cg_root/sidewall-bench-$id"
cg="$cg_base/pod/client"
cg_rel="${cg#"$cg_root"/}"
pin="/sys/fs/bpf/sidewall-bench-$id"
tmp=$(mktemp -d)
iperf_pid=""

cleanup() {
	set +e
	[ -d "$tmp/base" ] && git worktree remove --force "$tmp/base"
	[ -n "$iperf_pid" ] && kill "$iperf_pid" 2>/dev/null
	[ -x "$tmp/benchload" ] && [ -d "$pin" ] && "$tmp/benchload" -pin "$pin" -unpin
	ip netns del "$pod_ns" 2>/dev/null
	ip netns del "$peer_ns" 2>/dev/null
	for d in "$cg" "$cg_base/pod" "$cg_base"; do
		[ -d "$d" ] && { echo 1 > "$d/cgroup.kill" 2>/dev/null; sleep 0.1; rmdir "$d"; }
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

parts=${BENCH_PARTS:-abc}
if [[ $parts == *a* ]]; then
echo "== (a) verdict cost, BPF_PROG_TEST_RUN (1M repeats per run, 5 runs)"
go test -count=1 -run '^$' -bench 'BenchmarkVerdict' -benchtime 5x ./bpfext | awk '/ns\/pkt/ { sub(/-[0-9]+$/, "", $1); printf "   %-32s %8s ns/pkt\n", $1, $(NF-1) }'

fi

if [[ $parts == *b* ]]; then
echo "== (b) iperf3 UDP 64-byte stream, pod netns -> peer netns over veth, ${SECONDS_PER_RUN}s per run"
go build -o "$tmp/benchload" ./bpfext/internal/benchload
ip netns add "$pod_ns"
ip netns add "$peer_ns"
ip -n "$pod_ns" link set lo up
ip -n "$peer_ns" link set lo up
ip link add "swb$id" netns "$pod_ns" type veth peer name "swp$id" netns "$peer_ns"
ip -n "$pod_ns" addr add 10.201.0.1/24 dev "swb$id"
ip -n "$peer_ns" addr add 10.201.0.2/24 dev "swp$id"
ip -n "$pod_ns" link set "swb$id" up
ip -n "$peer_ns" link set "swp$id" up
mkdir -p "$cg"

ip netns exec "$peer_ns" iperf3 -s -B 10.201.0.2 >/dev/null 2>&1 &
iperf_pid=$!
sleep 0.5

# pps of one run: the client runs in the container cgroup, which it joins
# before entering the netns (ip netns exec remounts /sys).
# The client runs SCHED_FIFO on CPU 1 (BENCH_RT=0 turns this off): on a busy shared
# machine, other work would otherwise dominate the figures (bounded by the kernel's
# RT throttling, and only for the seconds of each run).
rt=()
[ "${BENCH_RT:-1}" = 1 ] && rt=(chrt -f 10 taskset -c 1)
pps() {
	timeout $((SECONDS_PER_RUN + 20)) sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@" iperf3 -c 10.201.0.2 -u -l 64 -b 0 -t "$SECS" -J' \
		sh "$cg" "${rt[@]}" ip netns exec "$pod_ns" >"$tmp/out.json" || { echo 0; return; }
	jq -r '(.end.sum.packets / .end.sum.seconds) | floor' "$tmp/out.json"
}

iptables_rules() {
	local n=$1
	{
		echo "*filter"
		echo ":OUTPUT ACCEPT [0:0]"
		# n-1 rules of the container that do not match the stream (other
		# ports), each evaluating the cgroup match, then the one that does.
		for ((i = 0; i < n - 1; i++)); do
			echo "-A OUTPUT -d 10.201.0.2/32 -p udp -m cgroup --path $cg_rel -m udp --dport $((1024 + i % 60000)) -j ACCEPT"
		done
		echo "-A OUTPUT -d 10.201.0.2/32 -m cgroup --path $cg_rel -j ACCEPT"
		echo "-A OUTPUT -m cgroup --path $cg_rel -j DROP"
		echo "COMMIT"
	} >"$tmp/rules"
	timeout 300 ip netns exec "$pod_ns" iptables-restore "$tmp/rules"
}

# The machine is shared: each figure is the median of BENCH_REPEAT runs,
# each run of a filter next to a run without, and the ratio is taken between
# the two medians so load drift cancels out.
measure() { # label setup teardown
	local label=$1 setup=$2 teardown=$3 b=() v=()
	for ((r = 0; r < REPEAT; r++)); do
		b+=("$(pps)")
		if ! $setup; then
			printf "   %-28s %s\n" "$label" "setup failed or timed out"
			$teardown
			return
		fi
		v+=("$(pps)")
		$teardown
	done
	local mb mv
	mb=$(printf '%s\n' "${b[@]}" | median)
	mv=$(printf '%s\n' "${v[@]}" | median)
	printf "   %-28s %10s pps  %10s pps  %s\n" "$label" "$mb" "$mv" \
		"$(awk -v a="$mv" -v b="$mb" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }')"
}
sidewall_on() { "$tmp/benchload" -pin "$pin" -cgroup "$cg" -rules "$n" -peer 10.201.0.2 -port 5201; }
sidewall_off() { "$tmp/benchload" -pin "$pin" -unpin; }
trivial_on() { "$tmp/benchload" -pin "$pin" -cgroup "$cg" -trivial; }
iptables_on() { iptables_rules "$n"; }
iptables_off() { ip netns exec "$pod_ns" iptables -F OUTPUT; }

printf "   %-28s %14s  %14s  %s\n" "" "no filter" "with filter" "ratio"
# The floor: what any cgroup_skb program costs on this path.
measure "allow-all cgroup_skb" trivial_on sidewall_off
for n in $RULE_COUNTS; do
	measure "sidewall, $n rules" sidewall_on sidewall_off
	measure "iptables cgroup, $n rules" iptables_on iptables_off
done
fi

[[ $parts == *c* ]] || exit 0
echo "== (c) toFQDNs verdict cost, BPF_PROG_TEST_RUN (socket cache off: every packet takes the whole verdict)"
go test -count=1 -run '^$' -bench 'BenchmarkVerdictFQDN' -benchtime 5x ./bpfext | awk '/ns\/pkt/ { sub(/-[0-9]+$/, "", $1); printf "   %-60s %8s ns/pkt\n", $1, $(NF-1) }'
echo "   sw_fqdn memory as learned addresses grow (the kernel's memlock accounting; the empty map's buckets apart):"
go test -count=1 -run '^$' -bench 'BenchmarkFQDNMemory' -benchtime 1x ./bpfext |
	awk '/bytes\/address/ { sub(/-[0-9]+$/, "", $1); for (i = 1; i < NF; i++) { if ($(i+1) == "bytes/address") b = $i; if ($(i+1) == "MiB") m = $i; if ($(i+1) == "empty-bytes") e = $i }
		printf "   %-60s %6s B/address  %7s MiB  (empty map %d KiB)\n", $1, b, m, e / 1024 }'
base=${BENCH_BASE:-2a85d8e}
if ! git rev-parse -q --verify "$base^{commit}" >/dev/null; then
	echo "   ordinary traffic against $base: not in this clone's history, skipped"
	exit 0
fi
echo "   ordinary traffic, this revision against $base (before toFQDNs), median of $REPEAT alternating runs:"
go test -c -o "$tmp/cur.test" ./bpfext
git worktree add -q --detach "$tmp/base" "$base"
(cd "$tmp/base" && go test -c -o "$tmp/base.test" ./bpfext)
verdicts() { # test binary, package dir: "name ns/pkt" lines
	(cd "$2" && timeout 600 "$1" -test.run '^$' -test.bench 'BenchmarkVerdict$/rules=(10|1000)$' -test.benchtime 3x) |
		awk '/ns\/pkt/ { sub(/-[0-9]+$/, "", $1); print $1, $(NF-1) }'
}
: >"$tmp/cur" && : >"$tmp/base.out"
for ((r = 0; r < REPEAT; r++)); do
	verdicts "$tmp/cur.test" bpfext >>"$tmp/cur"
	verdicts "$tmp/base.test" "$tmp/base/bpfext" >>"$tmp/base.out"
done
printf "   %-40s %10s  %10s  %s\n" "" "$base" "this" "ratio"
for name in $(awk '{ print $1 }' "$tmp/cur" | sort -u); do
	b=$(awk -v n="$name" '$1 == n { print $2 }' "$tmp/base.out" | median)
	c=$(awk -v n="$name" '$1 == n { print $2 }' "$tmp/cur" | median)
	printf "   %-40s %7s ns  %7s ns  %s\n" "$name" "${b:-n/a}" "$c" \
		"$(awk -v a="$c" -v b="$b" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }')"
done
