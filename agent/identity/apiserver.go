package identity

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	ciliumidentity "github.com/cilium/cilium/pkg/identity"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// The kube-apiserver's addresses, the endpoints of the default/kubernetes
// Service, get Cilium's kube-apiserver identity, as Cilium's ipcache gives
// it: also where the API server runs on another node (remote-node with
// kube-apiserver is the kube-apiserver identity), but not on this node,
// which stays host.

const apiServerKey = "\x00kube-apiserver"

// setAPIServerLocked gives the addresses of the kubernetes Service's
// EndpointSlices the kube-apiserver identity, but this node's and pods'.
func (s *store) setAPIServerLocked(slices []*discoveryv1.EndpointSlice) {
	var peers []Peer
	for _, sl := range slices {
		for _, ep := range sl.Endpoints {
			for _, a := range ep.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil {
					continue
				}
				ip = ip.Unmap()
				if p, ok := s.peers[ip]; ok && s.ipOwner[ip] != apiServerKey &&
					(p.Identity == ciliumidentity.ReservedIdentityHost || !isNodeKey(s.ipOwner[ip])) {
					continue // this node's, or a pod's (host network: the node's)
				}
				peers = append(peers, Peer{IP: ip, Identity: ciliumidentity.ReservedIdentityKubeAPIServer})
			}
		}
	}
	s.setPeersLocked(apiServerKey, peers)
	s.notifyLocked()
}

func isNodeKey(key string) bool { return len(key) > 6 && key[:6] == "\x00node/" }

// watchAPIServer runs runAPIServer in the background when client is set,
// and returns a channel closed once it has listed the slices, or has
// failed (the addresses then resolve as any other).
func (s *store) watchAPIServer(ctx context.Context, client kubernetes.Interface, log *slog.Logger) <-chan struct{} {
	synced := make(chan struct{})
	if client == nil {
		close(synced)
		return synced
	}
	go func() {
		if err := s.runAPIServer(ctx, client, synced); err != nil && ctx.Err() == nil {
			log.Error("kube-apiserver addresses not watched: they resolve as any other address", "err", err)
			close(synced)
		}
	}()
	return synced
}

// serve waits for the informers and the kube-apiserver addresses, marks
// the source synced, and runs until ctx is done.
func (s *store) serve(ctx context.Context, apiSynced <-chan struct{}, synced ...cache.InformerSynced) error {
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return ctx.Err()
	}
	select {
	case <-apiSynced:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.markSynced()
	<-ctx.Done()
	return nil
}

// runAPIServer watches the kubernetes Service's EndpointSlices until ctx
// is done, and closes synced once it has listed them.
func (s *store) runAPIServer(ctx context.Context, client kubernetes.Interface, synced chan<- struct{}) error {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(metav1.NamespaceDefault),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = discoveryv1.LabelServiceName + "=kubernetes" }))
	inf := factory.Discovery().V1().EndpointSlices().Informer()
	update := func(any) {
		var slices []*discoveryv1.EndpointSlice
		for _, obj := range inf.GetStore().List() {
			if sl, ok := obj.(*discoveryv1.EndpointSlice); ok {
				slices = append(slices, sl)
			}
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.setAPIServerLocked(slices)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: update, UpdateFunc: func(_, obj any) { update(obj) }, DeleteFunc: update,
	}); err != nil {
		return fmt.Errorf("watch the kubernetes Service's endpointslices: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return ctx.Err()
	}
	close(synced)
	<-ctx.Done()
	return nil
}
