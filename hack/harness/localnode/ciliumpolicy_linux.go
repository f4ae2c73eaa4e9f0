package localnode

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	policyapi "github.com/cilium/cilium/api/v1/client/policy"
	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/cilium/cilium/api/v1/models"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	ciliumclient "github.com/cilium/cilium/pkg/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// CiliumRefusal is a CiliumNetworkPolicy the Cilium agent would not
// import, with the agent's own reason.
type CiliumRefusal struct {
	Namespace, Name string
	// Message is the error cilium-agent logged for it.
	Message string
}

func (r *CiliumRefusal) Error() string {
	return fmt.Sprintf("cilium-agent refused CiliumNetworkPolicy %s/%s: %s", r.Namespace, r.Name, r.Message)
}

// CiliumPolicyOutcome reports what the Cilium agent last did with the
// CiliumNetworkPolicy ns/name at or after since: imported (true, nil),
// refused (false, *CiliumRefusal) or nothing yet (false, nil). It reads the
// agent's log, the one place Cilium 1.20 reports a refused policy (the
// agent no longer writes CNP status).
func (n *Node) CiliumPolicyOutcome(ns, name string, since time.Time) (bool, error) {
	if n.cilium == nil {
		return false, errors.New("the node runs no Cilium")
	}
	f, err := os.Open(n.cilium.logPath)
	if err != nil {
		return false, err
	}
	defer f.Close()
	var imported bool
	var refused *CiliumRefusal
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "CiliumNetworkPolicy") || !strings.Contains(line, name) {
			continue
		}
		kv := logfmt(line)
		if kv["ciliumNetworkPolicyName"] != name || kv["k8sNamespace"] != ns {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, kv["time"])
		if err != nil || at.Before(since) {
			continue
		}
		switch kv["msg"] {
		case "Imported CiliumNetworkPolicy":
			imported, refused = true, nil
		case "Unable to add CiliumNetworkPolicy":
			imported, refused = false, &CiliumRefusal{Namespace: ns, Name: name, Message: kv["error"]}
		}
	}
	if err := sc.Err(); err != nil {
		return false, err
	}
	if refused != nil {
		return false, refused
	}
	return imported, nil
}

