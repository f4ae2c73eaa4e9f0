package bpfext

import (
	"crypto/rand"
	"encoding/hex"
	"path/filepath"
	"testing"

	"github.com/sidewall/sidewall/hack/harness"
)

func requireRoot(t testing.TB) {
	t.Helper()
	harness.RequirePrivileged(t)
}

func uniqueName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// newTestDatapath loads the datapath into a pin directory of its own.
func newTestDatapath(t testing.TB) *Datapath {
	t.Helper()
	requireRoot(t)
	dir := filepath.Join(DefaultBPFFSRoot, uniqueName("sidewall-test-"))
	d, err := Load(Options{PinDir: dir, MaxEntries: map[string]uint32{MapEvents: 1 << 20}})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Unpin(); err != nil {
			t.Errorf("unpin: %v", err)
		}
		d.Close()
	})
	return d
}

func TestLoad(t *testing.T) {
	d := newTestDatapath(t)
	for _, s := range Slots() {
		if d.VerdictProgram(s) == nil {
			t.Errorf("slot %s: no verdict program", s)
		}
	}
}
