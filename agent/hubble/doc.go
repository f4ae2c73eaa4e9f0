// Package hubble serves Hubble's observer.Observer gRPC API for the flows
// of sidewall's container-scoped verdicts, so that the stock `hubble observe`
// CLI works against the node agent unchanged.
//
// Requests are filtered by Hubble's own filters
// (pkg/hubble/filters.BuildFilterList: the CLI sends every --from-label,
// --verdict, --pod, ... as a whitelist and --not as a blacklist, and filters
// nothing itself) and field masks are applied by Hubble's
// pkg/hubble/parser/fieldmask. GetFlows follows Hubble's LocalObserverServer
// (follow, last/first N, since/until with since taking precedence over N,
// lost-event reporting at most once per second). That server is not
// embedded: its raw-sample parser pulls Envoy's API and Cilium's policy
// engine into the agent, and its lock-free ring (pkg/hubble/container) never
// exposes the newest flow until the next one is written, so on a quiet node
// the one denied flow a user waits for would not show. The ring here holds
// Hubble's default 4095 flows behind a short mutex. The gRPC health service
// that `hubble status` checks is registered too.
//
// Publish never waits for readers: a follower that falls behind is
// overtaken by the writer and receives a LostEvent (source
// HUBBLE_RING_BUFFER) with the exact number of flows it missed, before the
// flows that follow the gap.
//
// Event and Converter turn one sidewall verdict into a flow.Flow shaped like
// the ones Cilium emits: a deny is a drop event with reason POLICY_DENIED
// ("Policy denied DROPPED" in compact output), an allow or audit is a
// policy-verdict event. The restricted container is named by a
// `k8s:sidewall.io/container=<name>` label on its side of the flow, so
// `hubble observe --from-label sidewall.io/container=<name>` selects it, and
// by the flow's extensions (a google.protobuf.Struct).
package hubble
