package metrics

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
)

func newTestVec() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "requests_total", Help: "h"},
		[]string{"decision", "reason", "policy", "mode"})
}

// values reads every series of vec as "decision/reason/policy/mode" → count.
func values(t *testing.T, vec *prometheus.CounterVec) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(vec)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			got[l["decision"]+"/"+l["reason"]+"/"+l["policy"]+"/"+l["mode"]] = m.GetCounter().GetValue()
		}
	}
	return got
}

func cached(c *requestCounters) int {
	n := 0
	c.m.Range(func(any, any) bool { n++; return true })
	return n
}

func TestRequestCountersBound(t *testing.T) {
	vec := newTestVec()
	c := newRequestCounters(vec, 2)
	tuples := []requestLabels{
		{"allow", "", "shop/readers", "enforce"},
		{"deny", "expired", "", "enforce"},
		{"deny", "no_matching_rule", "", "audit"}, // past the bound: counted, not cached
	}
	for range 3 {
		for _, k := range tuples {
			c.get(k).Inc()
		}
	}
	want := map[string]float64{
		"allow/none/shop/readers/enforce":  3,
		"deny/expired/none/enforce":        3,
		"deny/no_matching_rule/none/audit": 3,
	}
	if diff := cmp.Diff(want, values(t, vec)); diff != "" {
		t.Errorf("series (-want +got):\n%s", diff)
	}
	if got, n := cached(c), c.n.Load(); got != 2 || n != 2 {
		t.Errorf("cache: got %d entries (count %d), want 2 (the bound)", got, n)
	}
	if a, b := c.get(tuples[0]), c.get(tuples[0]); a != b {
		t.Errorf("cached tuple: got children %p and %p, want the same", a, b)
	}
}

func TestRequestCountersConcurrent(t *testing.T) {
	vec := newTestVec()
	c := newRequestCounters(vec, 3)
	const goroutines, perTuple = 8, 500
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range perTuple * 5 {
				// Five tuples against a bound of three: misses race with
				// hits and with each other for the last slots.
				c.get(requestLabels{"deny", fmt.Sprint("r", (i+g)%5), "p", "enforce"}).Inc()
			}
		})
	}
	wg.Wait()
	got := values(t, vec)
	for r := range 5 {
		k := fmt.Sprintf("deny/r%d/p/enforce", r)
		if got[k] != goroutines*perTuple {
			t.Errorf("%s: got %v, want %d", k, got[k], goroutines*perTuple)
		}
	}
	if n, count := cached(c), c.n.Load(); n != 3 || count != 3 {
		t.Errorf("cache: got %d entries (count %d), want 3 (the bound)", n, count)
	}
}

// benchTuples is a busy node's mix: a few policies, decisions and reasons.
var benchTuples = []requestLabels{
	{"allow", "", "shop/orders-api", "enforce"},
	{"allow", "", "shop/readers", "enforce"},
	{"deny", "no_matching_rule", "", "enforce"},
	{"deny", "expired", "shop/orders-api", "enforce"},
	{"allow", "", "shop/no-deletes", "audit"},
	{"deny", "token_not_bound_to_source", "shop/orders-api", "enforce"},
}

// observeRequestUncached is ObserveRequest as it was before requestCounters:
// the child is resolved by WithLabelValues on every request.
func (m *Metrics) observeRequestUncached(decision, reason, policy, mode string, decisionTime time.Duration) {
	m.requests.WithLabelValues(decision, orNone(reason), orNone(policy), mode).Inc()
	m.decisionSeconds.Observe(decisionTime.Seconds())
}

// BenchmarkObserveRequest compares ObserveRequest with the cache (cached)
// and without it (WithLabelValues), serially and from every P.
//
//	go test -run '^$' -bench ObserveRequest -benchmem ./agent/metrics/
func BenchmarkObserveRequest(b *testing.B) {
	m := New(BuildInfo{})
	paths := []struct {
		name    string
		observe func(decision, reason, policy, mode string, d time.Duration)
	}{
		{"WithLabelValues", m.observeRequestUncached},
		{"cached", m.ObserveRequest},
	}
	for _, p := range paths {
		b.Run(p.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				k := &benchTuples[i%len(benchTuples)]
				p.observe(k.decision, k.reason, k.policy, k.mode, 20*time.Microsecond)
				i++
			}
		})
	}
	for _, p := range paths {
		b.Run(p.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					k := &benchTuples[i%len(benchTuples)]
					p.observe(k.decision, k.reason, k.policy, k.mode, 20*time.Microsecond)
					i++
				}
			})
		})
	}
}
