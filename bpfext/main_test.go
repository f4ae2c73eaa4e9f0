package bpfext

import (
	"encoding/json"
	"fmt"
	"os"
	"testing"

	"github.com/sidewall/sidewall/hack/harness/nettest"
)

const loaderEnv = "SIDEWALL_TEST_LOADER"

// TestMain lets the test binary double as the traffic helper (nettest) and
// as a loader process that loads, attaches, writes the maps and exits.
func TestMain(m *testing.M) {
	nettest.MaybeRunHelper()
	if cfg := os.Getenv(loaderEnv); cfg != "" {
		if err := runLoader(cfg); err != nil {
			fmt.Fprintln(os.Stderr, "loader:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type loaderConfig struct {
	PinDir     string
	PodCgroup  string
	Containers []Container
	Pods       []Pod
	Identities []PeerIdentity
	Rules      []Rule
}

func runLoader(cfg string) error {
	var c loaderConfig
	if err := json.Unmarshal([]byte(cfg), &c); err != nil {
		return err
	}
	d, err := Load(Options{PinDir: c.PinDir})
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.UpsertContainers(c.Containers); err != nil {
		return err
	}
	if err := d.UpsertPods(c.Pods); err != nil {
		return err
	}
	if err := d.UpsertIdentities(c.Identities); err != nil {
		return err
	}
	if err := d.UpsertRules(c.Rules); err != nil {
		return err
	}
	_, err = d.Attach(c.PodCgroup)
	return err
}
