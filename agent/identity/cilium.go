package identity

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/k8s/client/clientset/versioned"
	"github.com/cilium/cilium/pkg/k8s/client/informers/externalversions"
	"github.com/cilium/cilium/pkg/labels"
)

// CiliumSource takes identities from Cilium's CiliumEndpoint and
// CiliumIdentity objects, so that sidewall uses Cilium's numbers.
type CiliumSource struct {
	*store
	client versioned.Interface
	log    *slog.Logger
	// LocalNode is this node's name: its CiliumNode's addresses are host,
	// other nodes' remote-node. Set it before Run.
	LocalNode string
	// Kube, if set, reads the kube-apiserver's addresses (the kubernetes
	// Service's EndpointSlices). Set it before Run.
	Kube kubernetes.Interface

	// under store.mu
	fromIdentity map[NumericIdentity]labels.LabelArray // CiliumIdentity security-labels
	fromEndpoint map[string]endpointIdentity           // CEP key -> identity and its status labels
}

type endpointIdentity struct {
	id     NumericIdentity
	labels labels.LabelArray
}

var _ Source = (*CiliumSource)(nil)

// NewCiliumSource returns a source over the Cilium objects client sees.
func NewCiliumSource(client versioned.Interface, log *slog.Logger) *CiliumSource {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &CiliumSource{
		store:        newStore(),
		client:       client,
		log:          log,
		fromIdentity: map[NumericIdentity]labels.LabelArray{},
		fromEndpoint: map[string]endpointIdentity{},
	}
}

// Synced is closed once the informers have listed everything.
func (s *CiliumSource) Synced() <-chan struct{} { return s.synced }

// Changed receives a value after changes, coalesced.
func (s *CiliumSource) Changed() <-chan struct{} { return s.changed }

// Snapshot returns the current peers and identities.
func (s *CiliumSource) Snapshot() *Snapshot { return s.snapshot() }

