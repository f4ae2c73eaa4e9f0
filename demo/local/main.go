// Command local is sidewall's one-command local demo (`make demo`): on this
// machine, as root and without a cluster, it shows that one container of a
// pod can be held to a network policy that its sibling is not.
//
// It starts a real control plane (kube-apiserver and etcd from bin/k8s) with
// sidewall's and Cilium's CRDs, runs sidewall's controller and node agent in
// this process, and plays the kubelet of one node (hack/harness/localnode): real
// cgroups, a real network namespace per pod and real processes. In
// namespace `shop` the pod `web` runs an `app` container (HTTP on 8080, an
// admin port on 9090) and a `log-shipper` native sidecar; `logging` and
// `payments` are its peers. The policy (policy.yaml, the same as
// demo/shop/policy.yaml) lets the log shipper send only HTTP POST /ingest to
// logging:8080, and lets only the app itself reach its admin port.
//
// It then prints the policy, the CiliumNetworkPolicy the controller
// generated from it, the policies' status, a matrix of real connections
// made by processes in those containers with the expected and the actual
// result, and the stock `hubble observe` CLI's view of the denied flows,
// served by the agent. It exits 0 only when every actual result is the
// expected one, and removes everything it made (pods, cgroups, network
// namespaces, processes, BPF pins, the control plane) on success, on failure
// and on Ctrl-C. With --keep it stays up until Ctrl-C so kubectl and hubble
// can be tried by hand.
//
// What it cannot show here: the HTTP rule (POST /ingest only) is enforced by
// Cilium's Envoy in a cluster, and no Cilium runs here, so the demo shows the
// generated CiliumNetworkPolicy with its L7 rule instead of an Envoy 403
// (demo/kind shows that on a machine with Docker).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout)
	stop()
	os.Exit(code)
}
