package identity

import (
	"context"
	"net/netip"
	"slices"
	"sync"

	ciliumidentity "github.com/cilium/cilium/pkg/identity"
	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/policy/api"
	policytypes "github.com/cilium/cilium/pkg/policy/types"
)

// NumericIdentity is Cilium's security identity number.
type NumericIdentity = ciliumidentity.NumericIdentity

// Peer is one IP address a source knows.
type Peer struct {
	IP       netip.Addr
	Identity NumericIdentity
	// Namespace and Name of the pod (or CiliumEndpoint) holding the IP.
	Namespace string
	Name      string
}

// Snapshot is a consistent, immutable view of a source. Do not modify it.
type Snapshot struct {
	// Peers by IP.
	Peers map[netip.Addr]Peer
	// Identities holds the labels of every identity the peers use (sorted
	// label arrays); reserved identities are not listed, see Labels.
	Identities map[NumericIdentity]labels.LabelArray
}

// Lookup returns the peer holding ip.
func (s *Snapshot) Lookup(ip netip.Addr) (Peer, bool) {
	p, ok := s.Peers[ip.Unmap()]
	return p, ok
}

// Resolve returns the peer holding ip and its identity's labels. An IP no
// source knows is outside the cluster: it resolves to the world identity,
// as Cilium resolves it.
func (s *Snapshot) Resolve(ip netip.Addr) (Peer, labels.LabelArray) {
	if p, ok := s.Lookup(ip); ok {
		l, _ := s.Labels(p.Identity)
		return p, l
	}
	l, _ := s.Labels(ciliumidentity.ReservedIdentityWorld)
	return Peer{IP: ip.Unmap(), Identity: ciliumidentity.ReservedIdentityWorld}, l
}

// Labels returns the labels of id, including Cilium's reserved identities.
func (s *Snapshot) Labels(id NumericIdentity) (labels.LabelArray, bool) {
	if l, ok := s.Identities[id]; ok {
		return l, true
	}
	if r := ciliumidentity.LookupReservedIdentity(id); r != nil {
		return r.LabelArray, true
	}
	return nil, false
}

// Select returns, sorted, the identities (known and reserved) that any of
// the selectors selects.
func (s *Snapshot) Select(selectors ...api.EndpointSelector) []NumericIdentity {
	matchers := make([]*policytypes.LabelSelector, 0, len(selectors))
	for _, sel := range selectors {
		matchers = append(matchers, policytypes.NewLabelSelector(sel))
	}
	var out []NumericIdentity
	visit := func(id NumericIdentity, lbls labels.LabelArray) {
		for _, m := range matchers {
			if m.Matches(lbls) {
				out = append(out, id)
				return
			}
		}
	}
	for id, lbls := range s.Identities {
		visit(id, lbls)
	}
	ciliumidentity.IterateReservedIdentities(func(id NumericIdentity, r *ciliumidentity.Identity) {
		if _, known := s.Identities[id]; !known {
			visit(id, r.LabelArray)
		}
	})
	slices.Sort(out)
	return slices.Compact(out)
}

// SelectEntities returns, sorted, the identities the entities stand for
// (api.EntitySelectorMapping, as Cilium resolves toEntities/fromEntities).
func (s *Snapshot) SelectEntities(entities ...api.Entity) []NumericIdentity {
	return s.Select(api.EntitySlice(entities).GetAsEndpointSelectors()...)
}

// Matches reports whether sel selects an identity with these labels, by
// Cilium's own selector matching.
func Matches(sel api.EndpointSelector, lbls labels.LabelArray) bool {
	return policytypes.NewLabelSelector(sel).Matches(lbls)
}

// Source supplies peer identities.
type Source interface {
	// Run watches until ctx is done.
	Run(ctx context.Context) error
	// Synced is closed once the initial state has been read.
	Synced() <-chan struct{}
	// Snapshot returns the current state.
	Snapshot() *Snapshot
	// Changed receives a value after changes; changes made while nobody
	// reads are coalesced into one value.
	Changed() <-chan struct{}
}

// store keeps the peers and identity labels of a source and hands out
// snapshots.
type store struct {
	mu         sync.Mutex
	owners     map[string][]netip.Addr // object key -> IPs it set
	ipOwner    map[netip.Addr]string   // IP -> the object key that set it
	peers      map[netip.Addr]Peer
	identities map[NumericIdentity]labels.LabelArray
	snap       *Snapshot
	changed    chan struct{}
	synced     chan struct{}
	syncOnce   sync.Once
}

func newStore() *store {
	return &store{
		owners:     map[string][]netip.Addr{},
		ipOwner:    map[netip.Addr]string{},
		peers:      map[netip.Addr]Peer{},
		identities: map[NumericIdentity]labels.LabelArray{},
		changed:    make(chan struct{}, 1),
		synced:     make(chan struct{}),
	}
}

// setPeers replaces the IPs an object (pod or endpoint, by key) holds.
// Caller holds s.mu.
func (s *store) setPeersLocked(key string, peers []Peer) {
	for _, ip := range s.owners[key] {
		if s.ipOwner[ip] == key {
			delete(s.peers, ip)
			delete(s.ipOwner, ip)
		}
	}
	delete(s.owners, key)
	if len(peers) == 0 {
		return
	}
	ips := make([]netip.Addr, 0, len(peers))
	for _, p := range peers {
		p.IP = p.IP.Unmap()
		// The last writer takes an address over (setNodeLocked never
		// takes a pod's or an endpoint's).
		if owner, ok := s.ipOwner[p.IP]; ok && owner != key {
			s.removeIPLocked(owner, p.IP)
		}
		s.peers[p.IP] = p
		s.ipOwner[p.IP] = key
		ips = append(ips, p.IP)
	}
	s.owners[key] = ips
}

// removeIPLocked drops ip from what owner holds, when another object
// takes it.
func (s *store) removeIPLocked(owner string, ip netip.Addr) {
	ips := s.owners[owner]
	for i, x := range ips {
		if x == ip {
			s.owners[owner] = append(ips[:i:i], ips[i+1:]...)
			break
		}
	}
}

// notifyLocked drops the cached snapshot and signals a change. Caller holds
// s.mu.
func (s *store) notifyLocked() {
	s.snap = nil
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

func (s *store) snapshot() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.snap == nil {
		snap := &Snapshot{
			Peers:      make(map[netip.Addr]Peer, len(s.peers)),
			Identities: map[NumericIdentity]labels.LabelArray{},
		}
		for ip, p := range s.peers {
			snap.Peers[ip] = p
			if l, ok := s.identities[p.Identity]; ok {
				snap.Identities[p.Identity] = l
			}
		}
		s.snap = snap
	}
	return s.snap
}

func (s *store) markSynced() {
	s.syncOnce.Do(func() { close(s.synced) })
}
