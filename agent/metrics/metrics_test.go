package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRequestsAndConnections(t *testing.T) {
	m := New(BuildInfo{Version: "v0.1.0", Revision: "abc123"})
	m.ObserveRequest("allow", "", "shop/readers", "enforce", 20*time.Microsecond)
	m.ObserveRequest("deny", "expired", "", "enforce", 30*time.Microsecond)
	m.ObserveRequest("deny", "expired", "", "enforce", 30*time.Microsecond)
	m.Connection(ConnAccepted)
	m.Connection(ConnRefusedTLS)
	m.StreamIdleTimeout("upgrade")
	m.StreamIdleTimeout("h2")
	m.StreamIdleTimeout("h2")
	m.SetEnrolledPods(3)
	m.SetEnrolFailedPods(1)
	m.PreexistingReset(2)

	want := `
# HELP portcullis_verifier_requests_total Requests decided by the verifier, by decision (allow|deny), reason, policy and mode (enforce|audit).
# TYPE portcullis_verifier_requests_total counter
portcullis_verifier_requests_total{decision="allow",mode="enforce",policy="shop/readers",reason="none"} 1
portcullis_verifier_requests_total{decision="deny",mode="enforce",policy="none",reason="expired"} 2
# HELP portcullis_verifier_connections_total Captured connections by result (accepted, passthrough, refused_tls, refused_non_http, refused_limit, refused_node_limit, refused_timeout, refused_l4).
# TYPE portcullis_verifier_connections_total counter
portcullis_verifier_connections_total{result="accepted"} 1
portcullis_verifier_connections_total{result="refused_tls"} 1
# HELP portcullis_verifier_stream_idle_timeouts_total Exchanges closed because no byte of their bodies or tunnel moved either way for limits.streamIdleTimeout, by protocol (http/1.1, h2, grpc, upgrade).
# TYPE portcullis_verifier_stream_idle_timeouts_total counter
portcullis_verifier_stream_idle_timeouts_total{protocol="h2"} 2
portcullis_verifier_stream_idle_timeouts_total{protocol="upgrade"} 1
# HELP portcullis_agent_enrolled_pods Pods on this node whose inbound connections are captured.
# TYPE portcullis_agent_enrolled_pods gauge
portcullis_agent_enrolled_pods 3
# HELP portcullis_agent_enrol_failed_pods Pods on this node a policy selects whose enrolment is failing (retried with backoff; see the workload's last error).
# TYPE portcullis_agent_enrol_failed_pods gauge
portcullis_agent_enrol_failed_pods 1
# HELP portcullis_agent_preexisting_connections_reset_total Connections an application accepted before capture covered their port, reset when capture started.
# TYPE portcullis_agent_preexisting_connections_reset_total counter
portcullis_agent_preexisting_connections_reset_total 2
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want),
		"portcullis_verifier_requests_total", "portcullis_verifier_connections_total",
		"portcullis_verifier_stream_idle_timeouts_total", "portcullis_agent_enrolled_pods", "portcullis_agent_enrol_failed_pods",
		"portcullis_agent_preexisting_connections_reset_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.decisionSeconds); n != 1 {
		t.Errorf("decision histogram series = %d, want 1", n)
	}
}

func TestBuildInfo(t *testing.T) {
	m := New(BuildInfo{Version: "v0.1.0", Revision: "abc123"})
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, mf := range mfs {
		if mf.GetName() != "portcullis_build_info" {
			continue
		}
		found = true
		labels := map[string]string{}
		for _, l := range mf.GetMetric()[0].GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["version"] != "v0.1.0" || labels["revision"] != "abc123" || labels["goversion"] == "" {
			t.Errorf("build_info labels = %v, want version v0.1.0, revision abc123 and a goversion", labels)
		}
	}
	if !found {
		t.Error("portcullis_build_info not exported")
	}
}

func TestFuncCollectorAndAuditDrops(t *testing.T) {
	m := New(BuildInfo{})
	var allows, denies, subs uint64 = 5, 1, 7
	if err := m.RegisterAuditDrops(func() (uint64, uint64, uint64) { return allows, denies, subs }); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP portcullis_audit_records_dropped_total Audit records lost because the buffer was full, by decision (allow|deny).
# TYPE portcullis_audit_records_dropped_total counter
portcullis_audit_records_dropped_total{decision="allow"} 5
portcullis_audit_records_dropped_total{decision="deny"} 1
# HELP portcullis_audit_subscriber_records_dropped_total Audit records a slow live subscriber (debug tail) did not receive.
# TYPE portcullis_audit_subscriber_records_dropped_total counter
portcullis_audit_subscriber_records_dropped_total 7
`
	names := []string{"portcullis_audit_records_dropped_total", "portcullis_audit_subscriber_records_dropped_total"}
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	// Values are read on scrape, not copied at registration.
	allows = 6
	want = strings.Replace(want, `{decision="allow"} 5`, `{decision="allow"} 6`, 1)
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}

	bad := NewFuncCollector("bpf", "drops_total", "x", prometheus.CounterValue, []string{"reason"},
		func(emit func(float64, ...string)) { emit(1) })
	reg := prometheus.NewRegistry()
	reg.MustRegister(bad)
	if _, err := reg.Gather(); err == nil {
		t.Error("gather with a sample missing its label value succeeded, want an error")
	}
}

func TestLintAndHandler(t *testing.T) {
	m := New(BuildInfo{})
	m.ObserveRequest("allow", "", "p", "enforce", time.Microsecond)
	m.ObserveUpstream(time.Millisecond)
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, Namespace+"_") {
			t.Errorf("lint %s: %s", p.Metric, p.Text)
		}
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, name := range []string{"portcullis_verifier_upstream_duration_seconds_bucket", "portcullis_build_info", "go_goroutines"} {
		if !strings.Contains(string(body), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

func TestNilMetricsIsNoop(t *testing.T) {
	var m *Metrics
	m.ObserveRequest("allow", "", "", "enforce", 0)
	m.ObserveUpstream(0)
	m.Connection(ConnAccepted)
	m.StreamIdleTimeout("http/1.1")
	m.ConnOpened()
	m.ConnClosed()
	m.SetEnrolledPods(1)
}