// WaitCiliumPolicy waits until the Cilium agent imports the
// CiliumNetworkPolicy ns/name, written at or after since, and its policy
// repository holds the policy's rules: Cilium logs "Imported" when it has
// queued the rules to its policy importer, which adds them to the
// repository a moment later. It returns a *CiliumRefusal at once if the
// agent refuses the policy.
func (n *Node) WaitCiliumPolicy(ctx context.Context, ns, name string, since time.Time) error {
	imported := false
	for {
		if !imported {
			ok, err := n.CiliumPolicyOutcome(ns, name, since)
			if err != nil {
				return err
			}
			imported = ok
		}
		if imported {
			rules, err := n.CiliumPolicyRules(ctx, ns, name)
			if err != nil || rules > 0 {
				return err
			}
		}
		select {
		case <-ctx.Done():
			if imported {
				return fmt.Errorf("cilium-agent imported CiliumNetworkPolicy %s/%s, but its policy repository holds none of its rules: %w", ns, name, ctx.Err())
			}
			return fmt.Errorf("cilium-agent has not imported CiliumNetworkPolicy %s/%s: %w", ns, name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// logfmt splits one line of Cilium's slog text log into its keys and
// values (quoted values unquoted).
func logfmt(line string) map[string]string {
	out := map[string]string{}
	for len(line) > 0 {
		line = strings.TrimLeft(line, " ")
		eq := strings.IndexByte(line, '=')
		if eq <= 0 {
			break
		}
		key := line[:eq]
		line = line[eq+1:]
		if strings.HasPrefix(line, `"`) {
			end := 1
			for end < len(line) && line[end] != '"' {
				if line[end] == '\\' {
					end++
				}
				end++
			}
			if end >= len(line) {
				break
			}
			v, err := strconv.Unquote(line[:end+1])
			if err != nil {
				v = line[1:end]
			}
			out[key] = v
			line = line[end+1:]
			continue
		}
		sp := strings.IndexByte(line, ' ')
		if sp < 0 {
			sp = len(line)
		}
		out[key] = line[:sp]
		line = line[sp:]
	}
	return out
}

// CiliumPolicyRules returns the number of rules the Cilium agent holds
// from the CiliumNetworkPolicy ns/name (GET /v1/policy, as `cilium-dbg
// policy get` asks).
func (n *Node) CiliumPolicyRules(ctx context.Context, ns, name string) (int, error) {
	api, err := n.ciliumAPI()
	if err != nil {
		return 0, err
	}
	pol, err := api.PolicyGet()
	if err != nil {
		return 0, err
	}
	var rules []struct {
		Labels []struct {
			Key   string `json:"key"`
			Value string `json:"value"`
		} `json:"labels"`
	}
	if err := json.Unmarshal([]byte(pol.Policy), &rules); err != nil {
		return 0, fmt.Errorf("GET /v1/policy: rules: %w: %s", err, pol.Policy)
	}
	count := 0
	for _, r := range rules {
		var gotName, gotNS bool
		for _, l := range r.Labels {
			gotName = gotName || l.Key == "io.cilium.k8s.policy.name" && l.Value == name
			gotNS = gotNS || l.Key == "io.cilium.k8s.policy.namespace" && l.Value == ns
		}
		if gotName && gotNS {
			count++
		}
	}
	return count, nil
}

// CiliumFQDNCache returns what the Cilium agent's DNS proxy learned (GET
// /v1/fqdn/cache, as `cilium-dbg fqdn cache list` asks): per endpoint, the
// names looked up and the addresses they resolved to.
func (n *Node) CiliumFQDNCache(ctx context.Context) ([]*models.DNSLookup, error) {
	api, err := n.ciliumAPI()
	if err != nil {
		return nil, err
	}
	resp, err := api.Policy.GetFqdnCache(policyapi.NewGetFqdnCacheParamsWithContext(ctx))
	if _, empty := errors.AsType[*policyapi.GetFqdnCacheNotFound](err); empty {
		// The cache holds nothing that matches.
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("GET /v1/fqdn/cache: %w", err)
	}
	return resp.Payload, nil
}

// WaitCiliumRedirect waits until the Cilium endpoint of the pod with
// address ip has a redirect of its egress to port to Cilium's proxy for
// the L7 protocol parser ("dns", "http"), as the endpoint's proxy
// statistics report it (GET /v1/endpoint, as `cilium-dbg endpoint get`):
// Cilium allocated the proxy port at the endpoint's regeneration. It also
// waits until the endpoint has realized the policy repository's current
// revision: that regeneration finished, the policy map included.
func (n *Node) WaitCiliumRedirect(ctx context.Context, ip netip.Addr, parser string, port int) error {
	api, err := n.ciliumAPI()
	if err != nil {
		return err
	}
	pol, err := api.PolicyGet()
	if err != nil {
		return err
	}
	for {
		eps, err := api.EndpointList()
		if err != nil {
			return err
		}
		found := false
		for _, ep := range eps {
			if ep.Status == nil || ep.Status.Networking == nil || ep.Status.Policy == nil {
				continue
			}
			if !slices.ContainsFunc(ep.Status.Networking.Addressing, func(a *models.AddressPair) bool { return a.IPv4 == ip.String() || a.IPv6 == ip.String() }) {
				continue
			}
			found = true
			if ep.Status.Policy.Realized == nil || ep.Status.Policy.Realized.PolicyRevision < pol.Revision {
				continue
			}
			for _, st := range ep.Status.Policy.ProxyStatistics {
				if st.Location == models.ProxyStatisticsLocationEgress && st.Protocol == parser && st.Port == int64(port) && st.AllocatedProxyPort != 0 {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			if !found {
				return fmt.Errorf("cilium-agent has no endpoint with address %s: %w", ip, ctx.Err())
			}
			return fmt.Errorf("cilium-agent's endpoint of %s has not realized policy revision %d with a %s redirect of egress port %d: %w", ip, pol.Revision, parser, port, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ciliumAPI is Cilium's own API client (pkg/client, which cilium-dbg
// uses) on the agent's socket.
func (n *Node) ciliumAPI() (*ciliumclient.Client, error) {
	if n.cilium == nil {
		return nil, errors.New("the node runs no Cilium")
	}
	return ciliumclient.NewClient("unix://" + n.cilium.socket())
}

// CiliumFlows returns the flows the Cilium agent's own Hubble recorded
// from since to until (zero: now) that match the filters (a flow matches
// if any filter does), oldest first.
func (n *Node) CiliumFlows(ctx context.Context, since, until time.Time, filters ...*flowpb.FlowFilter) ([]*flowpb.Flow, error) {
	if n.cilium == nil {
		return nil, errors.New("the node runs no Cilium")
	}
	conn, err := grpc.NewClient("unix://"+n.HubbleSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("cilium hubble: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req := &observerpb.GetFlowsRequest{Since: timestamppb.New(since), Whitelist: filters}
	if !until.IsZero() {
		req.Until = timestamppb.New(until)
	}
	stream, err := observerpb.NewObserverClient(conn).GetFlows(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("cilium hubble: %w", err)
	}
	var out []*flowpb.Flow
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("cilium hubble: %w", err)
		}
		if f := resp.GetFlow(); f != nil {
			out = append(out, f)
		}
	}
}
