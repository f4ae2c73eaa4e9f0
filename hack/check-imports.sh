#!/usr/bin/env bash
# Fails if a package imports across the architecture's boundaries:
#   bpfext/...     (the kernel extension) imports nothing of sidewall's but
#                  bpfext/... (its objects) and, in tests, hack/harness
#                  helpers that need no Kubernetes; and no k8s.io/...,
#                  sigs.k8s.io/..., crds/... or translator/...;
#   translator/... (pure translation and the controller) imports no
#                  bpfext/... and no agent/....
# It reads `go list`, so it needs nothing but Go.
set -euo pipefail
cd "$(dirname "$0")/.."
mod=$(go list -m)
fail=0

check() { # package-pattern, what to list, forbidden-regex, why
	local pattern=$1 field=$2 forbidden=$3 why=$4 shown
	while read -r pkg imports; do
		shown=0
		for imp in $imports; do
			if [[ $imp =~ $forbidden ]]; then
				fail=1
				shown=$((shown + 1))
				# The first few name the edge; the rest follow from it.
				[ "$shown" -le 3 ] && echo "import check: $pkg depends on $imp ($why)"
			fi
		done
	done < <(go list -f "{{.ImportPath}} {{join .$field \" \"}}" "$pattern")
}

ext_forbidden="^(k8s\.io/|sigs\.k8s\.io/|$mod/(crds|translator|agent|cmd|demo)(/|$))"
# Deps: what a package needs transitively, not only what it names.
check ./bpfext/... Deps "$ext_forbidden|^$mod/hack(/|$)" "the kernel extension must not depend on the control plane or the agent"
check ./bpfext/... TestImports "$ext_forbidden|^$mod/hack/harness/(agentnode|localnode|testenv)(/|$)" "the kernel extension's tests must not need the control plane"
check ./bpfext/... XTestImports "$ext_forbidden|^$mod/hack/harness/(agentnode|localnode|testenv)(/|$)" "the kernel extension's tests must not need the control plane"
for field in Deps TestImports XTestImports; do
	check ./translator/... $field "^$mod/(bpfext|agent)(/|$)" "the translator must not depend on the datapath or the agent"
done

# The harness packages that bpfext's tests use must themselves stay free
# of Kubernetes, or the first rule leaks through them.
for dep in $(go list -f '{{join .Deps " "}}' ./hack/harness ./hack/harness/nettest); do
	if [[ $dep =~ ^(k8s\.io/|sigs\.k8s\.io/) ]]; then
		echo "import check: hack/harness or hack/harness/nettest depends on $dep (bpfext's tests use them)"
		fail=1
	fi
done

# One log key for errors in both binaries: "err" (logr's, and so the
# controller's). A slog call with "error" as a key is the other spelling.
if git grep -nE '\.(Error|Warn|Info|Debug)\([^)]*"error", ' -- '*.go' ':!*_test.go'; then
	echo "import check: log errors under the key \"err\", as the controller (logr) does"
	fail=1
fi

if [ "$fail" -ne 0 ]; then
	exit 1
fi
echo "import check: bpfext, agent and translator keep their boundaries"
