package hubble

import (
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/sidewall/sidewall/hack/harness"
)

// TestRelayAggregatesSidewall runs the real hubble-relay (built from the
// pinned cilium module) with its --peer-service pointed at a sidewall
// Hubble server, over Hubble's mTLS, and the stock CLI through Relay.
func TestRelayAggregatesSidewall(t *testing.T) {
	harness.RequireIntegration(t)
	ca, cert, key, ccert, ckey := harness.HubbleCerts(t, "default")
	tlsCfg, err := ServerTLS(nil, []string{ca}, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	var s *testServer
	s = startServer(t, Options{MaxFlows: 4095, TLSAddress: "127.0.0.1:0", TLS: tlsCfg, NodeName: "node-a",
		Peers: func() []Peer {
			return []Peer{{Name: PeerName("node-a", "default"), Address: s.TLSAddr().String(), TLSServerName: TLSServerName("node-a", "default")}}
		}})
	j := NewJoiner(nil, 0, 0)
	remote := netip.AddrPortFrom(worldAddr, 443)
	j.Learn(ProtoTCP, netip.AddrPortFrom(podWeb, 40001), remote, shipper)
	j.Learn(ProtoTCP, netip.AddrPortFrom(podWeb, 40002), remote, appRef)
	now := time.Now().Add(-time.Second)
	for i, f := range []*flowpb.Flow{
		ciliumFlow(now, netip.AddrPortFrom(podWeb, 40001), remote, "web", "", flowpb.Verdict_DROPPED),
		ciliumFlow(now.Add(time.Millisecond), netip.AddrPortFrom(podWeb, 40002), remote, "web", "", flowpb.Verdict_FORWARDED),
	} {
		f.NodeName = "node-a"
		f.Uuid = []string{"a", "b"}[i]
		s.PublishJoined(f, func(f *flowpb.Flow) { j.Join(f) })
	}
	publishAll(t, s, testEvents(time.Now())[2:3]) // sidewall's own drop

	relay := harness.StartHubbleRelay(t, s.TLSAddr().String(), "default", ca, ccert, ckey)
	listen := relay.Addr

	var out string
	waitFor(t, "Relay to connect to the sidewall server", func() bool {
		cmd := exec.Command(hubbleBin(t), "status", "--server", listen)
		cmd.Env = hubbleEnv(t)
		b, _ := cmd.CombinedOutput()
		out = string(b)
		return strings.Contains(out, "Connected Nodes: 1/1")
	})
	// Through Relay, the container of Cilium's flows is there, and the
	// label filter selects it.
	var ports []uint32
	for _, f := range parseJSON(t, hubble(t, "observe", "--server", listen, "-o", "json", "--from-label", "sidewall.io/container=log-shipper")) {
		ports = append(ports, f.GetL4().GetTCP().GetSourcePort())
		if f.GetNodeName() != "node-a" {
			t.Errorf("flow through Relay from node %q", f.GetNodeName())
		}
	}
	if !slices.Equal(ports, []uint32{40000, 40001}) {
		t.Errorf("--from-label sidewall.io/container=log-shipper through Relay: source ports %v, want sidewall's own (40000) and Cilium's flow (40001), in time order", ports)
	}
	compact := hubble(t, "observe", "--server", listen, "--from-label", "sidewall.io/container=app")
	if !strings.Contains(compact, "container from app") || strings.Contains(compact, "log-shipper") {
		t.Errorf("compact output through Relay:\n%s", compact)
	}
	nodes := hubble(t, "list", "nodes", "--server", listen)
	if !strings.Contains(nodes, "node-a") || !strings.Contains(nodes, "Connected") {
		t.Errorf("hubble list nodes through Relay:\n%s", nodes)
	}
}
