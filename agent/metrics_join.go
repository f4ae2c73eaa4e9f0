package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidewall/sidewall/agent/hubble"
)

// joinCollector exports the Hubble join's counters and the state of the
// Cilium Hubble stream.
type joinCollector struct {
	j                                 *hubble.Joiner
	src                               *hubble.CiliumSource
	flows, entries, evicted, up, lost *prometheus.Desc
}

func (m *Metrics) registerJoin(j *hubble.Joiner, src *hubble.CiliumSource) {
	m.registry.MustRegister(&joinCollector{j: j, src: src,
		flows: prometheus.NewDesc("sidewall_hubble_cilium_flows_total",
			"Flows of Cilium's Hubble re-served, by how their container was found (5-tuple, cgroup, bound-port, none).", []string{"join"}, nil),
		entries: prometheus.NewDesc("sidewall_hubble_join_entries",
			"Connections the join holds (bounded by --hubble-join-entries).", nil, nil),
		evicted: prometheus.NewDesc("sidewall_hubble_join_evicted_total",
			"Connections dropped from the join for room before their TTL.", nil, nil),
		up: prometheus.NewDesc("sidewall_hubble_cilium_connected",
			"1 while the stream from Cilium's Hubble is up.", nil, nil),
		lost: prometheus.NewDesc("sidewall_hubble_cilium_lost_total",
			"Flows Cilium's Hubble reported lost to sidewall's stream.", nil, nil),
	})
}

func (c *joinCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.flows, c.entries, c.evicted, c.up, c.lost} {
		ch <- d
	}
}

func (c *joinCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.j.Stats()
	for how, n := range map[string]uint64{hubble.JoinTuple: s.Tuple, hubble.JoinCgroup: s.Cgroup, hubble.JoinPort: s.Port, hubble.JoinNone: s.None} {
		ch <- prometheus.MustNewConstMetric(c.flows, prometheus.CounterValue, float64(n), how)
	}
	ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(s.Entries))
	ch <- prometheus.MustNewConstMetric(c.evicted, prometheus.CounterValue, float64(s.Evicted))
	up := 0.0
	if _, err := c.src.UpstreamStatus(); err == nil {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, float64(c.src.Lost()))
}
