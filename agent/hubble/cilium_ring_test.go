package hubble

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	v1 "github.com/cilium/cilium/pkg/hubble/api/v1"
	"github.com/cilium/cilium/pkg/hubble/container"
)

// TestCiliumRingFollowNeedsTwoFlows shows, with Cilium's own ring, why
// CiliumSource waits for a Cilium Hubble to hold two flows before it
// follows: a follower that starts where Cilium's GetFlows starts one
// (LastWriteParallel) on a ring with fewer gets no flow, ever. If Cilium
// fixes it, this test fails and the wait can go.
func TestCiliumRingFollowNeedsTwoFlows(t *testing.T) {
	for pre, want := range map[int]bool{0: false, 1: false, 2: true, 3: true} {
		ring := container.NewRing(container.Capacity4095)
		for range pre {
			ring.Write(&v1.Event{Timestamp: timestamppb.Now(), Event: &flowpb.Flow{}})
		}
		r := container.NewRingReader(ring, ring.LastWriteParallel())
		go func() {
			time.Sleep(50 * time.Millisecond)
			for range 3 {
				ring.Write(&v1.Event{Timestamp: timestamppb.Now(), Event: &flowpb.Flow{Uuid: "new"}})
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		got := r.NextFollow(ctx) != nil
		cancel()
		if got != want {
			t.Errorf("follower of a ring with %d flows got a new flow: %v, want %v", pre, got, want)
		}
	}
}
