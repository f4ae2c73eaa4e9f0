package controller

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/policy/api"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/translator"
)

// applyObject turns the desired CNP into the object sent with server-side
// apply. It goes through JSON rather than the reflection converter because
// Cilium's selectors marshal themselves; status and the zero
// creationTimestamp are dropped so that sidewall claims no field it does
// not mean to set.
func applyObject(cnp *ciliumv2.CiliumNetworkPolicy) (*unstructured.Unstructured, error) {
	raw, err := json.Marshal(cnp)
	if err != nil {
		return nil, fmt.Errorf("encode CiliumNetworkPolicy %s: %w", cnp.Name, err)
	}
	u := &unstructured.Unstructured{}
	if err := json.Unmarshal(raw, &u.Object); err != nil {
		return nil, fmt.Errorf("decode CiliumNetworkPolicy %s: %w", cnp.Name, err)
	}
	delete(u.Object, "status")
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	u.SetAPIVersion(ciliumv2.SchemeGroupVersion.String())
	u.SetKind(ciliumv2.CNPKindDefinition)
	return u, nil
}

func fromUnstructured(u *unstructured.Unstructured) (*ciliumv2.CiliumNetworkPolicy, error) {
	raw, err := json.Marshal(u.Object)
	if err != nil {
		return nil, err
	}
	cnp := &ciliumv2.CiliumNetworkPolicy{}
	if err := json.Unmarshal(raw, cnp); err != nil {
		return nil, err
	}
	return cnp, nil
}

// cnpUpToDate reports whether the live CNP already says what desired says:
// the same rules, sidewall's labels and the controller owner reference.
// Rules are compared in their JSON form, the form the API server stores,
// because Cilium's selector types carry unexported caches.
func cnpUpToDate(live, desired *ciliumv2.CiliumNetworkPolicy) bool {
	for k, v := range desired.Labels {
		if live.Labels[k] != v {
			return false
		}
	}
	if !reflect.DeepEqual(live.OwnerReferences, desired.OwnerReferences) {
		return false
	}
	return sameJSON(live.Spec, desired.Spec) && sameJSON(live.Specs, desired.Specs)
}

func sameJSON(a, b any) bool {
	ja, err1 := normalJSON(a)
	jb, err2 := normalJSON(b)
	return err1 == nil && err2 == nil && reflect.DeepEqual(ja, jb)
}

// normalJSON decodes the JSON encoding of v into generic values, so that
// key order and nil versus empty slices of omitempty fields do not matter.
func normalJSON(v any) (any, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out any
	err = json.Unmarshal(raw, &out)
	return out, err
}

// policyCache keeps, per policy, what depends only on its spec (the
// validation result, the generated CNP and the parsed pod selector, valid
// for one UID and generation) and its last analysis. Every pod event and
// every write re-queues policies; without it each would parse them again.
type policyCache struct {
	m sync.Map // types.NamespacedName -> *cachedPolicy
}

type cachedPolicy struct {
	uid        types.UID
	generation int64

	once       sync.Once
	invalid    field.ErrorList
	cnp        *ciliumv2.CiliumNetworkPolicy
	err        error
	sel        api.EndpointSelector
	selectorOK bool

	mu          sync.Mutex
	analysisKey string
	analysis    translator.Analysis
}

func (c *policyCache) entry(p *v1alpha1.ContainerNetworkPolicy) *cachedPolicy {
	key := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
	if v, ok := c.m.Load(key); ok {
		if e := v.(*cachedPolicy); e.uid == p.UID && e.generation == p.Generation {
			return e
		}
	}
	e := &cachedPolicy{uid: p.UID, generation: p.Generation}
	c.m.Store(key, e)
	return e
}

// translate returns the cached Validate and ToCNP results. The CNP is
// shared: callers must not modify it.
func (c *policyCache) translate(p *v1alpha1.ContainerNetworkPolicy) *cachedPolicy {
	e := c.entry(p)
	e.once.Do(func() {
		e.invalid = translator.Validate(p)
		if len(e.invalid) == 0 {
			e.cnp, e.err = translator.ToCNP(p)
			if rs, err := translator.ToRuleSet(p); err == nil {
				e.sel, e.selectorOK = rs.PodSelector, true
			}
		}
	})
	return e
}

// selector returns the policy's pod selector in Cilium's form (with the
// namespace added); ok is false when the policy is invalid.
func (c *policyCache) selector(p *v1alpha1.ContainerNetworkPolicy) (api.EndpointSelector, bool) {
	e := c.translate(p)
	return e.sel, e.selectorOK
}

func (c *policyCache) analysis(p *v1alpha1.ContainerNetworkPolicy, key string) (translator.Analysis, bool) {
	e := c.entry(p)
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.analysis, e.analysisKey == key && key != ""
}

func (c *policyCache) storeAnalysis(p *v1alpha1.ContainerNetworkPolicy, key string, a translator.Analysis) {
	e := c.entry(p)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.analysisKey, e.analysis = key, a
}

// forget drops a deleted policy's entry.
func (c *policyCache) forget(key types.NamespacedName) { c.m.Delete(key) }

// selectedPods returns the pods sel selects, as Cilium selects them (by
// identity labels, the labels of their namespace ns included), skipping
// pods being deleted.
func selectedPods(sel api.EndpointSelector, pods []corev1.Pod, ns *corev1.Namespace) []corev1.Pod {
	var out []corev1.Pod
	for i := range pods {
		if pods[i].DeletionTimestamp.IsZero() && translator.SelectsPod(sel, &pods[i], ns) {
			out = append(out, pods[i])
		}
	}
	return out
}

// analysisKey identifies the inputs of one analysis: the policy's
// generation, the pods (by resourceVersion) and the other policies (by
// generation).
func analysisKey(p *v1alpha1.ContainerNetworkPolicy, ns *corev1.Namespace, pods []corev1.Pod, others []v1alpha1.ContainerNetworkPolicy) string {
	parts := make([]string, 0, len(pods)+len(others)+1)
	if ns != nil {
		parts = append(parts, "namespace "+string(ns.UID)+"/"+ns.ResourceVersion)
	}
	for i := range pods {
		parts = append(parts, "pod "+string(pods[i].UID)+"/"+pods[i].ResourceVersion)
	}
	for i := range others {
		parts = append(parts, fmt.Sprintf("policy %s/%d", others[i].UID, others[i].Generation))
	}
	// List order from the cache is not guaranteed.
	sort.Strings(parts)
	h := sha256.New()
	fmt.Fprintf(h, "%s/%d\n%s", p.UID, p.Generation, strings.Join(parts, "\n"))
	return hex.EncodeToString(h.Sum(nil))
}
