package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/sidewall/sidewall/bpfext"
	"github.com/sidewall/sidewall/hack/harness"
)

// TestChurn runs a small churn (20 cycles under 10 policies, 3 resident
// pods) end to end: the real agent binary against envtest on the local
// node harness. It fails on a leak or a missed reconcile, and checks the
// baseline really counted the resident pods, so an empty read of the maps
// cannot pass as "back to baseline".
func TestChurn(t *testing.T) {
	harness.RequirePrivileged(t)
	const resident = 3
	var out bytes.Buffer
	r, err := Run(Config{
		Cycles: 20, Policies: 10, Resident: resident, Workers: 4,
		Timeout: 3 * time.Minute, ClassifyTimeout: 10 * time.Second, GoroutineSlack: 10,
		LogLevel: "warn", Out: &out,
	})
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if r.Cycles != 20 || r.Missed != 0 || len(r.Leaks) != 0 {
		t.Errorf("cycles %d, missed %d, leaks %v; want 20, 0, none", r.Cycles, r.Missed, r.Leaks)
	}
	if got := r.Baseline.Maps[bpfext.MapPods]; got != resident {
		t.Errorf("baseline sw_pods = %d, want %d (one per resident pod)", got, resident)
	}
	if r.Baseline.Attached < 1 || r.Baseline.Goroutines < 1 {
		t.Errorf("baseline attached %d, goroutines %d: both must be counted", r.Baseline.Attached, r.Baseline.Goroutines)
	}
	if r.End.Reconciles <= r.Baseline.Reconciles {
		t.Errorf("agent reconciles %d -> %d: the churn must have been reconciled", r.Baseline.Reconciles, r.End.Reconciles)
	}
	if !strings.Contains(out.String(), "leaked cgroup attachments/entries of 20 removed pods: 0") {
		t.Errorf("figures lack the leak count of the 20 removed pods")
	}
}
