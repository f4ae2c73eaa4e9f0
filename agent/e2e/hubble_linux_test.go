package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/cilium/pkg/k8s/client/clientset/versioned"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"

	"github.com/sidewall/sidewall/hack/harness"
	"github.com/sidewall/sidewall/hack/harness/agentnode"
	"github.com/sidewall/sidewall/hack/harness/localnode"
)

// denyWebToLogging makes Cilium drop what sidewall allows the sidecar:
// Cilium's deny rules win over every allow, the generated CNP's included.
const denyWebToLogging = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-web-to-logging}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egressDeny:
  - toEndpoints: [{matchLabels: {app: logging}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`

// observeSidewall runs the stock CLI against the sidewall agent's Hubble
// and returns the flows.
func observeSidewall(t *testing.T, n *agentnode.Node, args ...string) []*flowpb.Flow {
	t.Helper()
	bin, err := harness.Tool("hubble")
	if err != nil {
		t.Fatal(err)
	}
	args = append([]string{"observe", "--server", n.HubbleAddr(), "-o", "jsonpb", "--last", "100000"}, args...)
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		t.Fatalf("hubble %s: %v", strings.Join(args, " "), err)
	}
	var flows []*flowpb.Flow
	for line := range bytes.Lines(out) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var resp observerpb.GetFlowsResponse
		if err := protojson.Unmarshal(line, &resp); err != nil {
			t.Fatalf("parse %q: %v", line, err)
		}
		if f := resp.GetFlow(); f != nil {
			flows = append(flows, f)
		}
	}
	return flows
}

// joinOf is the join extension of a flow Cilium sent ("" for sidewall's
// own flows, which carry no such field).
func joinOf(f *flowpb.Flow) string {
	var st structpb.Struct
	if f.GetExtensions() == nil || f.GetExtensions().UnmarshalTo(&st) != nil {
		return ""
	}
	return st.GetFields()["join"].GetStringValue()
}

func containerOf(ep *flowpb.Endpoint) string {
	for _, l := range ep.GetLabels() {
		if c, ok := strings.CutPrefix(l, "k8s:sidewall.io/container="); ok {
			return c
		}
	}
	return ""
}

// ciliumFlowsNamed: Cilium's own flows of the web pod, re-served by
// sidewall with the container named, through the stock CLI.
func ciliumFlowsNamed(t *testing.T, n *agentnode.Node, cc versioned.Interface, certs hubbleTLS, peerNS string, web, logging, payments *localnode.Pod) {
	since := time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano)
	bin, err := harness.Tool("hubble")
	if err != nil {
		t.Fatal(err)
	}
	// What Cilium's Hubble reports, which the source checks (>= 1.16).
	if out, err := exec.Command(bin, "status", "--server", "unix://"+n.Local.HubbleSocket(), "-o", "json").Output(); err != nil || !strings.Contains(string(out), `"version":"cilium v1.20.2+g`) {
		t.Errorf("Cilium's Hubble status: %v %s", err, out)
	}
	dialDropped := func(container string, peer *localnode.Pod) {
		t.Helper()
		err := n.Dial(web, container, peer, "8080")
		if err == nil || errors.Is(err, syscall.EPERM) {
			t.Fatalf("%s -> %s:8080: %v, want Cilium to drop it (a timeout)", container, peer.Name, err)
		}
	}
	// Forwarded by Cilium: the sidecar to logging.
	for range 3 {
		if err := n.Dial(web, "log-shipper", logging, "8080"); err != nil {
			t.Fatalf("log-shipper -> logging:8080: %v", err)
		}
	}
	// Dropped by Cilium (its default deny): the app to payments.
	dialDropped("app", payments)
	// Dropped by Cilium's deny rule, allowed by sidewall: the sidecar.
	applyCNP(t, n, cc, denyWebToLogging)
	waitCiliumDrops(t, n, web, "log-shipper", logging, "8080")

	isCilium := func(f *flowpb.Flow) bool { return joinOf(f) != "" }
	var shipperFlows []*flowpb.Flow
	waitFor(t, "Cilium's FORWARDED and DROPPED flows of log-shipper through sidewall", func() error {
		shipperFlows = observeSidewall(t, n, "--since", since, "--from-label", "sidewall.io/container=log-shipper")
		var fwd, drop bool
		for _, f := range shipperFlows {
			if !isCilium(f) || f.GetDestination().GetPodName() != "logging" {
				continue
			}
			fwd = fwd || f.GetVerdict() == flowpb.Verdict_FORWARDED
			drop = drop || f.GetVerdict() == flowpb.Verdict_DROPPED
		}
		if !fwd || !drop {
			return fmt.Errorf("forwarded %t, dropped %t among %d flows", fwd, drop, len(shipperFlows))
		}
		return nil
	})
	for _, f := range shipperFlows {
		if containerOf(f.GetSource()) != "log-shipper" {
			t.Errorf("--from-label sidewall.io/container=log-shipper returned a flow of %q: %v", containerOf(f.GetSource()), f)
		}
	}
	appFlows := observeSidewall(t, n, "--since", since, "--from-label", "sidewall.io/container=app")
	if !slices.ContainsFunc(appFlows, func(f *flowpb.Flow) bool {
		return isCilium(f) && f.GetVerdict() == flowpb.Verdict_DROPPED && f.GetDestination().GetPodName() == "payments"
	}) {
		t.Errorf("--from-label sidewall.io/container=app: no Cilium drop of app -> payments among %d flows", len(appFlows))
	}
	for _, f := range appFlows {
		if c := containerOf(f.GetSource()); c != "app" {
			t.Errorf("--from-label sidewall.io/container=app returned a flow of %q: %v", c, f)
		}
	}

	// The default output names the container next to Cilium's verdict.
	out, err := exec.Command(bin, "observe", "--server", n.HubbleAddr(), "--last", "100000", "--since", since,
		"--from-label", "sidewall.io/container=log-shipper", "--verdict", "DROPPED").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "DROPPED") || !strings.Contains(string(out), "container from log-shipper") {
		t.Errorf("compact output of the sidecar's drop does not name it:\n%s", out)
	}
	t.Logf("stock hubble observe through sidewall, Cilium's drop of the sidecar:\n%s", firstLines(string(out), 3))

	// The share of the web pod's Cilium flows the join names correctly:
	// the test knows which container made each connection from where it
	// went (the sidecar alone may reach logging, the app payments).
	correct, wrong, none := measureJoin(t, n, since, logging, payments)
	total := correct + wrong + none
	t.Logf("join of Cilium's flows of the web pod: %d named correctly, %d wrongly, %d not joined, of %d (%.0f%% correct)",
		correct, wrong, none, total, 100*float64(correct)/float64(max(total, 1)))
	if wrong > 0 || total == 0 || correct*10 < total*9 {
		t.Errorf("join: %d correct, %d wrong, %d none of %d; want none wrong and at least 90%% correct", correct, wrong, none, total)
	}

	// Through Hubble Relay (the real one, over Hubble's mTLS, its peer
	// service the agent's), the same: the sidecar's drop names it. The
	// Peer service lists every agent the peer Service's EndpointSlices
	// hold: this one, and one of a node-b that does not answer.
	peerSlices(t, n, peerNS, n.Agent.Hubble.TLSAddr().(*net.TCPAddr))
	relay := harness.StartHubbleRelay(t, n.Agent.Hubble.TLSAddr().String(), "default", certs.ca, certs.clientCert, certs.clientKey)
	relayDrop := func(relay *harness.HubbleRelay) []string {
		var uuids []string
		waitFor(t, "the sidecar's Cilium drop through Relay", func() error {
			uuids = nil
			out, err := exec.Command(bin, "observe", "--server", relay.Addr, "-o", "jsonpb", "--last", "100000", "--since", since,
				"--from-label", "sidewall.io/container=log-shipper", "--verdict", "DROPPED").Output()
			if err != nil {
				return fmt.Errorf("hubble observe through Relay: %v", err)
			}
			found := false
			for line := range bytes.Lines(out) {
				var resp observerpb.GetFlowsResponse
				if protojson.Unmarshal(line, &resp) != nil || resp.GetFlow() == nil {
					continue
				}
				f := resp.GetFlow()
				uuids = append(uuids, f.GetUuid())
				found = found || (joinOf(f) != "" && f.GetDestination().GetPodName() == "logging" && containerOf(f.GetSource()) == "log-shipper")
			}
			if !found {
				return fmt.Errorf("no Cilium drop of log-shipper among %d flows", len(uuids))
			}
			return nil
		})
		return uuids
	}
	viaRelay := relayDrop(relay)
	waitFor(t, "Relay to list both agents", func() error {
		st, _ := exec.Command(bin, "status", "--server", relay.Addr).CombinedOutput()
		nodes, _ := exec.Command(bin, "list", "nodes", "--server", relay.Addr).CombinedOutput()
		if !strings.Contains(string(st), "Connected Nodes: 1/2") || !strings.Contains(string(nodes), "node-b") || !strings.Contains(string(nodes), n.Local.Name()) {
			return fmt.Errorf("hubble status:\n%s\nhubble list nodes:\n%s", st, nodes)
		}
		return nil
	})
	// Relay restarts: it finds the agent again, and serves each flow once.
	relay2 := harness.StartHubbleRelay(t, n.Agent.Hubble.TLSAddr().String(), "default", certs.ca, certs.clientCert, certs.clientKey)
	viaRelay2 := relayDrop(relay2)
	dup := map[string]int{}
	for _, id := range viaRelay2 {
		dup[id]++
		if dup[id] == 2 {
			t.Errorf("flow %s twice through the restarted Relay", id)
		}
	}
	if len(viaRelay2) < len(viaRelay) {
		t.Errorf("restarted Relay serves %d of the %d flows", len(viaRelay2), len(viaRelay))
	}
	t.Logf("through Hubble Relay: %d sidecar drops before its restart, %d after, each once", len(viaRelay), len(viaRelay2))

	// The metrics count the joins.
	rec := httptest.NewRecorder()
	n.Agent.Metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{`sidewall_hubble_cilium_flows_total{join="5-tuple"}`, "sidewall_hubble_cilium_connected 1", "sidewall_hubble_join_entries"} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if s := n.Agent.Joiner.Stats(); s.Tuple == 0 || s.Entries == 0 {
		t.Errorf("join stats %+v", s)
	}

	// Cilium restarts: the stream resumes, no flow comes twice.
	src := n.Agent.CiliumHubble
	streams := src.Streams()
	if err := n.Local.RestartCilium(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the Cilium stream to resume", func() error {
		if s := src.Streams(); s <= streams {
			return fmt.Errorf("%d streams, was %d", s, streams)
		}
		if _, err := src.UpstreamStatus(); err != nil {
			return err
		}
		return nil
	})
	st, err := exec.Command(bin, "status", "--server", n.HubbleAddr()).Output()
	if err != nil || !strings.Contains(string(st), "Connected Nodes: 2/2") {
		t.Errorf("hubble status after the Cilium restart: %v\n%s", err, st)
	}
	after := time.Now()
	waitFor(t, "Cilium's drop of the app, after its restart, through sidewall", func() error {
		dialDropped("app", payments)
		for _, f := range observeSidewall(t, n, "--since", after.UTC().Format(time.RFC3339Nano), "--from-label", "sidewall.io/container=app", "--verdict", "DROPPED") {
			if isCilium(f) && f.GetDestination().GetPodName() == "payments" {
				return nil
			}
		}
		return errors.New("not yet")
	})
	seen := map[string]int{}
	for _, f := range observeSidewall(t, n, "--since", since) {
		if isCilium(f) {
			seen[f.GetUuid()]++
		}
	}
	for id, c := range seen {
		if c > 1 {
			t.Errorf("Cilium flow %s served %d times", id, c)
		}
	}
	t.Logf("%d Cilium flows served since the subtest began, each once, across a Cilium restart", len(seen))
}