// Run watches CiliumEndpoints, CiliumIdentities and CiliumNodes until ctx
// is done.
func (s *CiliumSource) Run(ctx context.Context) error {
	factory := externalversions.NewSharedInformerFactory(s.client, 0)
	cepInf := factory.Cilium().V2().CiliumEndpoints().Informer()
	cidInf := factory.Cilium().V2().CiliumIdentities().Informer()
	nodeInf := factory.Cilium().V2().CiliumNodes().Informer()
	if _, err := nodeInf.AddEventHandler(s.nodeHandler(s.LocalNode, ciliumNodeAddresses)); err != nil {
		return fmt.Errorf("watch ciliumnodes: %w", err)
	}
	if _, err := cepInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.endpointChanged(obj) },
		UpdateFunc: func(_, obj any) { s.endpointChanged(obj) },
		DeleteFunc: func(obj any) { s.endpointDeleted(obj) },
	}); err != nil {
		return fmt.Errorf("watch ciliumendpoints: %w", err)
	}
	if _, err := cidInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.identityChanged(obj, false) },
		UpdateFunc: func(_, obj any) { s.identityChanged(obj, false) },
		DeleteFunc: func(obj any) { s.identityChanged(obj, true) },
	}); err != nil {
		return fmt.Errorf("watch ciliumidentities: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	apiSynced := s.watchAPIServer(ctx, s.Kube, s.log)
	return s.serve(ctx, apiSynced, cepInf.HasSynced, cidInf.HasSynced, nodeInf.HasSynced)
}

func (s *CiliumSource) endpointChanged(obj any) {
	cep, ok := obj.(*ciliumv2.CiliumEndpoint)
	if !ok {
		return
	}
	key := cep.Namespace + "/" + cep.Name
	var peers []Peer
	var ei endpointIdentity
	if st := cep.Status.Identity; st != nil && st.ID > 0 && st.ID <= int64(^uint32(0)) {
		ei = endpointIdentity{id: NumericIdentity(st.ID), labels: labels.NewLabelsFromModel(st.Labels).LabelArray()}
		if n := cep.Status.Networking; n != nil {
			for _, pair := range n.Addressing {
				if pair == nil {
					continue
				}
				for _, a := range []string{pair.IPV4, pair.IPV6} {
					if a == "" {
						continue
					}
					ip, err := netip.ParseAddr(a)
					if err != nil {
						s.log.Warn("ciliumendpoint has an invalid IP", "endpoint", key, "ip", a, "err", err)
						continue
					}
					peers = append(peers, Peer{IP: ip, Identity: ei.id, Namespace: cep.Namespace, Name: cep.Name})
				}
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(peers) == 0 {
		s.removeEndpointLocked(key)
		return
	}
	old, had := s.fromEndpoint[key]
	if had && old.id == ei.id && old.labels.Equals(ei.labels) && s.samePeersLocked(key, peers) {
		return
	}
	s.fromEndpoint[key] = ei
	s.refreshLabelsLocked(ei.id)
	if had && old.id != ei.id {
		s.refreshLabelsLocked(old.id)
	}
	s.setPeersLocked(key, peers)
	s.notifyLocked()
}

func (s *CiliumSource) endpointDeleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	cep, ok := obj.(*ciliumv2.CiliumEndpoint)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeEndpointLocked(cep.Namespace + "/" + cep.Name)
}

func (s *CiliumSource) removeEndpointLocked(key string) {
	old, had := s.fromEndpoint[key]
	delete(s.fromEndpoint, key)
	if had {
		s.refreshLabelsLocked(old.id)
	}
	if _, owned := s.owners[key]; owned {
		s.setPeersLocked(key, nil)
		s.notifyLocked()
	}
}

func (s *CiliumSource) identityChanged(obj any, deleted bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	cid, ok := obj.(*ciliumv2.CiliumIdentity)
	if !ok {
		return
	}
	// A CiliumIdentity is named by its number.
	n, err := strconv.ParseUint(cid.Name, 10, 32)
	if err != nil {
		s.log.Warn("ciliumidentity name is not a number", "name", cid.Name, "err", err)
		return
	}
	id := NumericIdentity(n)
	s.mu.Lock()
	defer s.mu.Unlock()
	if deleted {
		delete(s.fromIdentity, id)
	} else {
		s.fromIdentity[id] = labels.Map2Labels(cid.SecurityLabels, "").LabelArray()
	}
	if s.refreshLabelsLocked(id) {
		s.notifyLocked()
	}
}

// refreshLabelsLocked recomputes the labels of id: the CiliumIdentity's
// when known, else those an endpoint reports. It reports whether they
// changed.
func (s *CiliumSource) refreshLabelsLocked(id NumericIdentity) bool {
	lbls, ok := s.fromIdentity[id]
	if !ok {
		for _, ei := range s.fromEndpoint {
			if ei.id == id && len(ei.labels) > 0 {
				lbls, ok = ei.labels, true
				break
			}
		}
	}
	old, had := s.identities[id]
	switch {
	case !ok && !had:
		return false
	case !ok:
		delete(s.identities, id)
	case had && old.Equals(lbls):
		return false
	default:
		s.identities[id] = lbls
	}
	return true
}

// CiliumInstalled reports whether the API server serves the CiliumEndpoint
// and CiliumIdentity resources CiliumSource watches; the agent uses
// PodSource when it does not.
func CiliumInstalled(dc discovery.DiscoveryInterface) (bool, error) {
	gv := ciliumv2.SchemeGroupVersion.String()
	res, err := dc.ServerResourcesForGroupVersion(gv)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discover %s: %w", gv, err)
	}
	var cep, cid bool
	for _, r := range res.APIResources {
		switch r.Name {
		case ciliumv2.CEPPluralName:
			cep = true
		case ciliumv2.CIDPluralName:
			cid = true
		}
	}
	return cep && cid, nil
}
