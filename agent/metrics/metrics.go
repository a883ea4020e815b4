// Package metrics defines the agent's Prometheus metrics: one registry,
// names under the portcullis_ namespace in base units, and labels taken only
// from bounded sets (decisions, reasons, configured policy and issuer names —
// never pods, subjects or tokens).
//
// Counters that live elsewhere (BPF maps, the audit logger) are exported by
// FuncCollector, which reads them on scrape instead of copying them on a
// timer.
package metrics

import (
	"net/http"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric name.
const Namespace = "portcullis"

// Connection results for Metrics.Connection. The set is closed.
const (
	// ConnAccepted: an HTTP connection was accepted on a captured port.
	ConnAccepted = "accepted"
	// ConnPassthrough: a connection on a passthrough port was accepted.
	ConnPassthrough = "passthrough"
	// ConnRefusedTLS: a TLS ClientHello arrived on a captured HTTP port.
	ConnRefusedTLS = "refused_tls"
	// ConnRefusedNonHTTP: the first bytes were not an HTTP request.
	ConnRefusedNonHTTP = "refused_non_http"
	// ConnRefusedLimit: the per-pod concurrent connection limit was reached.
	ConnRefusedLimit = "refused_limit"
	// ConnRefusedNodeLimit: the node-wide concurrent connection limit (all
	// pods together) was reached.
	ConnRefusedNodeLimit = "refused_node_limit"
	// ConnRefusedTimeout: no request arrived before the header-read timeout.
	ConnRefusedTimeout = "refused_timeout"
	// ConnRefusedL4: a passthrough connection was refused by policy.
	ConnRefusedL4 = "refused_l4"
)

// Metrics holds every collector of the agent. The zero value is not usable;
// call New. A nil *Metrics is valid for every Observe/Inc method and does
// nothing, so components can run without metrics in tests.
type Metrics struct {
	reg *prometheus.Registry

	requests        *prometheus.CounterVec
	requestCtrs     *requestCounters
	decisionSeconds prometheus.Histogram
	upstreamSeconds prometheus.Histogram
	connections     *prometheus.CounterVec
	streamIdle      *prometheus.CounterVec
	openConns       prometheus.Gauge
	enrolledPods    prometheus.Gauge
	enrolFailed     prometheus.Gauge
	preexisting     prometheus.Counter
}

// BuildInfo labels portcullis_build_info.
type BuildInfo struct {
	// Version is the release version; empty means "devel".
	Version string
	// Revision is the VCS revision; empty means the one recorded by the Go
	// toolchain, or "unknown".
	Revision string
}

// New creates the collectors and registers them, with the Go runtime and
// process collectors, on a new registry (never the global default).
func New(bi BuildInfo) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		reg: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "verifier", Name: "requests_total",
			Help: "Requests decided by the verifier, by decision (allow|deny), reason, policy and mode (enforce|audit).",
		}, []string{"decision", "reason", "policy", "mode"}),
		decisionSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "verifier", Name: "decision_duration_seconds",
			Help:    "Time to authorize one request (token check and policy evaluation).",
			Buckets: []float64{2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1, 1},
		}),
		upstreamSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "verifier", Name: "upstream_duration_seconds",
			Help:    "Time from forwarding a request to receiving the application's response headers.",
			Buckets: []float64{1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "verifier", Name: "connections_total",
			Help: "Captured connections by result (accepted, passthrough, refused_tls, refused_non_http, refused_limit, refused_node_limit, refused_timeout, refused_l4).",
		}, []string{"result"}),
		streamIdle: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "verifier", Name: "stream_idle_timeouts_total",
			Help: "Exchanges closed because no byte of their bodies or tunnel moved either way for limits.streamIdleTimeout, by protocol (http/1.1, h2, grpc, upgrade).",
		}, []string{"protocol"}),
		openConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "verifier", Name: "open_connections",
			Help: "Captured connections currently open.",
		}),
		enrolledPods: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "agent", Name: "enrolled_pods",
			Help: "Pods on this node whose inbound connections are captured.",
		}),
		enrolFailed: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "agent", Name: "enrol_failed_pods",
			Help: "Pods on this node a policy selects whose enrolment is failing (retried with backoff; see the workload's last error).",
		}),
		preexisting: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "agent", Name: "preexisting_connections_reset_total",
			Help: "Connections an application accepted before capture covered their port, reset when capture started.",
		}),
	}
	m.requestCtrs = newRequestCounters(m.requests, maxCachedRequestLabels)
	version, revision := bi.Version, bi.Revision
	if version == "" {
		version = "devel"
	}
	if revision == "" {
		revision = "unknown"
		if info, ok := debug.ReadBuildInfo(); ok {
			for _, s := range info.Settings {
				if s.Key == "vcs.revision" {
					revision = s.Value
				}
			}
		}
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help:        "Build metadata; the value is always 1.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": runtime.Version()},
	})
	build.Set(1)
	reg.MustRegister(m.requests, m.decisionSeconds, m.upstreamSeconds, m.connections, m.streamIdle, m.openConns,
		m.enrolledPods, m.enrolFailed, m.preexisting, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry, for registering more collectors and for
// tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// ObserveRequest counts one decided request and its decision latency.
// An empty reason or policy is recorded as "none".
func (m *Metrics) ObserveRequest(decision, reason, policy, mode string, decisionTime time.Duration) {
	if m == nil {
		return
	}
	m.requestCtrs.get(requestLabels{decision, reason, policy, mode}).Inc()
	m.decisionSeconds.Observe(decisionTime.Seconds())
}

// ObserveUpstream records the time the application took to answer.
func (m *Metrics) ObserveUpstream(d time.Duration) {
	if m == nil {
		return
	}
	m.upstreamSeconds.Observe(d.Seconds())
}

// Connection counts a captured connection with one of the Conn* results.
func (m *Metrics) Connection(result string) {
	if m == nil {
		return
	}
	m.connections.WithLabelValues(result).Inc()
}

// StreamIdleTimeout counts an exchange closed because its bodies or tunnel
// stalled; protocol is http/1.1, h2, grpc or upgrade (an upgraded tunnel).
func (m *Metrics) StreamIdleTimeout(protocol string) {
	if m == nil {
		return
	}
	m.streamIdle.WithLabelValues(protocol).Inc()
}

// ConnOpened and ConnClosed track currently open captured connections.
func (m *Metrics) ConnOpened() {
	if m != nil {
		m.openConns.Inc()
	}
}

// ConnClosed is the counterpart of ConnOpened.
func (m *Metrics) ConnClosed() {
	if m != nil {
		m.openConns.Dec()
	}
}

// PreexistingReset counts n connections reset at the start of capture.
func (m *Metrics) PreexistingReset(n int) {
	if m == nil {
		return
	}
	m.preexisting.Add(float64(n))
}

// SetEnrolledPods sets the number of captured pods.
func (m *Metrics) SetEnrolledPods(n int) {
	if m == nil {
		return
	}
	m.enrolledPods.Set(float64(n))
}

// SetEnrolFailedPods sets the number of pods whose enrolment is failing.
func (m *Metrics) SetEnrolFailedPods(n int) {
	if m == nil {
		return
	}
	m.enrolFailed.Set(float64(n))
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
