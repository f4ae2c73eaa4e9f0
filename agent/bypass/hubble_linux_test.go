package bypass

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidewall/sidewall/hack/harness"
)

// hubbleFlow is the part of a `hubble observe -o jsonpb` line the tests
// look at.
type hubbleFlow struct {
	Flow struct {
		Verdict string `json:"verdict"`
		Source  struct {
			PodName string   `json:"pod_name"`
			Labels  []string `json:"labels"`
		} `json:"source"`
		Destination struct {
			PodName string   `json:"pod_name"`
			Labels  []string `json:"labels"`
		} `json:"destination"`
		L4 struct {
			TCP *struct {
				DestinationPort uint16 `json:"destination_port"`
			} `json:"TCP"`
			UDP *struct {
				DestinationPort uint16 `json:"destination_port"`
			} `json:"UDP"`
		} `json:"l4"`
		Extensions struct {
			Value map[string]any `json:"value"`
		} `json:"extensions"`
	} `json:"flow"`
}

func (f hubbleFlow) dport() uint16 {
	switch {
	case f.Flow.L4.TCP != nil:
		return f.Flow.L4.TCP.DestinationPort
	case f.Flow.L4.UDP != nil:
		return f.Flow.L4.UDP.DestinationPort
	}
	return 0
}

func (f hubbleFlow) ext(k string) string {
	s, _ := f.Flow.Extensions.Value[k].(string)
	return s
}

// hubbleFollower is the real hubble CLI following the agent's observer
// API (`hubble observe --follow`), as hubble-relay or an exporter would.
type hubbleFollower struct {
	mu    sync.Mutex
	flows []hubbleFlow
}

// followHubble starts `hubble observe --follow` with the filter args
// against the suite's agent, from two seconds before now (--since, so a flow
// published while the CLI connects is not missed); it stops when the test
// ends.
func (s *suite) followHubble(t *testing.T, args ...string) *hubbleFollower {
	t.Helper()
	bin, err := harness.Tool("hubble")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, append([]string{"observe", "--server", s.HubbleAddr(), "--follow", "-o", "jsonpb",
		"--since", time.Now().Add(-2 * time.Second).UTC().Format(time.RFC3339)}, args...)...)
	cmd.Env = append(os.Environ(), "HUBBLE_CONFIG=/dev/null", "HOME="+t.TempDir())
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f := &hubbleFollower{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var fl hubbleFlow
			if err := json.Unmarshal(sc.Bytes(), &fl); err != nil || fl.Flow.Verdict == "" {
				continue
			}
			f.mu.Lock()
			f.flows = append(f.flows, fl)
			f.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		<-done
		if t.Failed() {
			t.Logf("hubble observe stderr: %s", stderr.String())
		}
	})
	return f
}

// wait returns the first flow that match accepts, failing the test after
// 10 s.
func (f *hubbleFollower) wait(t *testing.T, what string, match func(hubbleFlow) bool) hubbleFlow {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		f.mu.Lock()
		for _, fl := range f.flows {
			if match(fl) {
				f.mu.Unlock()
				return fl
			}
		}
		n := len(f.flows)
		f.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("hubble observe --follow never showed %s (%d flows seen)", what, n)
		}
	}
}

func hasLabel(labels []string, l string) bool {
	for _, x := range labels {
		if x == l {
			return true
		}
	}
	return false
}
