package harness

import (
	"os"
	"testing"
)

// The gates follow Cilium's pkg/testutils (PrivilegedTest, IntegrationTest):
// a test that needs root, or tools that `make tools` builds, runs only when
// asked for. `make test` (and so CI) asks for both, and there a test that
// cannot run fails rather than skips; `make test-unit` asks for neither.
const (
	// PrivilegedEnv asks for the tests that need root: BPF, cgroups,
	// network namespaces, mounts.
	PrivilegedEnv = "PRIVILEGED_TESTS"
	// IntegrationEnv asks for the tests that need built tools: a real
	// kube-apiserver and etcd (bin/k8s), the hubble CLI (bin/hubble).
	IntegrationEnv = "INTEGRATION_TESTS"
)

// Privileged reports whether privileged tests are asked for.
func Privileged() bool { return os.Getenv(PrivilegedEnv) != "" }

// Integration reports whether integration tests are asked for.
func Integration() bool { return os.Getenv(IntegrationEnv) != "" }

// RequirePrivileged skips tb unless privileged tests are asked for, and
// fails it if they are but the process is not root.
func RequirePrivileged(tb testing.TB) {
	tb.Helper()
	if !Privileged() {
		tb.Skipf("privileged test (needs root for BPF, cgroups and network namespaces): set %s=1, as `make test` does", PrivilegedEnv)
	}
	if os.Geteuid() != 0 {
		tb.Fatalf("%s is set but this test is not running as root: it loads BPF, creates cgroups and network namespaces", PrivilegedEnv)
	}
}

// RequireIntegration skips tb unless integration tests are asked for.
// What they need is checked where it is used, and fails the test when
// missing (for example testenv.ErrBinariesMissing).
func RequireIntegration(tb testing.TB) {
	tb.Helper()
	if !Integration() {
		tb.Skipf("integration test (needs tools that `make test` installs: kube-apiserver, etcd, hubble, clang): set %s=1, as `make test` does", IntegrationEnv)
	}
}