// measureJoin classifies the web pod's Cilium flows since the time:
// named correctly, wrongly, or not joined.
func measureJoin(t *testing.T, n *agentnode.Node, since string, logging, payments *localnode.Pod) (correct, wrong, none int) {
	t.Helper()
	want := map[string]string{logging.IP.String(): "log-shipper", payments.IP.String(): "app"}
	for _, f := range observeSidewall(t, n, "--since", since, "--pod", n.Namespace+"/web") {
		if joinOf(f) == "" {
			continue
		}
		var peer, got string
		switch "web" {
		case f.GetSource().GetPodName():
			peer, got = f.GetIP().GetDestination(), containerOf(f.GetSource())
		case f.GetDestination().GetPodName():
			peer, got = f.GetIP().GetSource(), containerOf(f.GetDestination())
		default:
			continue
		}
		exp, known := want[peer]
		if !known {
			continue
		}
		switch got {
		case exp:
			correct++
		case "":
			none++
		default:
			wrong++
			t.Logf("wrongly joined: %s, want %s: %v", got, exp, f)
		}
	}
	return correct, wrong, none
}

func firstLines(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	return strings.Join(lines[:min(n, len(lines))], "")
}

type hubbleTLS struct{ ca, cert, key, clientCert, clientKey string }

// relayCerts are Hubble's TLS files for the agent and Relay.
func relayCerts(t *testing.T) hubbleTLS {
	var c hubbleTLS
	c.ca, c.cert, c.key, c.clientCert, c.clientKey = harness.HubbleCerts(t, "default")
	return c
}

// peerSlices creates the EndpointSlices of the agents' peer Service: the
// test's agent (its TLS port on the node's address) and a node-b whose agent is
// down (a port nothing listens on).
func peerSlices(t *testing.T, n *agentnode.Node, ns string, agentAddr *net.TCPAddr) {
	t.Helper()
	cs, err := kubernetes.NewForConfig(n.Env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	ip := agentAddr.IP.String()
	dead, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	deadPort := dead.Addr().(*net.TCPAddr).Port
	dead.Close()
	for i, ep := range []struct {
		node string
		port int
	}{{n.Local.Name(), agentAddr.Port}, {"node-b", deadPort}} {
		p, name, proto := int32(ep.port), "hubble-tls", corev1.ProtocolTCP
		sl := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: fmt.Sprintf("hubble-peer-%d", i), Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "hubble-peer"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, NodeName: &ep.node}},
			Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &p, Protocol: &proto}},
		}
		if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, sl, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}
