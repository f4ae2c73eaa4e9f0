package identity

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/cilium/cilium/pkg/labels"

	"github.com/sidewall/sidewall/translator"
)

// DefaultClusterName is Cilium's default cluster name, carried by pods in
// the io.cilium.k8s.policy.cluster label.
const DefaultClusterName = translator.DefaultClusterName

// PodLabels returns the identity labels Cilium derives for a pod
// (translator.IdentityLabels, which the controller selects pods by too).
// ns may be nil when the namespace is not known yet.
func PodLabels(pod *corev1.Pod, ns *corev1.Namespace, clusterName string) labels.LabelArray {
	return translator.IdentityLabels(pod, ns, clusterName)
}

// PodSource allocates identities for all pods of the cluster from their
// labels, for clusters without Cilium.
type PodSource struct {
	*store
	client      kubernetes.Interface
	alloc       *Allocator
	clusterName string
	log         *slog.Logger
	// LocalNode is this node's name: its Node's addresses are host, other
	// nodes' remote-node. Set it before Run.
	LocalNode string

	// under store.mu
	podLabels map[string]labels.LabelArray // pod key -> labels it holds a reference on
	pods      cache.Indexer
	nss       cache.Indexer
}

var _ Source = (*PodSource)(nil)

// NewPodSource returns a source over the pods client sees. alloc may be
// shared with other users of the same numbers (e.g. the agent restoring
// pinned state); nil creates one. clusterName "" means DefaultClusterName.
func NewPodSource(client kubernetes.Interface, alloc *Allocator, clusterName string, log *slog.Logger) *PodSource {
	if alloc == nil {
		alloc = NewAllocator()
	}
	if clusterName == "" {
		clusterName = DefaultClusterName
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &PodSource{
		store:       newStore(),
		client:      client,
		alloc:       alloc,
		clusterName: clusterName,
		log:         log,
		podLabels:   map[string]labels.LabelArray{},
	}
}

// Allocator returns the allocator the source uses.
func (s *PodSource) Allocator() *Allocator { return s.alloc }

// Synced is closed once the informers have listed everything.
func (s *PodSource) Synced() <-chan struct{} { return s.synced }

// Changed receives a value after changes, coalesced.
func (s *PodSource) Changed() <-chan struct{} { return s.changed }

// Snapshot returns the current peers and identities.
func (s *PodSource) Snapshot() *Snapshot { return s.snapshot() }

// Run watches pods, namespaces and nodes until ctx is done.
func (s *PodSource) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(s.client, 0)
	podInf := factory.Core().V1().Pods().Informer()
	nsInf := factory.Core().V1().Namespaces().Informer()
	nodeInf := factory.Core().V1().Nodes().Informer()
	if _, err := nodeInf.AddEventHandler(s.nodeHandler(s.LocalNode, nodeAddresses)); err != nil {
		return fmt.Errorf("watch nodes: %w", err)
	}
	s.mu.Lock()
	s.pods, s.nss = podInf.GetIndexer(), nsInf.GetIndexer()
	s.mu.Unlock()

	if _, err := podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.podChanged(obj) },
		UpdateFunc: func(_, obj any) { s.podChanged(obj) },
		DeleteFunc: func(obj any) { s.podDeleted(obj) },
	}); err != nil {
		return fmt.Errorf("watch pods: %w", err)
	}
	if _, err := nsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.namespaceChanged(obj) },
		UpdateFunc: func(_, obj any) { s.namespaceChanged(obj) },
	}); err != nil {
		return fmt.Errorf("watch namespaces: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	apiSynced := s.watchAPIServer(ctx, s.client, s.log)
	return s.serve(ctx, apiSynced, podInf.HasSynced, nsInf.HasSynced, nodeInf.HasSynced)
}

func (s *PodSource) podChanged(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.updatePodLocked(pod)
}

func (s *PodSource) podDeleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removePodLocked(pod.Namespace + "/" + pod.Name)
}

func (s *PodSource) namespaceChanged(obj any) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return
	}
	pods, err := s.pods.ByIndex(cache.NamespaceIndex, ns.Name)
	if err != nil {
		s.log.Error("list pods of namespace", "namespace", ns.Name, "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, obj := range pods {
		if pod, ok := obj.(*corev1.Pod); ok {
			s.updatePodLocked(pod)
		}
	}
}

func (s *PodSource) removePodLocked(key string) {
	if old, ok := s.podLabels[key]; ok {
		s.alloc.Release(old)
		delete(s.podLabels, key)
		s.gcIdentitiesLocked()
	}
	if _, had := s.owners[key]; had {
		s.setPeersLocked(key, nil)
		s.notifyLocked()
	}
}

// updatePodLocked gives a running pod with IPs its identity. Host-network
// pods are skipped: their IP is the node's, whose identity is host or
// remote-node, not the pod's.
func (s *PodSource) updatePodLocked(pod *corev1.Pod) {
	key := pod.Namespace + "/" + pod.Name
	done := pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
	if pod.Spec.HostNetwork || done || pod.DeletionTimestamp != nil {
		s.removePodLocked(key)
		return
	}
	var ips []netip.Addr
	for _, pip := range pod.Status.PodIPs {
		ip, err := netip.ParseAddr(pip.IP)
		if err != nil {
			s.log.Warn("pod has an invalid IP", "pod", key, "ip", pip.IP, "err", err)
			continue
		}
		ips = append(ips, ip)
	}
	if len(ips) == 0 {
		s.removePodLocked(key)
		return
	}

	var ns *corev1.Namespace
	if obj, ok, _ := s.nss.GetByKey(pod.Namespace); ok {
		ns, _ = obj.(*corev1.Namespace)
	}
	lbls := PodLabels(pod, ns, s.clusterName)
	id, err := s.alloc.Allocate(lbls)
	if err != nil {
		s.log.Error("allocate identity", "pod", key, "err", err)
		s.removePodLocked(key)
		return
	}
	old, hadOld := s.podLabels[key]
	s.podLabels[key] = lbls
	if hadOld {
		s.alloc.Release(old)
	}

	peers := make([]Peer, 0, len(ips))
	for _, ip := range ips {
		peers = append(peers, Peer{IP: ip, Identity: id, Namespace: pod.Namespace, Name: pod.Name})
	}
	if s.samePeersLocked(key, peers) && s.identities[id].Equals(lbls) {
		return
	}
	s.identities[id] = lbls
	if hadOld && !old.Equals(lbls) {
		s.gcIdentitiesLocked()
	}
	s.setPeersLocked(key, peers)
	s.notifyLocked()
}

func (s *store) samePeersLocked(key string, peers []Peer) bool {
	old := s.owners[key]
	if len(old) != len(peers) {
		return false
	}
	for _, p := range peers {
		if cur, ok := s.peers[p.IP.Unmap()]; !ok || cur != (Peer{IP: p.IP.Unmap(), Identity: p.Identity, Namespace: p.Namespace, Name: p.Name}) {
			return false
		}
	}
	return true
}

// gcIdentitiesLocked forgets labels of identities the allocator freed.
func (s *PodSource) gcIdentitiesLocked() {
	for id := range s.identities {
		if _, ok := s.alloc.Lookup(id); !ok {
			delete(s.identities, id)
		}
	}
}
