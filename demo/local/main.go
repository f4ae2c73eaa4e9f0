// Command local is sidewall's one-command local demo (`make demo`): on this
// machine, as root and without a cluster, it shows that one container of a
// pod can be held to a network policy that its sibling is not.
//
// It starts a real control plane (kube-apiserver and etcd from bin/k8s) with
// sidewall's and Cilium's CRDs and plays the kubelet of one node
// (hack/harness/localnode): real cgroups, a real network namespace per pod
// and real processes. By default a real cilium-agent owns the node's pod
// networking (pods are wired by cilium-cni and get Cilium endpoints and
// identities); --cilium=false runs the lighter mode, in which the harness
// wires the pods and no Cilium runs. sidewall's controller and node agent
// run in this process. In namespace `shop` the pod `web` runs an `app`
// container (HTTP on 8080, an admin port on 9090) and a `log-shipper` native
// sidecar; `logging` and `payments` are its peers. The policy (policy.yaml,
// the same as demo/shop/policy.yaml) lets the log shipper send only HTTP
// POST /ingest to logging:8080, and lets only the app itself reach its admin
// port. A second pod, orders, has a telemetry sidecar that fqdn-policy.yaml
// allows one external name (toFQDNs), resolved through the shop's DNS
// server (pod dns).
//
// It then prints Cilium's endpoints and identities for the shop, the
// policy, the CiliumNetworkPolicy the controller generated from it (and
// cilium-agent's import of it), the policies' status, a matrix of real
// connections made by processes in those containers with the expected
// result, sidewall's actual one and Cilium's own verdict from its Hubble,
// and the stock `hubble observe` CLI's view of the denied flows, served by
// the agent, and of the pod's flows in Cilium's Hubble. Last come requests
// by name from the orders pod's containers, what Cilium's DNS proxy
// learned for the pod, and the sidecar's DNS flows and refused connection
// in hubble. It exits 0 only when every actual result is the expected one, and removes everything it
// made (pods, cgroups, network namespaces, the cilium-agent, processes, BPF
// pins, the control plane) on success, on failure and on Ctrl-C. With
// --keep it stays up until Ctrl-C so kubectl and hubble can be tried by
// hand.
//
// What it cannot show here: the HTTP rule (POST /ingest only) is enforced
// by Cilium's Envoy in a cluster, and no Envoy runs here, so the demo shows
// the generated CiliumNetworkPolicy with its L7 rule instead of an Envoy 403
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
