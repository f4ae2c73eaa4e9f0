package identity

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	ciliumidentity "github.com/cilium/cilium/pkg/identity"
	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/k8s/client/clientset/versioned"
	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/policy/api"

	"github.com/sidewall/sidewall/hack/harness/testenv"
)

// runSource runs src until the test ends and waits for its initial sync.
func runSource(t *testing.T, src Source) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("source run: %v", err)
		}
	})
	select {
	case <-src.Synced():
	case err := <-done:
		t.Fatalf("source stopped before syncing: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("source did not sync in 30s")
	}
}

// eventually waits, woken by src.Changed, until cond holds on a snapshot.
func eventually(t *testing.T, src Source, what string, cond func(*Snapshot) error) *Snapshot {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		snap := src.Snapshot()
		err := cond(snap)
		if err == nil {
			return snap
		}
		select {
		case <-src.Changed():
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%s: not reached in 20s: %v", what, err)
		}
	}
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func peerIdentity(snap *Snapshot, ip string) (NumericIdentity, error) {
	p, ok := snap.Lookup(addr(ip))
	if !ok {
		return 0, fmt.Errorf("no peer %s", ip)
	}
	return p.Identity, nil
}

func TestPodSourceAllocatesFromPodLabels(t *testing.T) {
	env := testenv.New(t, testenv.Options{SkipCiliumCRDs: true})
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	nsName := env.Namespace(t, "pods")
	ns, err := cs.CoreV1().Namespaces().Get(ctx, nsName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels["team"] = "payments"
	if _, err := cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	createPod := func(name string, lbls map[string]string, hostNetwork bool, ips ...string) {
		t.Helper()
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: nsName, Name: name, Labels: lbls},
			Spec: corev1.PodSpec{
				HostNetwork:        hostNetwork,
				ServiceAccountName: "web-sa",
				Containers:         []corev1.Container{{Name: "app", Image: "app"}, {Name: "log-shipper", Image: "shipper"}},
			},
		}
		p, err := cs.CoreV1().Pods(nsName).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod %s: %v", name, err)
		}
		p.Status.Phase = corev1.PodRunning
		for _, ip := range ips {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		if len(ips) > 0 {
			p.Status.PodIP = ips[0]
		}
		if _, err := cs.CoreV1().Pods(nsName).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("set pod %s status: %v", name, err)
		}
	}

	if ok, err := CiliumInstalled(cs.Discovery()); err != nil || ok {
		t.Fatalf("CiliumInstalled without Cilium's CRDs = %v, %v", ok, err)
	}
	src := NewPodSource(cs, nil, "", nil)
	runSource(t, src)

	createPod("web-1", map[string]string{"app": "web", "pod-template-hash": "aaa"}, false, "10.0.1.1", "fd00::1")
	createPod("web-2", map[string]string{"app": "web", "pod-template-hash": "bbb"}, false, "10.0.1.2")
	createPod("db-0", map[string]string{"app": "db"}, false, "10.0.1.3")
	createPod("node-agent", map[string]string{"app": "agent"}, true, "192.168.0.10")
	createPod("pending", map[string]string{"app": "web"}, false)

	snap := eventually(t, src, "three pods with identities", func(s *Snapshot) error {
		for _, ip := range []string{"10.0.1.1", "fd00::1", "10.0.1.2", "10.0.1.3"} {
			if _, err := peerIdentity(s, ip); err != nil {
				return err
			}
		}
		return nil
	})
	web1, _ := peerIdentity(snap, "10.0.1.1")
	web1v6, _ := peerIdentity(snap, "fd00::1")
	web2, _ := peerIdentity(snap, "10.0.1.2")
	db, _ := peerIdentity(snap, "10.0.1.3")
	if web1 != web2 || web1 != web1v6 {
		t.Errorf("pods of one deployment differ only in pod-template-hash but got identities %d, %d, %d", web1, web1v6, web2)
	}
	if db == web1 {
		t.Errorf("web and db share identity %d", db)
	}
	if p, _ := snap.Lookup(addr("10.0.1.3")); p.Namespace != nsName || p.Name != "db-0" {
		t.Errorf("peer 10.0.1.3 = %+v", p)
	}
	if _, ok := snap.Lookup(addr("192.168.0.10")); ok {
		t.Errorf("host-network pod got a pod identity")
	}
	if n := len(podPeers(snap)); n != 4 {
		t.Errorf("want 4 pod IPs, got %v", snap.Peers)
	}
	// Labels are Cilium's identity labels, selectable by a CNP selector.
	want := labels.ParseLabelArray("k8s:app=web", "k8s:io.kubernetes.pod.namespace="+nsName,
		"k8s:io.cilium.k8s.policy.cluster=default", "k8s:io.cilium.k8s.policy.serviceaccount=web-sa",
		"k8s:io.cilium.k8s.namespace.labels.team=payments",
		"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name="+nsName).Sort()
	if got, _ := snap.Labels(web1); !got.Equals(want) {
		t.Errorf("labels of web:\n got %v\nwant %v", got, want)
	}
	sel := api.NewESFromLabels(labels.NewLabel("app", "db", labels.LabelSourceK8s), labels.NewLabel("io.kubernetes.pod.namespace", nsName, labels.LabelSourceK8s))
	if got := snap.Select(sel); len(got) != 1 || got[0] != db {
		t.Errorf("selector app=db in %s selects %v, want [%d]", nsName, got, db)
	}

	// A label change moves the pod to another identity; the old one is
	// still held by web-2.
	p, err := cs.CoreV1().Pods(nsName).Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Labels["app"] = "web-canary"
	if _, err := cs.CoreV1().Pods(nsName).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	snap = eventually(t, src, "relabelled pod", func(s *Snapshot) error {
		id, err := peerIdentity(s, "10.0.1.1")
		if err != nil {
			return err
		}
		if id == web1 {
			return fmt.Errorf("web-1 still has %d", id)
		}
		return nil
	})
	if id, _ := peerIdentity(snap, "10.0.1.2"); id != web1 {
		t.Errorf("web-2 changed identity to %d", id)
	}

	// A namespace label change changes every pod's identity labels.
	ns, _ = cs.CoreV1().Namespaces().Get(ctx, nsName, metav1.GetOptions{})
	ns.Labels["team"] = "sre"
	if _, err := cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, src, "namespace relabel", func(s *Snapshot) error {
		id, err := peerIdentity(s, "10.0.1.3")
		if err != nil {
			return err
		}
		l, _ := s.Labels(id)
		if !l.Contains(labels.ParseLabelArray("k8s:io.cilium.k8s.namespace.labels.team=sre")) {
			return fmt.Errorf("db labels %v", l)
		}
		return nil
	})

	// Deleting pods removes their IPs and frees their identities.
	for _, name := range []string{"web-1", "web-2", "db-0"} {
		if err := cs.CoreV1().Pods(nsName).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, src, "pods gone", func(s *Snapshot) error {
		if left := podPeers(s); len(left) != 0 {
			return fmt.Errorf("peers left: %v", left)
		}
		return nil
	})
	if n := src.Allocator().Len(); n != 0 {
		t.Errorf("%d identities still allocated after every pod is gone", n)
	}
}

