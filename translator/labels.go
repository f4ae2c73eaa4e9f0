package translator

import (
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"

	slimv1 "github.com/cilium/cilium/pkg/k8s/slim/k8s/apis/meta/v1"
	"github.com/cilium/cilium/pkg/k8s/utils"
	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/labelsfilter"
	corev1 "k8s.io/api/core/v1"
)

// DefaultClusterName is Cilium's default cluster name, carried by pods in
// the io.cilium.k8s.policy.cluster label.
const DefaultClusterName = "default"

var labelFilterOnce sync.Once

// initLabelFilter sets Cilium's label filter to its defaults. The filter is
// a process-wide setting that Cilium's agent initialises from its config.
func initLabelFilter() {
	labelFilterOnce.Do(func() {
		if err := labelsfilter.ParseLabelPrefixCfg(slog.New(slog.DiscardHandler), nil, nil, ""); err != nil {
			panic(fmt.Sprintf("BUG: cilium's default label prefixes do not parse: %v", err))
		}
	})
}

// IdentityLabels returns the identity labels Cilium derives for a pod, the
// labels its endpoint selectors match: the pod's labels (minus
// Cilium-owned ones), its namespace's name and labels
// (io.cilium.k8s.namespace.labels.*), its service account and the cluster
// name, filtered by Cilium's default identity label prefixes (which drop
// pod-template-hash, controller-revision-hash, the StatefulSet pod name
// and the like). It is Cilium's own code (k8s/utils.SanitizePodLabels and
// labelsfilter.Filter). ns may be nil when the namespace is not known:
// then only the namespace's name is there.
func IdentityLabels(pod *corev1.Pod, ns *corev1.Namespace, clusterName string) labels.LabelArray {
	initLabelFilter()
	nsInfo := namespaceInfo{name: pod.Namespace}
	if ns != nil {
		nsInfo.labels = ns.Labels
	}
	m := utils.SanitizePodLabels(pod.Labels, nsInfo, pod.Spec.ServiceAccountName, clusterName)
	idLabels, _ := labelsfilter.Filter(labels.Map2Labels(m, labels.LabelSourceK8s))
	return idLabels.LabelArray()
}

// FilteredKeys returns the keys of a label selector that Cilium's label
// filter drops from identities, sorted: a selector that requires them
// (matchLabels, or matchExpressions In and Exists) matches no endpoint.
func FilteredKeys(sel *slimv1.LabelSelector) []string {
	if sel == nil {
		return nil
	}
	keys := map[string]bool{}
	for k := range sel.MatchLabels {
		keys[k] = true
	}
	for _, e := range sel.MatchExpressions {
		if e.Operator == slimv1.LabelSelectorOpIn || e.Operator == slimv1.LabelSelectorOpExists {
			keys[e.Key] = true
		}
	}
	initLabelFilter()
	var out []string
	for k := range keys {
		// A key may carry a source prefix ("k8s:app"); the filter sees
		// the bare key of a Kubernetes label.
		bare := k
		if src, rest, ok := strings.Cut(k, ":"); ok && (src == labels.LabelSourceK8s || src == labels.LabelSourceAny) {
			bare = rest
		}
		if kept, _ := labelsfilter.Filter(labels.Map2Labels(map[string]string{bare: "x"}, labels.LabelSourceK8s)); len(kept) == 0 {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

type namespaceInfo struct {
	name   string
	labels map[string]string
}

func (n namespaceInfo) GetName() string              { return n.name }
func (n namespaceInfo) GetLabels() map[string]string { return n.labels }
