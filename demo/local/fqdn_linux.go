package main

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/hack/harness/localnode"
)

// fqdnPolicyYAML is the toFQDNs section's policy; section 1 applies it
// with the others.
//
//go:embed fqdn-policy.yaml
var fqdnPolicyYAML string

// The names the shop's DNS server (pod dns) answers: the SaaS endpoint's
// with the saas pod's address, the tracker's with the tracker pod's.
const (
	saasName    = "otlp.traces.example-saas.test"
	trackerName = "collect.tracker.example.test"
	dnsPort     = 53
)

// fqdnRow is one request by name of the toFQDNs section. The expectation
// comes from the policy's meaning, stated in why.
type fqdnRow struct {
	container, method, name, path string
	peer                          string // the pod the name resolves to
	allow                         bool
	why                           string
}

var fqdnRows = []fqdnRow{
	{"telemetry", "POST", saasName, "/v1/traces", "saas", true,
		"the name matches *.traces.example-saas.test and telemetry looked it up itself: sidewall learned the address for telemetry before the answer reached it"},
	{"telemetry", "POST", trackerName, "/upload", "tracker", false,
		"no toFQDNs rule of telemetry matches the name: the answer is passed on, its address is not learned, connect() is refused"},
	{"app", "POST", trackerName, "/upload", "tracker", true,
		"no policy restricts the app's egress: a name its sidecar may not reach is still the app's to reach"},
}

// fqdnPolicy decodes fqdnPolicyYAML strictly.
func fqdnPolicy() (*v1alpha1.ContainerNetworkPolicy, error) {
	p := &v1alpha1.ContainerNetworkPolicy{}
	if err := yaml.UnmarshalStrict([]byte(fqdnPolicyYAML), p); err != nil {
		return nil, fmt.Errorf("fqdn-policy.yaml: %w", err)
	}
	p.Namespace = namespace
	return p, nil
}

