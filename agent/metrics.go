package agent

import (
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the agent's Prometheus metrics.
type Metrics struct {
	registry *prometheus.Registry
	verdicts *prometheus.CounterVec
	// podSeries holds the pods (namespace/name) that have verdict series,
	// so a pod's series go when the pod goes and churn does not grow them.
	mu                sync.Mutex
	podSeries         map[podKey]bool
	mapEntries        *prometheus.GaugeVec
	timeToClassify    prometheus.Histogram
	reconcileDuration prometheus.Histogram
	reconcileErrors   prometheus.Counter
	attachErrors      prometheus.Counter
	policyErrors      prometheus.Counter
	runtimeErrors     prometheus.Counter
	podsFailClosed    *prometheus.GaugeVec
	dnsAnswers        *prometheus.CounterVec
	dnsDropped        prometheus.Counter
	fqdnAddresses     prometheus.Gauge
}

// NewMetrics registers the agent's metrics on reg; a new registry (with the
// Go and process collectors) when reg is nil.
func NewMetrics(reg *prometheus.Registry) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	m := &Metrics{
		registry:  reg,
		podSeries: map[podKey]bool{},
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidewall_verdicts_total",
			Help: "Datapath verdicts reported as events (denies, audits and new allowed flows), by the restricted container and the deciding policy.",
		}, []string{"namespace", "pod", "container", "policy", "direction", "verdict"}),
		mapEntries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sidewall_map_entries",
			Help: "Entries in each datapath map after the last reconcile.",
		}, []string{"map"}),
		timeToClassify: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sidewall_time_to_classify_seconds",
			Help:    "How long a container ran unclassified (denied by its pod's fail-closed entry) before the agent classified it.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		reconcileDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sidewall_reconcile_duration_seconds",
			Help:    "Duration of successful reconciles.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidewall_reconcile_errors_total",
			Help: "Reconciles that failed (retried with backoff).",
		}),
		attachErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidewall_attach_errors_total",
			Help: "Pod cgroups the datapath could not be attached to (each retried until attached; an Event names the pod).",
		}),
		policyErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidewall_policy_errors_total",
			Help: "ContainerNetworkPolicies skipped because they could not be translated.",
		}),
		runtimeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidewall_runtime_errors_total",
			Help: "Container runtime (CRI) lookups that failed; those containers wait for the pod status to be classified.",
		}),
		podsFailClosed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sidewall_pods_fail_closed",
			Help: "Selected pods whose restricted containers deny everything instead of running their policy, by reason (map_full: the datapath maps cannot hold the policy).",
		}, []string{"reason"}),
		dnsAnswers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidewall_dns_answers_total",
			Help: "DNS answers the DNS proxy passed to containers with toFQDNs rules, by result: learned (addresses written), no_match (no toFQDNs selector matches the name), no_address, full (the FQDN map or the container's share is full: nothing learned, fail closed) or error.",
		}, []string{"result"}),
		dnsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidewall_dns_dropped_total",
			Help: "Queries and answers the DNS proxy dropped: not sent through the datapath, malformed, not answering the query, or the server unreachable.",
		}),
		fqdnAddresses: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sidewall_fqdn_learned_entries",
			Help: "Learned (container, address) entries in the FQDN map, after the last expiry sweep.",
		}),
	}
	reg.MustRegister(m.verdicts, m.mapEntries, m.timeToClassify, m.reconcileDuration, m.reconcileErrors, m.attachErrors, m.policyErrors, m.runtimeErrors, m.podsFailClosed,
		m.dnsAnswers, m.dnsDropped, m.fqdnAddresses)
	return m
}

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

type podKey struct{ namespace, name string }

// countVerdict counts one datapath verdict of a container of a pod.
func (m *Metrics) countVerdict(namespace, pod, container, policy, direction, verdict string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.podSeries[podKey{namespace, pod}] = true
	m.verdicts.WithLabelValues(namespace, pod, container, policy, direction, verdict).Inc()
}

// forgetPods deletes the verdict series of every pod live does not hold.
func (m *Metrics) forgetPods(live map[podKey]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.podSeries {
		if live[k] {
			continue
		}
		m.verdicts.DeletePartialMatch(prometheus.Labels{"namespace": k.namespace, "pod": k.name})
		delete(m.podSeries, k)
	}
}
