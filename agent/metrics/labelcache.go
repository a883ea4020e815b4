package metrics

import (
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// maxCachedRequestLabels bounds requestCounters' cache. The label sets are
// bounded (decision × reason × mode × loaded policies: a few hundred on a
// busy node); this is the backstop should a caller ever pass unbounded
// values, past which children are looked up in the vector every time.
const maxCachedRequestLabels = 4096

// requestLabels are the label values of portcullis_verifier_requests_total
// as ObserveRequest receives them (before orNone).
type requestLabels struct {
	decision, reason, policy, mode string
}

// requestCounters memoises the children of the requests CounterVec by
// label tuple. CounterVec.WithLabelValues hashes and checks every value and
// takes the vector's lock on every call; after the first request with a
// tuple, a lookup here is one lock-free sync.Map load.
type requestCounters struct {
	vec *prometheus.CounterVec
	// max bounds n, the number of entries in m (requestLabels →
	// prometheus.Counter).
	max int32
	n   atomic.Int32
	m   sync.Map
}

func newRequestCounters(vec *prometheus.CounterVec, max int32) *requestCounters {
	return &requestCounters{vec: vec, max: max}
}

// get returns the counter of k, creating the child on first use.
func (c *requestCounters) get(k requestLabels) prometheus.Counter {
	if v, ok := c.m.Load(k); ok {
		return v.(prometheus.Counter)
	}
	ctr := c.vec.WithLabelValues(k.decision, orNone(k.reason), orNone(k.policy), k.mode)
	// Reserve a slot before storing so that racing misses cannot overshoot
	// the bound.
	if c.n.Add(1) > c.max {
		c.n.Add(-1)
		return ctr
	}
	// The key outlives the request: do not let it pin a larger buffer the
	// caller's strings may be slices of.
	k = requestLabels{strings.Clone(k.decision), strings.Clone(k.reason), strings.Clone(k.policy), strings.Clone(k.mode)}
	if _, loaded := c.m.LoadOrStore(k, ctr); loaded {
		c.n.Add(-1)
	}
	return ctr
}
