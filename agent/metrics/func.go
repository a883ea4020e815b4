package metrics

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// FuncCollector exports one metric whose samples are read on every scrape,
// for counters kept elsewhere: BPF maps, the audit logger's drop counts.
type FuncCollector struct {
	desc *prometheus.Desc
	typ  prometheus.ValueType
	read func(emit func(value float64, labelValues ...string))
}

// NewFuncCollector describes a metric named portcullis_<subsystem>_<name>
// with the given variable labels. On scrape, read is called and must call
// emit once per label combination, with the label values in order. read
// runs on the scrape goroutine; it must be safe for concurrent use and fast.
func NewFuncCollector(subsystem, name, help string, typ prometheus.ValueType, labels []string,
	read func(emit func(value float64, labelValues ...string))) *FuncCollector {
	return &FuncCollector{
		desc: prometheus.NewDesc(prometheus.BuildFQName(Namespace, subsystem, name), help, labels, nil),
		typ:  typ,
		read: read,
	}
}

// Describe implements prometheus.Collector.
func (c *FuncCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector. A sample whose label values do
// not match the declared labels is reported as an invalid metric, which
// fails the scrape loudly rather than exporting a wrong series.
func (c *FuncCollector) Collect(ch chan<- prometheus.Metric) {
	c.read(func(v float64, lv ...string) {
		m, err := prometheus.NewConstMetric(c.desc, c.typ, v, lv...)
		if err != nil {
			m = prometheus.NewInvalidMetric(c.desc, err)
		}
		ch <- m
	})
}

// AuditStats is what RegisterAuditDrops needs of the audit logger.
type AuditStats func() (droppedAllows, droppedDenies, subscriberDrops uint64)

// RegisterAuditDrops exports portcullis_audit_records_dropped_total{decision}
// and portcullis_audit_subscriber_records_dropped_total, read from stats on
// scrape.
func (m *Metrics) RegisterAuditDrops(stats AuditStats) error {
	dropped := NewFuncCollector("audit", "records_dropped_total",
		"Audit records lost because the buffer was full, by decision (allow|deny).",
		prometheus.CounterValue, []string{"decision"},
		func(emit func(float64, ...string)) {
			a, d, _ := stats()
			emit(float64(a), "allow")
			emit(float64(d), "deny")
		})
	subs := NewFuncCollector("audit", "subscriber_records_dropped_total",
		"Audit records a slow live subscriber (debug tail) did not receive.",
		prometheus.CounterValue, nil,
		func(emit func(float64, ...string)) {
			_, _, s := stats()
			emit(float64(s))
		})
	if err := m.reg.Register(dropped); err != nil {
		return fmt.Errorf("register audit drops: %w", err)
	}
	if err := m.reg.Register(subs); err != nil {
		return fmt.Errorf("register audit subscriber drops: %w", err)
	}
	return nil
}