func TestCiliumSourceUsesCiliumNumbers(t *testing.T) {
	env := testenv.New(t, testenv.Options{})
	cs, err := versioned.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	nsName := env.Namespace(t, "cilium")
	cids := cs.CiliumV2().CiliumIdentities()
	ceps := cs.CiliumV2().CiliumEndpoints(nsName)

	createIdentity := func(id int, lbls map[string]string) {
		t.Helper()
		_, err := cids.Create(ctx, &ciliumv2.CiliumIdentity{
			ObjectMeta:     metav1.ObjectMeta{Name: fmt.Sprint(id)},
			SecurityLabels: lbls,
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create ciliumidentity %d: %v", id, err)
		}
		t.Cleanup(func() { cids.Delete(context.Background(), fmt.Sprint(id), metav1.DeleteOptions{}) })
	}
	createEndpoint := func(name string, id int64, statusLabels []string, pairs ...*ciliumv2.AddressPair) {
		t.Helper()
		_, err := ceps.Create(ctx, &ciliumv2.CiliumEndpoint{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: nsName},
			Status: ciliumv2.EndpointStatus{
				ID:         1000 + id,
				Identity:   &ciliumv2.EndpointIdentity{ID: id, Labels: statusLabels},
				Networking: &ciliumv2.EndpointNetworking{Addressing: pairs, NodeIP: "192.168.0.10"},
				State:      "ready",
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create ciliumendpoint %s: %v", name, err)
		}
	}

	// Numbers as Cilium's operator would have allocated them.
	createIdentity(31001, map[string]string{"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": nsName})
	createIdentity(31002, map[string]string{"k8s:app": "db", "k8s:io.kubernetes.pod.namespace": nsName})

	if ok, err := CiliumInstalled(cs.Discovery()); err != nil || !ok {
		t.Fatalf("CiliumInstalled with Cilium's CRDs = %v, %v", ok, err)
	}
	src := NewCiliumSource(cs, nil)
	runSource(t, src)

	createEndpoint("web-1", 31001, nil, &ciliumv2.AddressPair{IPV4: "10.0.1.1", IPV6: "fd00::1"})
	createEndpoint("db-0", 31002, nil, &ciliumv2.AddressPair{IPV4: "10.0.1.3"})
	// No CiliumIdentity (yet): the endpoint's status labels stand in.
	createEndpoint("cache-0", 31003, []string{"k8s:app=cache", "k8s:io.kubernetes.pod.namespace=" + nsName},
		&ciliumv2.AddressPair{IPV4: "10.0.1.4"})

	snap := eventually(t, src, "three endpoints", func(s *Snapshot) error {
		for ip, want := range map[string]NumericIdentity{"10.0.1.1": 31001, "fd00::1": 31001, "10.0.1.3": 31002, "10.0.1.4": 31003} {
			id, err := peerIdentity(s, ip)
			if err != nil {
				return err
			}
			if id != want {
				return fmt.Errorf("%s has %d, want %d", ip, id, want)
			}
		}
		return nil
	})
	if p, _ := snap.Lookup(addr("10.0.1.1")); p.Namespace != nsName || p.Name != "web-1" {
		t.Errorf("peer 10.0.1.1 = %+v", p)
	}
	if got, _ := snap.Labels(31001); !got.Equals(labels.ParseLabelArray("k8s:app=web", "k8s:io.kubernetes.pod.namespace="+nsName).Sort()) {
		t.Errorf("labels of 31001 from its CiliumIdentity: %v", got)
	}
	if got, _ := snap.Labels(31003); !got.Equals(labels.ParseLabelArray("k8s:app=cache", "k8s:io.kubernetes.pod.namespace="+nsName).Sort()) {
		t.Errorf("labels of 31003 from the endpoint status: %v", got)
	}
	sel := api.NewESFromLabels(labels.NewLabel("app", "db", labels.LabelSourceK8s), labels.NewLabel("io.kubernetes.pod.namespace", nsName, labels.LabelSourceK8s))
	if got := snap.Select(sel); len(got) != 1 || got[0] != 31002 {
		t.Errorf("selector app=db selects %v, want [31002]", got)
	}
	if got := snap.SelectEntities(api.EntityWorld); len(got) == 0 || got[0] != ciliumidentity.ReservedIdentityWorld {
		t.Errorf("world entity selects %v", got)
	}

	// The CiliumIdentity appearing later takes over the labels.
	createIdentity(31003, map[string]string{"k8s:app": "cache", "k8s:tier": "back", "k8s:io.kubernetes.pod.namespace": nsName})
	eventually(t, src, "labels from a late CiliumIdentity", func(s *Snapshot) error {
		l, _ := s.Labels(31003)
		if !l.Contains(labels.ParseLabelArray("k8s:tier=back")) {
			return fmt.Errorf("31003 labels %v", l)
		}
		return nil
	})

	// Cilium re-identifying an endpoint (its labels changed) moves its IPs.
	createIdentity(31004, map[string]string{"k8s:app": "web-canary", "k8s:io.kubernetes.pod.namespace": nsName})
	cep, err := ceps.Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cep.Status.Identity.ID = 31004
	if _, err := ceps.Update(ctx, cep, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, src, "re-identified endpoint", func(s *Snapshot) error {
		for _, ip := range []string{"10.0.1.1", "fd00::1"} {
			if id, err := peerIdentity(s, ip); err != nil || id != 31004 {
				return fmt.Errorf("%s: %d %v", ip, id, err)
			}
		}
		if _, ok := s.Identities[31001]; ok {
			return fmt.Errorf("31001 still listed though no peer uses it")
		}
		return nil
	})

	// An endpoint without an identity yet (Cilium still regenerating) is
	// not a peer.
	createEndpoint("new-0", 0, nil, &ciliumv2.AddressPair{IPV4: "10.0.1.9"})

	// Deleting endpoints removes their IPs.
	for _, name := range []string{"web-1", "db-0", "cache-0", "new-0"} {
		if err := ceps.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, src, "endpoints gone", func(s *Snapshot) error {
		if left := podPeers(s); len(left) != 0 {
			return fmt.Errorf("peers left: %v", left)
		}
		return nil
	})
}

// podPeers are a snapshot's peers but the test API server's own address
// (the kube-apiserver identity).
func podPeers(s *Snapshot) map[netip.Addr]Peer {
	out := map[netip.Addr]Peer{}
	for ip, p := range s.Peers {
		if p.Identity != ciliumidentity.ReservedIdentityKubeAPIServer {
			out[ip] = p
		}
	}
	return out
}
