package daemon

import (
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portcullis-mesh/portcullis/agent/metrics"
)

// registerCollectors exports state owned by libraries that know nothing of
// Prometheus (the datapath's kernel counters, the policy store, the token
// validator), read on scrape.
func (a *Agent) registerCollectors() error {
	reg := a.metrics.Registry()
	cs := []prometheus.Collector{
		metrics.NewFuncCollector("datapath", "events_total",
			"Datapath events counted in the kernel (per-CPU map, summed), by event.",
			prometheus.CounterValue, []string{"event"},
			func(emit func(float64, ...string)) {
				cs, err := a.dp.Counters()
				if err != nil {
					return
				}
				for c, v := range cs {
					emit(float64(v), c.String())
				}
			}),
		metrics.NewFuncCollector("policy", "generation",
			"Generation of the policy set in force (successful swaps since start).",
			prometheus.GaugeValue, nil,
			func(emit func(float64, ...string)) { emit(float64(a.store.Stats().Generation)) }),
		metrics.NewFuncCollector("policy", "last_change_timestamp_seconds",
			"When the policy set in force was installed (Unix time).",
			prometheus.GaugeValue, nil,
			func(emit func(float64, ...string)) {
				if t := a.store.Stats().LastChange; !t.IsZero() {
					emit(float64(t.UnixNano()) / 1e9)
				}
			}),
		metrics.NewFuncCollector("policy", "compile_duration_seconds",
			"How long compiling the policy set in force took.",
			prometheus.GaugeValue, nil,
			func(emit func(float64, ...string)) { emit(a.store.Stats().CompileDuration.Seconds()) }),
		metrics.NewFuncCollector("policy", "reload_failures_total",
			"Policy configurations refused (the previous set stayed in force).",
			prometheus.CounterValue, nil,
			func(emit func(float64, ...string)) { emit(float64(a.store.Stats().Failures)) }),
		metrics.NewFuncCollector("policy", "invalid_objects",
			"Policy objects the set in force does not apply as written, being invalid or not understood by this agent: such an AccessPolicy denies every request to the pods it selects, such an Issuer is left out (kubernetes mode; the objects get InvalidPolicy Events).",
			prometheus.GaugeValue, nil,
			func(emit func(float64, ...string)) { emit(float64(a.policyInvalid.Load())) }),
		metrics.NewFuncCollector("policy", "rules",
			"Rules in the policy set in force.",
			prometheus.GaugeValue, nil,
			func(emit func(float64, ...string)) { emit(float64(a.store.Stats().Rules)) }),
		metrics.NewFuncCollector("tokencheck", "verified_cache_total",
			"Lookups of the verified-token cache, by result.",
			prometheus.CounterValue, []string{"result"},
			func(emit func(float64, ...string)) {
				s := a.tokens.Stats()
				emit(float64(s.CacheHits), "hit")
				emit(float64(s.CacheMisses), "miss")
			}),
		metrics.NewFuncCollector("tokencheck", "verified_cache_entries",
			"Tokens held in the verified-token cache.",
			prometheus.GaugeValue, nil,
			func(emit func(float64, ...string)) { emit(float64(a.tokens.Stats().CacheEntries)) }),
		metrics.NewFuncCollector("tokencheck", "key_set_age_seconds",
			"Age of each issuer's key set (per accepted token version).",
			prometheus.GaugeValue, []string{"issuer", "version"},
			func(emit func(float64, ...string)) {
				for _, is := range a.tokens.Issuers() {
					for _, s := range is.Sources {
						if s.HasKeys {
							emit(s.KeySetAge.Seconds(), is.Ref, strconv.Itoa(s.Version))
						}
					}
				}
			}),
		metrics.NewFuncCollector("tokencheck", "key_refreshes_total",
			"Key set refreshes per issuer, by result.",
			prometheus.CounterValue, []string{"issuer", "version", "result"},
			func(emit func(float64, ...string)) {
				for _, is := range a.tokens.Issuers() {
					for _, s := range is.Sources {
						v := strconv.Itoa(s.Version)
						emit(float64(s.RefreshOK), is.Ref, v, "ok")
						emit(float64(s.RefreshFailed), is.Ref, v, "error")
					}
				}
			}),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register collector: %w", err)
		}
	}
	return nil
}
