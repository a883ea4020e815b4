package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/agent/audit"
	"github.com/portcullis-mesh/portcullis/agent/config"
)

// TestAllowSampling checks that the audit log, set up from the config as
// Start does, records the configured fraction of allows.
func TestAllowSampling(t *testing.T) {
	const allows = 1200
	for _, tc := range []struct {
		rate float64
		want uint64
	}{
		{1, allows},
		{0.5, allows / 2},
		{0.25, allows / 4},
		{0.1, allows / 10},
		{0.333, allows / 3},
		{0, 0},
	} {
		rate := tc.rate
		c := config.Config{Audit: config.AuditConfig{AllowSampleRate: &rate}}
		l := audit.New(audit.Config{AllowSampling: c.Audit.AllowSampling(), FlushInterval: -1})
		for range allows {
			l.Log(&audit.Record{Decision: audit.Allow})
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := l.Close(ctx); err != nil {
			t.Errorf("rate %v: close: %v", rate, err)
		}
		cancel()
		if st := l.Stats(); st.Written != tc.want || st.Written+st.SampledOut != allows {
			t.Errorf("rate %v: got %d of %d allows written (%d sampled out), want %d", rate, st.Written, allows, st.SampledOut, tc.want)
		}
	}
}
