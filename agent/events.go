package agent

import (
	"context"
	"fmt"

	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
)

// ReportingController is the reportingController of the agent's Events.
const ReportingController = "sidewall-agent"

// Event reasons and actions the agent records on pods.
const (
	EventReasonMapFull      = "MapFull"
	EventReasonEnforced     = "Enforced"
	EventActionFailClosed   = "FailClosed"
	EventActionEnforce      = "Enforce"
	EventReasonAttachFailed = "AttachFailed"
	EventActionAttach       = "Attach"
	maxReportingInstanceLen = 128 // events.k8s.io validation limit
)

// NewEventRecorder returns a recorder of events.k8s.io Events reported by
// sidewall-agent on nodeName. It writes them until ctx is done.
func NewEventRecorder(ctx context.Context, client kubernetes.Interface, nodeName string) (events.EventRecorder, error) {
	if len(nodeName) > maxReportingInstanceLen {
		nodeName = nodeName[:maxReportingInstanceLen]
	}
	b := events.NewBroadcaster(nodeSink{EventSink: &events.EventSinkImpl{Interface: client.EventsV1()}, instance: nodeName})
	if err := b.StartRecordingToSinkWithContext(ctx); err != nil {
		return nil, fmt.Errorf("start event recording: %w", err)
	}
	go func() {
		<-ctx.Done()
		b.Shutdown()
	}()
	return b.NewRecorder(scheme.Scheme, ReportingController), nil
}

// nodeSink sets the reporting instance to the node name: the broadcaster
// names it after the hostname, which in a pod without host networking is
// the pod's name and says nothing about which node reported.
type nodeSink struct {
	events.EventSink
	instance string
}

func (s nodeSink) Create(ctx context.Context, ev *eventsv1.Event) (*eventsv1.Event, error) {
	ev = ev.DeepCopy()
	ev.ReportingInstance = s.instance
	return s.EventSink.Create(ctx, ev)
}

func (s nodeSink) Update(ctx context.Context, ev *eventsv1.Event) (*eventsv1.Event, error) {
	ev = ev.DeepCopy()
	ev.ReportingInstance = s.instance
	return s.EventSink.Update(ctx, ev)
}