// showFQDN makes requests by name from both containers of the orders pod,
// each looking its name up through the shop's DNS server first, as a
// pod's resolver does.
func (d *demo) showFQDN(ctx context.Context) error {
	d.heading("6. toFQDNs: a sidecar may reach one external name, by its own lookup (fqdn-policy.yaml)")
	// The agent redirects the orders pod's DNS to its proxy there and
	// knows telemetry's toFQDNs selectors.
	telemetry, err := d.pods["orders"].Container("telemetry")
	if err != nil {
		return err
	}
	if err := poll(ctx, "agent's DNS proxy for shop/orders", func() (bool, error) {
		st := d.agent.State()
		if st == nil || !st.Containers[telemetry.CgroupID].FQDN {
			return false, nil
		}
		ps, err := d.dp.DNSProxies()
		return len(ps) > 0, err
	}); err != nil {
		return err
	}

	server := netip.AddrPortFrom(d.pods["dns"].IP, dnsPort).String()
	w := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "FROM\tTO (by name)\tRESOLVED TO\tEXPECTED\tACTUAL\tRESULT")
	for _, r := range fqdnRows {
		peer := d.pods[r.peer].IP
		url := fmt.Sprintf("http://%s:8080%s", r.name, r.path)
		status, body, addrs, err := d.node.HTTPByName(ctx, d.pods["orders"], r.container, server, r.method, url, requestTimeout)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var connErr *localnode.ConnError
		if err != nil && !errors.As(err, &connErr) {
			return fmt.Errorf("request %s from orders/%s: %w", url, r.container, err)
		}
		resolved := "(lookup failed)"
		if len(addrs) > 0 {
			resolved = addrs[0].String()
		}
		allowed, actual := outcome(status, body, connErr)
		expected := "denied"
		if r.allow {
			expected = "allowed"
		}
		// The lookup itself is allowed to everyone: a wrong or missing
		// answer is a mismatch whatever the connection did.
		ok := allowed != nil && *allowed == r.allow && slices.Contains(addrs, peer)
		from, to := "orders/"+r.container, r.method+" "+r.name+":8080 "+r.path
		ch := check{name: from + " → " + to, expected: expected + ", resolved to " + peer.String(), actual: actual + ", resolved to " + resolved, ok: ok}
		d.checks = append(d.checks, ch)
		result := "ok"
		if !ok {
			result = "MISMATCH"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", from, to, resolved, expected, actual, result)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(d.out, "\nWhy:")
	for _, r := range fqdnRows {
		fmt.Fprintf(d.out, "  orders/%s → %s: %s\n", r.container, r.name, r.why)
	}
	fmt.Fprintln(d.out, "\nCilium's toFQDNs is per pod: once any container resolved a name, the whole pod may reach it.")
	fmt.Fprintln(d.out, "sidewall learns per container, from the lookups that container made.")
	fmt.Fprintln(d.out)
	if d.cilium {
		if err := d.showCiliumFQDN(ctx); err != nil {
			return err
		}
	}
	return d.showFQDNHubble(ctx)
}

// showCiliumFQDN prints what Cilium's own DNS proxy learned for the pod
// (`cilium-dbg fqdn cache list`): the generated CNP's DNS rule put it in
// the path of the lookups sidewall's proxy forwarded from the pod's IP.
func (d *demo) showCiliumFQDN(ctx context.Context) error {
	saas := d.pods["saas"].IP.String()
	var cache []string
	learned := false
	err := poll(ctx, "Cilium's DNS proxy learning "+saasName, func() (bool, error) {
		lookups, err := d.node.CiliumFQDNCache(ctx)
		if err != nil {
			return false, err
		}
		cache, learned = nil, false
		for _, l := range lookups {
			cache = append(cache, fmt.Sprintf("%d\t%s\t%s\t%d\t%s", l.EndpointID, l.Fqdn, strings.Join(l.Ips, ","), l.TTL, l.Source))
			learned = learned || (l.Fqdn == saasName+"." && slices.Contains(l.Ips, saas))
		}
		return learned, nil
	})
	if err != nil && ctx.Err() != nil {
		return err
	}
	fmt.Fprintln(d.out, "Cilium's DNS proxy, in the path by the generated CNP's DNS rule, learned for the pod (cilium-dbg fqdn cache list):")
	w := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "ENDPOINT\tFQDN\tIPS\tTTL\tSOURCE")
	for _, l := range cache {
		fmt.Fprintln(w, l)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(d.out, "At pod level Cilium learns every lookup of the pod's containers, the name the telemetry sidecar is")
	fmt.Fprintln(d.out, "refused included; sidewall's per-container check is what refuses it.")
	d.addCheck("Cilium's DNS proxy learned "+saasName+" → "+saas+" for the orders pod", "learned", learned, "learned", "not learned")
	fmt.Fprintln(d.out)
	return nil
}

// showFQDNHubble shows, with the stock hubble CLI against sidewall-agent,
// telemetry's lookups (what each answer taught it) and its refused
// connection, whose summary names the toFQDNs rule it missed.
func (d *demo) showFQDNHubble(ctx context.Context) error {
	dnsArgs := []string{"observe", "--server", d.hubbleAt, "--last", "20", "--protocol", "dns", "--to-pod", namespace + "/orders", "--to-label", "sidewall.io/container=telemetry"}
	dropArgs := []string{"observe", "--server", d.hubbleAt, "--last", "1", "--verdict", "DROPPED", "--to-ip", d.pods["tracker"].IP.String(), "-o", "jsonpb"}
	dnsJSON := append(slices.Clone(dnsArgs), "-o", "jsonpb")
	var dnsRaw string
	var lookup, drop *flowpb.Flow
	err := poll(ctx, "hubble showing telemetry's lookups and its refused connection", func() (bool, error) {
		var err error
		if dnsRaw, err = d.runHubble(ctx, dnsJSON...); err != nil {
			return false, err
		}
		lookup = nil
		for _, f := range parseFlows(dnsRaw) {
			if q := f.GetL7().GetDns(); q != nil && q.GetQuery() == saasName+"." && slices.Contains(q.GetIps(), d.pods["saas"].IP.String()) {
				lookup = f
			}
		}
		raw, err := d.runHubble(ctx, dropArgs...)
		if err != nil {
			return false, err
		}
		drop = nil
		if flows := parseFlows(raw); len(flows) > 0 {
			drop = flows[len(flows)-1]
		}
		return lookup != nil && drop != nil, nil
	})
	if err != nil && ctx.Err() != nil {
		return err
	}
	// The compact form does not print the answer: jq picks the query, its
	// addresses and the container from the JSON form.
	dnsOut, shown, err := viaJQ(ctx, jqDNS, dnsRaw)
	if err != nil {
		return err
	}
	if shown == "" {
		if dnsOut, err = d.runHubble(ctx, dnsArgs...); err != nil {
			return err
		}
	}
	fmt.Fprintf(d.out, "$ hubble %s %s\n%s\n", strings.Join(dnsArgs, " "), shown, orNone(dnsOut))
	summary := drop.GetSummary()
	fmt.Fprintf(d.out, "$ hubble %s   # its summary:\n%s\n\n", strings.Join(dropArgs, " "), orNone(summary))
	d.addCheck("hubble shows telemetry's lookup of "+saasName+" and its answer", "shown", lookup != nil, "shown", "not shown")
	named := strings.Contains(summary, "toFQDNs[0] (*.traces.example-saas.test)") && strings.Contains(summary, trackerName)
	d.addCheck("the refused connection's summary names the missed toFQDNs rule and the name looked up", "named", named, "named", "not named")
	return nil
}

// jqDNS prints an L7 DNS flow: when, which container of which pod got
// the answer, the name and what it resolved to.
const jqDNS = `.flow | "\(.time[11:23]) \(.destination.namespace)/\(.destination.pod_name) [\(.destination.labels[] | select(startswith("k8s:sidewall.io/container=")) | ltrimstr("k8s:"))] DNS \(.l7.type) \(.l7.dns.query) -> \(.l7.dns.ips // [] | join(","))"`

// parseFlows reads the hubble CLI's jsonpb output, one response a line.
func parseFlows(raw string) []*flowpb.Flow {
	var out []*flowpb.Flow
	for line := range bytes.Lines([]byte(raw)) {
		var resp observerpb.GetFlowsResponse
		if len(bytes.TrimSpace(line)) == 0 || protojson.Unmarshal(line, &resp) != nil {
			continue
		}
		if f := resp.GetFlow(); f != nil {
			out = append(out, f)
		}
	}
	return out
}
