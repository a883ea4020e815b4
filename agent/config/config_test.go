package config

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadDefaultsAndPaths(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "agent.yaml", `
local:
  workloads: workloads.yaml
  policies: policies/
limits:
  headerTimeout: 3s
`)
	c, err := Load(p)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got, want := c.Mode, ModeLocal; got != want {
		t.Errorf("Mode: got %q, want %q", got, want)
	}
	if got, want := c.Local.Workloads, filepath.Join(dir, "workloads.yaml"); got != want {
		t.Errorf("Workloads: got %q, want %q", got, want)
	}
	if got, want := c.Limits.HeaderTimeout.Duration, 3*time.Second; got != want {
		t.Errorf("HeaderTimeout: got %v, want %v", got, want)
	}
	if got, want := c.ListenerPort, 15006; got != want {
		t.Errorf("ListenerPort: got %d, want %d", got, want)
	}
	if got, want := *c.Audit.AllowSampleRate, 1.0; got != want {
		t.Errorf("AllowSampleRate: got %v, want %v", got, want)
	}
	if got, want := c.LocalAcceleration, (AccelerationConfig{Mark: DefaultAccelerationMark}); got != want {
		t.Errorf("LocalAcceleration: got %+v, want %+v (off)", got, want)
	}
	if c.KeepPreexistingConnections {
		t.Errorf("KeepPreexistingConnections: got true, want false (reset) by default")
	}
}

func TestLoadKeepPreexistingConnections(t *testing.T) {
	p := writeFile(t, t.TempDir(), "agent.yaml", "local: {workloads: w, policies: p}\nkeepPreexistingConnections: true\n")
	c, err := Load(p)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !c.KeepPreexistingConnections {
		t.Errorf("KeepPreexistingConnections: got false, want true")
	}
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{"unknown field", "local: {workloads: w, policies: p}\nlistenPort: 1\n", []string{`unknown field "listenPort"`}},
		{"local needs files", "mode: local\n", []string{"local.workloads: required", "local.policies: required"}},
		{"bad mode", "mode: cluster\n", []string{`mode: "cluster" is not one of local, kubernetes`}},
		{"bad port and rate", "local: {workloads: w, policies: p}\nlistenerPort: 70000\naudit: {allowSampleRate: 2}\n",
			[]string{"listenerPort: 70000 is not a TCP port", "audit.allowSampleRate: 2 is not within 0..1"}},
		{"bad duration", "local: {workloads: w, policies: p}\nshutdownGrace: 5\n", []string{"duration must be a string"}},
		{"negative duration", "local: {workloads: w, policies: p}\nshutdownGrace: -5s\n", []string{`duration "-5s" is negative`}},
		{"negative limits", "local: {workloads: w, policies: p}\nlimits: {maxHeaderBytes: -1, maxHeaders: -2, maxConnsPerPod: -3, maxConns: -4}\n",
			[]string{"limits.maxHeaderBytes: -1 is negative", "limits.maxHeaders: -2 is negative", "limits.maxConnsPerPod: -3 is negative", "limits.maxConns: -4 is negative"}},
		{"negative stream idle timeout", "local: {workloads: w, policies: p}\nlimits: {streamIdleTimeout: -1s}\n", []string{`duration "-1s" is negative`}},
		{"stream idle timeout not a duration", "local: {workloads: w, policies: p}\nlimits: {streamIdleTimeout: 5m30}\n", []string{`missing unit in duration "5m30"`}},
		{"bad log", "local: {workloads: w, policies: p}\nlog: {format: xml, level: loud}\n", []string{`log.format: "xml"`, `log.level: "loud"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "agent.yaml", tc.body)
			_, err := Load(p)
			if err == nil {
				t.Fatalf("Load: got nil error, want one mentioning %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Load error: got %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestNodeNameFromDownwardAPI(t *testing.T) {
	t.Setenv("NODE_NAME", "node-7")
	p := writeFile(t, t.TempDir(), "agent.yaml", "mode: kubernetes\n")
	c, err := Load(p)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got, want := c.NodeName, "node-7"; got != want {
		t.Errorf("NodeName: got %q, want %q", got, want)
	}
}

func TestLoadLimits(t *testing.T) {
	for _, tt := range []struct {
		name, limits string
		want         LimitsConfig
	}{
		// Zero values are left for the verifier to default (5m for
		// streamIdleTimeout).
		{"none", "", LimitsConfig{}},
		{"all", `limits:
  maxHeaderBytes: 16384
  maxHeaders: 64
  headerTimeout: 3s
  idleTimeout: 2m
  streamIdleTimeout: 30m
  maxConnsPerPod: 100
  maxConns: 1000
  passthroughPorts: [5432]
`, LimitsConfig{
			MaxHeaderBytes: 16384, MaxHeaders: 64,
			HeaderTimeout: Duration{3 * time.Second}, IdleTimeout: Duration{2 * time.Minute},
			StreamIdleTimeout: Duration{30 * time.Minute},
			MaxConnsPerPod:    100, MaxConns: 1000, PassthroughPorts: []int{5432},
		}},
		{"stream idle timeout only", "limits: {streamIdleTimeout: 90s}\n", LimitsConfig{StreamIdleTimeout: Duration{90 * time.Second}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "agent.yaml", "local: {workloads: w, policies: p}\n"+tt.limits)
			c, err := Load(p)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if diff := cmp.Diff(tt.want, c.Limits); diff != "" {
				t.Errorf("Limits mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAllowSampleRate(t *testing.T) {
	for _, tc := range []struct {
		rate float64
		// want is audit.Config.AllowSampling; 0 means refused.
		want int
	}{
		{1, 1},
		{0.5, 2},
		{0.25, 4},
		{0.1, 10},
		{0.01, 100},
		{0.333, 3}, // within 0.5% of 1/3
		{0.00015, 6667},
		{0, -1},  // none
		{0.7, 0}, // would record every allow
		{0.4, 0}, // would record 1/3 or 1/2
		{0.33, 0},
		{0.15, 0},
	} {
		t.Run(strconv.FormatFloat(tc.rate, 'g', -1, 64), func(t *testing.T) {
			body := fmt.Sprintf("local: {workloads: w, policies: p}\naudit: {allowSampleRate: %v}\n", tc.rate)
			c, err := Load(writeFile(t, t.TempDir(), "agent.yaml", body))
			if tc.want == 0 {
				if err == nil || !strings.Contains(err.Error(), "is not 1/N") {
					t.Fatalf("Load: got %v, want an error saying the rate is not 1/N", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			n := c.Audit.AllowSampling()
			if n != tc.want {
				t.Errorf("AllowSampling: got %d, want %d", n, tc.want)
			}
			// The fraction the audit log records (one in every n) is the
			// configured one.
			if got := 1 / float64(n); tc.rate > 0 && math.Abs(got/tc.rate-1) > sampleRateTolerance {
				t.Errorf("recorded fraction: got %v, want %v", got, tc.rate)
			}
		})
	}
	p := writeFile(t, t.TempDir(), "agent.yaml", "local: {workloads: w, policies: p}\naudit: {allowSampleRate: 0.7}\n")
	_, err := Load(p)
	if want := "audit.allowSampleRate: 0.7 is not 1/N for a whole N: one allow in every N is recorded, so write 0.5 (1/2) or 1 (1/1)"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Load error: got %v, want it to contain %q", err, want)
	}
}
