package agent

import (
	"net"
	"sort"
	"strconv"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/sidewall/sidewall/agent/hubble"
)

// hubblePeers lists the sidewall agents Hubble Relay should aggregate:
// the ready endpoints of the EndpointSlices of the Service that selects
// the agents' Hubble TLS port (namespace, name), each named by its node as
// Cilium's Peer service names nodes. self is listed whatever the slices
// say, so a Relay pointed at this agent always finds it.
func (a *Agent) hubblePeers(namespace, service, cluster string, self hubble.Peer) []hubble.Peer {
	byName := map[string]hubble.Peer{self.Name: self}
	if a.slices != nil && service != "" {
		sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: service})
		slices, err := a.slices.EndpointSlices(namespace).List(sel)
		if err != nil {
			a.log.Warn("hubble peers: list endpointslices", "service", namespace+"/"+service, "err", err)
		}
		for _, sl := range slices {
			if len(sl.Ports) == 0 || sl.Ports[0].Port == nil {
				continue
			}
			port := strconv.Itoa(int(*sl.Ports[0].Port))
			for _, ep := range sl.Endpoints {
				ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
				if !ready || ep.NodeName == nil || *ep.NodeName == "" || len(ep.Addresses) == 0 {
					continue
				}
				name := hubble.PeerName(*ep.NodeName, cluster)
				if name == self.Name {
					continue
				}
				byName[name] = hubble.Peer{Name: name, Address: net.JoinHostPort(ep.Addresses[0], port),
					TLSServerName: hubble.TLSServerName(*ep.NodeName, cluster)}
			}
		}
	}
	out := make([]hubble.Peer, 0, len(byName))
	for _, p := range byName {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
