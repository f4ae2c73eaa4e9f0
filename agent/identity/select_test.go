package identity

import (
	"encoding/json"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	ciliumidentity "github.com/cilium/cilium/pkg/identity"
	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/policy/api"
)

func pod(ns, name string, lbls map[string]string, sa string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Spec:       corev1.PodSpec{ServiceAccountName: sa},
	}
}

func namespace(name string, lbls map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}
}

func TestPodLabelsAreCiliumIdentityLabels(t *testing.T) {
	p := pod("shop", "web-1", map[string]string{
		"app":                          "web",
		"app.kubernetes.io/name":       "web",
		"pod-template-hash":            "7d9f8",   // filtered by Cilium
		"controller-revision-hash":     "abc",     // filtered by Cilium
		"io.cilium.k8s.policy.cluster": "spoofed", // Cilium-owned, replaced
	}, "web-sa")
	got := PodLabels(p, namespace("shop", map[string]string{"team": "payments", "kubernetes.io/metadata.name": "shop"}), "default")
	want := labels.ParseLabelArray(
		"k8s:app=web",
		"k8s:app.kubernetes.io/name=web",
		"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop",
		"k8s:io.cilium.k8s.namespace.labels.team=payments",
		"k8s:io.cilium.k8s.policy.cluster=default",
		"k8s:io.cilium.k8s.policy.serviceaccount=web-sa",
		"k8s:io.kubernetes.pod.namespace=shop",
	).Sort()
	if !got.Equals(want) {
		t.Errorf("PodLabels:\n got %v\nwant %v", got, want)
	}
}

// selector parses a selector as it appears in a CiliumNetworkPolicy.
func selector(t *testing.T, js string) api.EndpointSelector {
	t.Helper()
	var sel api.EndpointSelector
	if err := json.Unmarshal([]byte(js), &sel); err != nil {
		t.Fatalf("parse selector %s: %v", js, err)
	}
	return sel
}

func TestSelectLikeCilium(t *testing.T) {
	api.InitEntities("default")
	a := NewAllocator()
	ids := map[string]NumericIdentity{}
	snap := &Snapshot{Peers: map[netip.Addr]Peer{}, Identities: map[NumericIdentity]labels.LabelArray{}}
	for _, p := range []struct {
		name, ns string
		lbls     map[string]string
		nsLabels map[string]string
	}{
		{"shop-web", "shop", map[string]string{"app": "web", "tier": "front"}, map[string]string{"team": "payments"}},
		{"shop-db", "shop", map[string]string{"app": "db", "tier": "back"}, map[string]string{"team": "payments"}},
		{"ops-db", "ops", map[string]string{"app": "db"}, map[string]string{"team": "sre"}},
	} {
		lbls := PodLabels(pod(p.ns, p.name, p.lbls, ""), namespace(p.ns, p.nsLabels), "default")
		id, err := a.Allocate(lbls)
		if err != nil {
			t.Fatal(err)
		}
		ids[p.name] = id
		snap.Identities[id] = lbls
	}
	sorted := func(names ...string) []NumericIdentity {
		var out []NumericIdentity
		for _, n := range names {
			out = append(out, ids[n])
		}
		slices.Sort(out)
		return out
	}

	for _, tc := range []struct {
		name string
		sel  string
		want []NumericIdentity
	}{
		{"bare key matches any source", `{"matchLabels":{"app":"db"}}`, sorted("shop-db", "ops-db")},
		{"k8s source", `{"matchLabels":{"k8s:app":"db"}}`, sorted("shop-db", "ops-db")},
		{"namespace scoped", `{"matchLabels":{"app":"db","k8s:io.kubernetes.pod.namespace":"shop"}}`, sorted("shop-db")},
		{"namespace labels", `{"matchLabels":{"k8s:io.cilium.k8s.namespace.labels.team":"sre"}}`, sorted("ops-db")},
		{"expression In", `{"matchExpressions":[{"key":"tier","operator":"In","values":["front","back"]}]}`, sorted("shop-web", "shop-db")},
		{"expression NotIn", `{"matchExpressions":[{"key":"k8s:app","operator":"NotIn","values":["db"]},{"key":"k8s:io.kubernetes.pod.namespace","operator":"Exists"}]}`, sorted("shop-web")},
		{"expression DoesNotExist", `{"matchExpressions":[{"key":"tier","operator":"DoesNotExist"},{"key":"k8s:io.kubernetes.pod.namespace","operator":"Exists"}]}`, sorted("ops-db")},
		{"reserved world", `{"matchLabels":{"reserved:world":""}}`, []NumericIdentity{ciliumidentity.ReservedIdentityWorld}},
		{"nothing", `{"matchLabels":{"app":"cache"}}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := snap.Select(selector(t, tc.sel))
			if !slices.Equal(got, tc.want) {
				t.Errorf("Select(%s) = %v, want %v", tc.sel, got, tc.want)
			}
			// Matches agrees with Select on every known identity.
			for id, lbls := range snap.Identities {
				if Matches(selector(t, tc.sel), lbls) != slices.Contains(tc.want, id) {
					t.Errorf("Matches disagrees with Select on %d", id)
				}
			}
		})
	}

	world := snap.SelectEntities(api.EntityWorld)
	if !slices.Contains(world, ciliumidentity.ReservedIdentityWorld) {
		t.Errorf("world entity: %v lacks world (2)", world)
	}
	for _, id := range world {
		if _, isPod := snap.Identities[id]; isPod || id == ciliumidentity.ReservedIdentityHost {
			t.Errorf("world entity selects %d", id)
		}
	}
	if got := snap.SelectEntities(api.EntityHost); !slices.Equal(got, []NumericIdentity{ciliumidentity.ReservedIdentityHost}) {
		t.Errorf("host entity: %v", got)
	}
	cluster := snap.SelectEntities(api.EntityCluster)
	for _, want := range append(sorted("shop-web", "shop-db", "ops-db"), ciliumidentity.ReservedIdentityHost, ciliumidentity.ReservedIdentityRemoteNode) {
		if !slices.Contains(cluster, want) {
			t.Errorf("cluster entity %v lacks %d", cluster, want)
		}
	}
	if slices.Contains(cluster, ciliumidentity.ReservedIdentityWorld) {
		t.Errorf("cluster entity selects world: %v", cluster)
	}
	if p, l := snap.Resolve(netip.MustParseAddr("203.0.113.7")); p.Identity != ciliumidentity.ReservedIdentityWorld || !l.Equals(labels.ParseLabelArray("reserved:world")) {
		t.Errorf("unknown IP resolves to %+v %v, want world", p, l)
	}
	snap.Peers[netip.MustParseAddr("10.0.0.5")] = Peer{IP: netip.MustParseAddr("10.0.0.5"), Identity: ids["shop-db"], Namespace: "shop", Name: "shop-db"}
	if p, l := snap.Resolve(netip.MustParseAddr("::ffff:10.0.0.5")); p.Name != "shop-db" || !l.Equals(snap.Identities[ids["shop-db"]]) {
		t.Errorf("known IP (v4-mapped) resolves to %+v %v", p, l)
	}
	if l, ok := snap.Labels(ciliumidentity.ReservedIdentityWorld); !ok || !l.Contains(labels.ParseLabelArray("reserved:world")) {
		t.Errorf("Labels(world) = %v, %v", l, ok)
	}
}
