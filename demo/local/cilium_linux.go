package main

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The demo's parts that need the Cilium node: Cilium's objects for the
// shop, its import of the generated policies and its own Hubble.

// showCiliumObjects prints what `kubectl get
// ciliumendpoints,ciliumidentities -n shop` prints once Cilium has made an
// endpoint and an identity for every shop pod.
func (d *demo) showCiliumObjects(ctx context.Context) error {
	if !d.cilium {
		return nil
	}
	d.heading("Cilium's view of the shop: kubectl get ciliumendpoints,ciliumidentities -n shop")
	var ceps []ciliumv2.CiliumEndpoint
	err := poll(ctx, "a ready CiliumEndpoint with an identity for every shop pod", func() (bool, error) {
		var list ciliumv2.CiliumEndpointList
		if err := d.env.Client.List(ctx, &list, client.InNamespace(namespace)); err != nil {
			return false, fmt.Errorf("list CiliumEndpoints: %w", err)
		}
		ready := 0
		for _, c := range list.Items {
			if c.Status.State == "ready" && c.Status.Identity != nil && c.Status.Identity.ID != 0 {
				ready++
			}
		}
		ceps = list.Items
		return ready >= len(d.pods), nil
	})
	if err != nil {
		return err
	}
	sort.Slice(ceps, func(i, j int) bool { return ceps[i].Name < ceps[j].Name })
	w := tabwriter.NewWriter(d.out, 0, 0, 3, ' ', 0)
	fmt.Fprintln(w, "NAME\tSECURITY IDENTITY\tENDPOINT STATE\tIPV4\tIPV6")
	ids := map[string]bool{}
	for _, c := range ceps {
		var v4 string
		if c.Status.Networking != nil && len(c.Status.Networking.Addressing) > 0 {
			v4 = c.Status.Networking.Addressing[0].IPV4
		}
		id := strconv.FormatInt(c.Status.Identity.ID, 10)
		ids[id] = true
		fmt.Fprintf(w, "ciliumendpoint.cilium.io/%s\t%s\t%s\t%s\t\n", c.Name, id, c.Status.State, v4)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	// kubectl prints each kind as a table of its own.
	fmt.Fprintln(d.out)
	w = tabwriter.NewWriter(d.out, 0, 0, 3, ' ', 0)
	fmt.Fprintln(w, "NAME\tNAMESPACE\tAGE")
	var list ciliumv2.CiliumIdentityList
	if err := d.env.Client.List(ctx, &list); err != nil {
		return fmt.Errorf("list CiliumIdentities: %w", err)
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	var labels []string
	for _, id := range list.Items {
		if !ids[id.Name] {
			continue
		}
		fmt.Fprintf(w, "ciliumidentity.cilium.io/%s\t%s\t%s\n", id.Name, id.SecurityLabels["k8s:io.kubernetes.pod.namespace"],
			duration.HumanDuration(time.Since(id.CreationTimestamp.Time)))
		labels = append(labels, fmt.Sprintf("  %s: %s", id.Name, strings.Join(sortedLabels(id.SecurityLabels), ", ")))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(d.out, "\nTheir security labels (what Cilium's selectors, and sidewall's, match):")
	fmt.Fprintln(d.out, strings.Join(labels, "\n"))
	fmt.Fprintln(d.out, "The web pod's two containers share one endpoint and one identity: Cilium cannot tell them apart.")
	return nil
}

func sortedLabels(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// waitCiliumImported waits until the cilium-agent has imported every
// CiliumNetworkPolicy the controller generated (for the policies named in
// only, if any), written at or after since, and fails with Cilium's own
// message if it refused one.
func (d *demo) waitCiliumImported(ctx context.Context, since time.Time, only ...string) error {
	if !d.cilium {
		return nil
	}
	ps, err := d.listPolicies(ctx)
	if err != nil {
		return err
	}
	for _, p := range ps {
		name := p.Status.GeneratedPolicy
		if name == "" || (len(only) > 0 && !slices.Contains(only, p.Name)) {
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, waitLimit)
		err := d.node.WaitCiliumPolicy(wctx, namespace, name, since)
		cancel()
		if err != nil {
			return err
		}
		rules, err := d.node.CiliumPolicyRules(ctx, namespace, name)
		if err != nil {
			return fmt.Errorf("ask cilium-agent for its policy: %w", err)
		}
		fmt.Fprintf(d.out, "cilium-agent imported ciliumnetworkpolicy.cilium.io/%s (%d rule(s) in its policy repository)\n", name, rules)
	}
	return nil
}

// Cilium's verdicts, as the matrix shows them.
const (
	ciliumForwarded = "FORWARDED"
	ciliumNoFlow    = "no flow"
	ciliumLoopback  = "(loopback)"
)

// rowWindow is when one row's connection ran.
type rowWindow struct{ from, to time.Time }

// ciliumVerdicts asks Cilium's Hubble what it saw of each row's
// connection: the flows from the row's pod to its peer's pod and port in
// the row's time window. Hubble's events trail the packets a little, so it
// waits until every row Cilium should have seen shows a flow, or a short
// time passed.
func (d *demo) ciliumVerdicts(ctx context.Context, windows []rowWindow) ([]string, error) {
	out := make([]string, len(matrix))
	deadline := time.Now().Add(5 * time.Second)
	for {
		missing := false
		for i, c := range matrix {
			if c.peer == "" {
				out[i] = ciliumLoopback
				continue
			}
			flows, err := d.node.CiliumFlows(ctx, windows[i].from, windows[i].to, &flowpb.FlowFilter{
				SourcePod:       []string{namespace + "/" + c.pod},
				DestinationPod:  []string{namespace + "/" + c.peer},
				DestinationPort: []string{strconv.Itoa(c.port)},
			})
			if err != nil {
				return nil, err
			}
			out[i] = summarize(flows)
			missing = missing || out[i] == ciliumNoFlow && c.cilium != ciliumNoFlow
		}
		if !missing || time.Now().After(deadline) {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// summarize names what Cilium did with a connection's flows: DROPPED and
// why if it dropped any packet, FORWARDED if it forwarded them.
func summarize(flows []*flowpb.Flow) string {
	forwarded := false
	for _, f := range flows {
		switch f.GetVerdict() {
		case flowpb.Verdict_DROPPED:
			return "DROPPED (" + f.GetDropReasonDesc().String() + ")"
		case flowpb.Verdict_FORWARDED:
			forwarded = true
		}
	}
	if forwarded {
		return ciliumForwarded
	}
	return ciliumNoFlow
}

// showCiliumHubble shows Cilium's own Hubble for the web pod with the
// stock CLI: the flows Cilium forwarded, and none of the ones sidewall
// refused inside the pod, which never reached Cilium's datapath.
func (d *demo) showCiliumHubble(ctx context.Context) error {
	if !d.cilium {
		return nil
	}
	args := []string{"observe", "--server", "unix://" + d.node.HubbleSocket(), "--last", "30", "--from-pod", namespace + "/web", "--tcp-flags", "SYN"}
	out, err := d.runHubble(ctx, args...)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "$ hubble %s   # Cilium's own Hubble, the SYNs of the web pod's connections\n%s\n", strings.Join(args, " "), orNone(out))
	fmt.Fprintln(d.out, "Cilium's flows name the pod, not the container: both containers are the same endpoint to it.")
	fmt.Fprintln(d.out, "The connections sidewall refused with EPERM never left the pod, so Cilium shows none of them.")
	return nil
}
