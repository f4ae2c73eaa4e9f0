package agent

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestVerdictSeriesFollowPods churns pods through the verdict metric: the
// series of a deleted pod must go, or sidewall_verdicts_total grows with
// every pod the node ever ran.
func TestVerdictSeriesFollowPods(t *testing.T) {
	m := NewMetrics(nil)
	const resident, churned = 3, 200
	live := map[podKey]bool{}
	for i := range resident {
		k := podKey{"shop", fmt.Sprintf("web-%d", i)}
		live[k] = true
		m.countVerdict(k.namespace, k.name, "log-shipper", "shop/shipper", "egress", "deny")
	}
	for i := range churned {
		k := podKey{"batch", fmt.Sprintf("job-%d", i)}
		// Two containers, two verdicts: several series per pod.
		m.countVerdict(k.namespace, k.name, "log-shipper", "batch/shipper", "egress", "deny")
		m.countVerdict(k.namespace, k.name, "app", "", "egress", "allow")
		live[k] = true
		m.forgetPods(live)
		delete(live, k) // the pod is deleted before the next reconcile
	}
	m.forgetPods(live)
	if n := testutil.CollectAndCount(m.verdicts, "sidewall_verdicts_total"); n != resident {
		t.Errorf("after %d pods came and went: %d verdict series, want %d (the resident pods')", churned, n, resident)
	}
	// A pod that is still there keeps its counts.
	if v := testutil.ToFloat64(m.verdicts.WithLabelValues("shop", "web-0", "log-shipper", "shop/shipper", "egress", "deny")); v != 1 {
		t.Errorf("resident pod's count: %v, want 1", v)
	}
}
