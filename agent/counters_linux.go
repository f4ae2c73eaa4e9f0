package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidewall/sidewall/bpfext"
)

// datapathCollector exports the datapath's own per-CPU verdict counters at
// scrape time: every verdict, including the allowed packets of known flows
// that produce no event.
type datapathCollector struct {
	dp                     *bpfext.Datapath
	verdicts, lost, orphan *prometheus.Desc
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
	})
}

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.verdicts
	ch <- c.lost
	ch <- c.orphan
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
}
