package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidewall/sidewall/bpfext"
)

// datapathCollector exports the datapath's own per-CPU verdict counters at
// scrape time: every verdict, including the allowed packets of known flows
// that produce no event.
type datapathCollector struct {
	dp                                       *bpfext.Datapath
	verdicts, lost, orphan, suppressed, full *prometheus.Desc
}

// RegisterDatapath adds the datapath's counters to the metrics.
func (m *Metrics) RegisterDatapath(dp *bpfext.Datapath) error {
	return m.registry.Register(&datapathCollector{
		dp: dp,
		verdicts: prometheus.NewDesc("sidewall_datapath_verdicts_total",
			"Verdicts of the datapath programs (packets and socket calls), by direction, verdict and reason.",
			[]string{"direction", "verdict", "reason"}, nil),
		lost: prometheus.NewDesc("sidewall_datapath_events_lost_total",
			"Events dropped because the ring buffer was full.", nil, nil),
		orphan: prometheus.NewDesc("sidewall_datapath_unknown_cgroup_total",
			"Packets of attached pods whose cgroup no entry classifies (passed).", nil, nil),
		suppressed: prometheus.NewDesc("sidewall_datapath_events_suppressed_total",
			"Events not sent: rate-limit (over a container's budget) or aggregated (a repeated deny of one flow).",
			[]string{"why"}, nil),
		full: prometheus.NewDesc("sidewall_datapath_port_table_full_total",
			"Binds the bound-port table could not record (a pod's share used up, or the table full).", nil, nil),
	})
}

// budgetCollector exports, per container, the events its budget did not
// admit, named from the agent's current state.
type budgetCollector struct {
	a    *Agent
	desc *prometheus.Desc
}

func (c *budgetCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *budgetCollector) Collect(ch chan<- prometheus.Metric) {
	b, err := c.a.cfg.Datapath.EventBudgets()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	st := c.a.state.Load()
	type key struct{ ns, pod, container string }
	sum := map[key]uint64{}
	for cg, n := range b {
		if n == 0 {
			continue
		}
		var k key
		if st != nil {
			if info, ok := st.Cgroups[cg]; ok {
				k = key{info.Namespace, info.Pod, info.Container}
			}
		}
		sum[k] += n
	}
	for k, n := range sum {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), k.ns, k.pod, k.container)
	}
}

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.verdicts
	ch <- c.lost
	ch <- c.orphan
	ch <- c.suppressed
	ch <- c.full
}

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	cs, err := c.dp.Counters()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.verdicts, err)
		return
	}
	for k, v := range cs.Verdicts {
		ch <- prometheus.MustNewConstMetric(c.verdicts, prometheus.CounterValue, float64(v), k.Direction.String(), k.Verdict.String(), k.Reason.String())
	}
	ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, float64(cs.EventsLost))
	ch <- prometheus.MustNewConstMetric(c.orphan, prometheus.CounterValue, float64(cs.UnknownCgroup))
	ch <- prometheus.MustNewConstMetric(c.suppressed, prometheus.CounterValue, float64(cs.EventsRateLimited), "rate-limit")
	ch <- prometheus.MustNewConstMetric(c.suppressed, prometheus.CounterValue, float64(cs.EventsAggregated), "aggregated")
	ch <- prometheus.MustNewConstMetric(c.full, prometheus.CounterValue, float64(cs.PortTableFull))
}
