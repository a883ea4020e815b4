package daemonset

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// agentMetrics are the series the agent exports (agent/metrics and the
// scrape-time collectors of agent/daemon, plus portcullis_build_info for the
// instance variable); the dashboard must chart each and nothing else.
var agentMetrics = []string{
	"portcullis_agent_enrol_failed_pods",
	"portcullis_agent_enrolled_pods",
	"portcullis_agent_preexisting_connections_reset_total",
	"portcullis_audit_records_dropped_total",
	"portcullis_build_info",
	"portcullis_datapath_events_total",
	"portcullis_policy_generation",
	"portcullis_policy_invalid_objects",
	"portcullis_policy_propagation_seconds_bucket",
	"portcullis_policy_reload_failures_total",
	"portcullis_tokencheck_key_refreshes_total",
	"portcullis_tokencheck_key_set_age_seconds",
	"portcullis_tokencheck_verified_cache_total",
	"portcullis_verifier_connections_total",
	"portcullis_verifier_decision_duration_seconds_bucket",
	"portcullis_verifier_open_connections",
	"portcullis_verifier_requests_total",
	"portcullis_verifier_stream_idle_timeouts_total",
	"portcullis_verifier_upstream_duration_seconds_bucket",
}

func TestDashboard(t *testing.T) {
	data, err := os.ReadFile("grafana/portcullis.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			ID         int    `json:"id"`
			Title      string `json:"title"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	var raw struct {
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatalf("decode dashboard: %v", err)
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("decode dashboard: %v", err)
	}
	if d.UID == "" {
		t.Errorf("dashboard has no uid")
	}
	metricRE := regexp.MustCompile(`portcullis_[a-z_]+`)
	used := map[string]bool{}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %q, want the ${datasource} variable", p.Title, p.Datasource.UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range metricRE.FindAllString(tg.Expr, -1) {
				used[m] = true
			}
		}
	}
	for _, v := range raw.Templating.List {
		for _, m := range metricRE.FindAllString(v.Definition, -1) {
			used[m] = true
		}
	}
	var got []string
	for m := range used {
		got = append(got, m)
	}
	sort.Strings(got)
	if diff := cmp.Diff(agentMetrics, got); diff != "" {
		t.Errorf("metrics charted (-want +got):\n%s", diff)
	}
}

// TestDashboardMetricsExist checks every charted series is still defined in
// the agent's source, so a renamed metric fails here rather than leaving an
// empty panel. Metrics are defined as Subsystem/Name pairs (agent/metrics)
// or NewFuncCollector("subsystem", "name", ...) calls.
func TestDashboardMetricsExist(t *testing.T) {
	var src strings.Builder
	err := filepath.WalkDir("../agent", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		data, err := os.ReadFile(path)
		src.Write(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	code := src.String()
	for _, m := range agentMetrics {
		base := strings.TrimSuffix(strings.TrimPrefix(m, "portcullis_"), "_bucket")
		found := strings.Contains(code, `Name: "`+base+`"`)
		for i := 0; i < len(base) && !found; i++ {
			if base[i] != '_' {
				continue
			}
			sub, name := base[:i], base[i+1:]
			found = regexp.MustCompile(`Subsystem:\s*"`+sub+`",\s*Name:\s*"`+name+`"`).MatchString(code) ||
				strings.Contains(code, `NewFuncCollector("`+sub+`", "`+name+`"`)
		}
		if !found {
			t.Errorf("%s is charted by grafana/portcullis.json but not defined under agent/: update the dashboard", m)
		}
	}
}
