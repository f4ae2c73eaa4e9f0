#!/usr/bin/env bash
# The shop scenario on a real cluster: kind + Cilium + sidewall.
# Needs Docker, kind, kubectl, helm and Go on the PATH; run from anywhere:
#   demo/kind/run.sh          # create everything and show the results
#   demo/kind/run.sh delete   # delete the kind cluster
# It cannot run on the project's CI machines (no Docker engine there).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CLUSTER=sidewall
TAG=dev
cd "$ROOT"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
shop() { kubectl -n shop "$@"; }

if [[ "${1:-}" == delete ]]; then
  kind delete cluster --name "$CLUSTER"
  exit 0
fi
for tool in docker kind kubectl helm go; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done

step "kind cluster '$CLUSTER' (no CNI, no kube-proxy)"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --config demo/kind/kind-config.yaml
kubectl config use-context "kind-$CLUSTER" >/dev/null

step "Cilium, from the chart in the cilium Go module that go.mod pins, with install/cilium-values.yaml"
CILIUM_CHART="$(go list -m -f '{{.Dir}}' github.com/cilium/cilium)/install/kubernetes/cilium"
helm upgrade --install cilium "$CILIUM_CHART" -n kube-system \
  -f install/cilium-values.yaml \
  --set k8sServiceHost="$CLUSTER-control-plane" --set k8sServicePort=6443
kubectl -n kube-system rollout status ds/cilium --timeout=5m
kubectl -n kube-system rollout status deploy/cilium-operator --timeout=5m

step "sidewall images (make images) loaded into kind"
make images VERSION="$TAG"
kind load docker-image --name "$CLUSTER" "sidewall/sidewall-controller:$TAG" "sidewall/sidewall-agent:$TAG"

step "sidewall from install/helm/sidewall"
helm upgrade --install sidewall install/helm/sidewall -n sidewall --create-namespace \
  --set image.tag="$TAG" --set image.pullPolicy=Never
kubectl -n sidewall rollout status deploy/sidewall-controller --timeout=3m
kubectl -n sidewall rollout status ds/sidewall-agent --timeout=3m

step "The shop: web (app + log-shipper sidecar), logging, payments, and the policies"
kubectl apply -k demo/shop
kubectl apply -f demo/shop/policy-dns.yaml
shop wait --for=condition=Ready pod/web pod/logging pod/payments --timeout=3m

step "The policies"
cat demo/shop/policy.yaml
step "kubectl get ctrnp"
shop get ctrnp
step "The CiliumNetworkPolicy the controller generated (L7 rules for Envoy)"
shop get cnp sidewall-log-shipper-egress -o yaml | sed -n '/^spec:/,/^status:/p'

step "Traffic: container -> target, expected, actual"
fails=0
try() { # container method url expected-prefix
  local got
  got=$(shop exec web -c "$1" -- python3 /shop/client.py "$2" "$3" 2>&1 | tail -1) || true
  if [[ "$got" == "$4"* ]]; then mark=ok; else mark=MISMATCH; fails=$((fails + 1)); fi
  printf '%-9s %-12s %-6s %-36s expected %-10s got: %s\n' "$mark" "$1" "$2" "$3" "$4" "$got"
}
try app         GET  http://payments:8080/       "HTTP 200"
try log-shipper GET  http://payments:8080/       "failed:"    # sidewall: connect() refused in the kernel
try log-shipper POST http://logging:8080/ingest  "HTTP 200"
try log-shipper GET  http://logging:8080/debug   "HTTP 403"   # Cilium's Envoy: path not allowed
try log-shipper GET  http://localhost:9090/      "failed:"    # sidewall: admin port, pod-local
try app         GET  http://localhost:9090/      "HTTP 200"

step "Cilium's Hubble: the HTTP verdicts of Envoy (the 403)"
kubectl -n kube-system exec ds/cilium -c cilium-agent -- \
  hubble observe --namespace shop --protocol http --last 20 || true

step "sidewall's Hubble API: container-level verdicts, via port-forward to the agent on web's node"
NODE=$(shop get pod web -o jsonpath='{.spec.nodeName}')
AGENT=$(kubectl -n sidewall get pod -l app.kubernetes.io/name=sidewall-agent \
  --field-selector spec.nodeName="$NODE" -o jsonpath='{.items[0].metadata.name}')
kubectl -n sidewall port-forward "pod/$AGENT" 4246:4246 >/dev/null 2>&1 &
PF=$!
trap 'kill $PF 2>/dev/null || true' EXIT
sleep 2
make -s bin/hubble >/dev/null
bin/hubble observe --server localhost:4246 --namespace shop --verdict DROPPED --last 20 || true

echo
if ((fails)); then
  echo "$fails result(s) did not match the expectation (see MISMATCH above)"; exit 1
fi
echo "every result matched. Explore with kubectl (context kind-$CLUSTER); 'demo/kind/run.sh delete' removes the cluster."
