package hubble

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"time"

	peerpb "github.com/cilium/cilium/api/v1/peer"
	"github.com/cilium/cilium/pkg/crypto/certloader"
	ciliumdefaults "github.com/cilium/cilium/pkg/defaults"
	ciliumpeer "github.com/cilium/cilium/pkg/hubble/peer"
	nodetypes "github.com/cilium/cilium/pkg/node/types"
)

// Peer is a Hubble server that Hubble Relay should aggregate: a sidewall
// agent.
type Peer struct {
	// Name is the node's name, as Cilium's Peer service names it
	// (PeerName).
	Name string
	// Address is host:port of the peer's Hubble API (its TLS listener).
	Address string
	// TLSServerName is the name Relay verifies the peer's certificate
	// against (TLSServerName); empty when the peer serves without TLS.
	TLSServerName string
}

// PeerName is what Cilium's Peer service calls a node: its name, or
// "cluster/name" outside the default cluster (Cilium's Node.Fullname).
func PeerName(node, cluster string) string {
	if cluster == "" {
		cluster = ciliumdefaults.ClusterName
	}
	n := nodetypes.Node{Name: node, Cluster: cluster}
	return n.Fullname()
}

// TLSServerName is Hubble's TLS server name of a node's Hubble API,
// <node>.<cluster>.hubble-grpc.cilium.io (Cilium's own function).
func TLSServerName(node, cluster string) string { return ciliumpeer.TLSServerName(node, cluster) }

// peerPoll is how often a Notify stream looks for changed peers.
var peerPoll = 5 * time.Second

// peerService is Hubble's Peer service (the one Relay's --peer-service
// reads) listing Options.Peers.
type peerService struct {
	peerpb.UnimplementedPeerServer
	s *Server
}

func (p peerService) Notify(_ *peerpb.NotifyRequest, stream peerpb.Peer_NotifyServer) error {
	known := map[string]Peer{}
	t := time.NewTicker(peerPoll)
	defer t.Stop()
	for {
		cur := map[string]Peer{}
		for _, pr := range p.s.opts.Peers() {
			cur[pr.Name] = pr
		}
		for name, pr := range cur {
			old, ok := known[name]
			switch {
			case !ok:
				if err := stream.Send(changeOf(pr, peerpb.ChangeNotificationType_PEER_ADDED)); err != nil {
					return err
				}
			case old != pr:
				if err := stream.Send(changeOf(pr, peerpb.ChangeNotificationType_PEER_UPDATED)); err != nil {
					return err
				}
			}
		}
		for name, pr := range known {
			if _, ok := cur[name]; !ok {
				if err := stream.Send(changeOf(pr, peerpb.ChangeNotificationType_PEER_DELETED)); err != nil {
					return err
				}
			}
		}
		known = cur
		select {
		case <-stream.Context().Done():
			return nil
		case <-p.s.done:
			return nil
		case <-t.C:
		}
	}
}

func changeOf(p Peer, t peerpb.ChangeNotificationType) *peerpb.ChangeNotification {
	cn := &peerpb.ChangeNotification{Name: p.Name, Address: p.Address, Type: t}
	if p.TLSServerName != "" {
		cn.Tls = &peerpb.TLS{ServerName: p.TLSServerName}
	}
	return cn
}

// ServerTLS is the TLS config of a Hubble API served to Relay, built as
// Cilium's Hubble builds its own (certloader: the files are re-read when
// they change, mTLS when client CAs are given, TLS 1.3).
func ServerTLS(log *slog.Logger, clientCAFiles []string, certFile, keyFile string) (*tls.Config, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w, err := certloader.NewWatchedServerConfig(log, clientCAFiles, certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("hubble TLS: %w", err)
	}
	return w.ServerConfig(&tls.Config{MinVersion: tls.VersionTLS13}), nil
}
