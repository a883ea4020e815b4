package daemonset

import (
	"encoding/json"
	"os"
	"regexp"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// agentMetrics are the series the agent exports (see docs and
// agent/metrics); the dashboard must chart each and nothing else.
var agentMetrics = []string{
	"portcullis_audit_dropped_total",
	"portcullis_captured_connections_total",
	"portcullis_decision_duration_seconds_bucket",
	"portcullis_enrolled_pods",
	"portcullis_jwks_key_set_age_seconds",
	"portcullis_jwks_refresh_total",
	"portcullis_policy_propagation_seconds_bucket",
	"portcullis_requests_total",
	"portcullis_token_cache_hits_total",
	"portcullis_token_cache_misses_total",
	"portcullis_upstream_duration_seconds_bucket",
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
	var got []string
	for m := range used {
		got = append(got, m)
	}
	sort.Strings(got)
	if diff := cmp.Diff(agentMetrics, got); diff != "" {
		t.Errorf("metrics charted (-want +got):\n%s", diff)
	}
}
