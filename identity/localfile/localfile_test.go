package localfile

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/portcullis-mesh/portcullis/identity"
)

const base = `
workloads:
- {namespace: shop, name: orders-api, serviceAccount: orders, labels: {app: orders}, ips: [198.18.0.2], netns: /run/netns/a, cgroup: /cg/a}
- {namespace: shop, name: frontend, ips: ["fd00::3"]}
namespaces:
  shop: {portcullis.dev/enforce: enabled}
`

func TestParse(t *testing.T) {
	evs, err := Parse("w.yaml", []byte(base))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	var got []string
	for _, ev := range evs {
		got = append(got, ev.Type.String()+" "+ev.Workload.Key()+" "+ev.Workload.SA())
		if !ev.NamespaceEnforced {
			t.Errorf("%s: NamespaceEnforced false, want true", ev.Workload.Key())
		}
	}
	want := []string{"added shop/frontend default", "added shop/orders-api orders"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

func TestParseLocalAcceleration(t *testing.T) {
	evs, err := Parse("w.yaml", []byte(`
workloads:
- {namespace: a, name: fast, localAcceleration: true}
- {namespace: a, name: plain, localAcceleration: false}
- {namespace: a, name: unset}
`))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	got := map[string]identity.Acceleration{}
	for _, ev := range evs {
		got[ev.Workload.Name] = ev.Workload.LocalAcceleration
	}
	want := map[string]identity.Acceleration{
		"fast":  identity.AccelerationOn,
		"plain": identity.AccelerationOff,
		"unset": identity.AccelerationDefault,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("LocalAcceleration by workload (-want +got):\n%s", diff)
	}
}

// TestDiffLocalAcceleration: a workload's acceleration choice changing is
// an update, like any other field of it.
func TestDiffLocalAcceleration(t *testing.T) {
	parse := func(body string) []identity.Event {
		t.Helper()
		evs, err := Parse("w.yaml", []byte(body))
		if err != nil {
			t.Fatalf("Parse: %v", err)
		}
		return evs
	}
	for _, tc := range []struct {
		name, prev, next string
		want             []string
	}{
		{"unset to on", "{namespace: a, name: x}", "{namespace: a, name: x, localAcceleration: true}", []string{"updated a/x on"}},
		{"on to off", "{namespace: a, name: x, localAcceleration: true}", "{namespace: a, name: x, localAcceleration: false}", []string{"updated a/x off"}},
		{"off to unset", "{namespace: a, name: x, localAcceleration: false}", "{namespace: a, name: x}", []string{"updated a/x default"}},
		{"unchanged", "{namespace: a, name: x, localAcceleration: true}", "{namespace: a, name: x, localAcceleration: true}", nil},
	} {
		var got []string
		for _, ev := range Diff(parse("workloads: ["+tc.prev+"]"), parse("workloads: ["+tc.next+"]")) {
			got = append(got, ev.Type.String()+" "+ev.Workload.Key()+" "+ev.Workload.LocalAcceleration.String())
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s: Diff (-want +got):\n%s", tc.name, diff)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"workloads:\n- {name: x}\n", "workloads[0]: namespace and name are required"},
		{"workloads:\n- {namespace: a, name: x}\n- {namespace: a, name: x}\n", "a/x is listed twice"},
		{"workloads:\n- {namespace: a, name: x, ips: [300.1.1.1]}\n", "workloads[0] (a/x): ips:"},
		{"workload: []\n", `unknown field "workload"`},
		{"workloads:\n- {namespace: a, name: x, localAcceleration: maybe}\n", "localAcceleration"},
	} {
		_, err := Parse("w.yaml", []byte(tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q): got %v, want error containing %q", tc.body, err, tc.want)
		}
	}
}

func TestRunReportsChanges(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "workloads.yaml")
	if err := os.WriteFile(path, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan identity.Event, 16)
	done := make(chan error, 1)
	go func() { done <- New(path, 10*time.Millisecond, nil).Run(ctx, func(ev identity.Event) { events <- ev }) }()

	next := func() identity.Event {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-time.After(5 * time.Second):
			t.Fatal("no event within 5s")
		}
		return identity.Event{}
	}
	for i := 0; i < 2; i++ {
		if ev := next(); ev.Type != identity.EventAdded {
			t.Fatalf("event %d: got %v, want added", i, ev.Type)
		}
	}
	if ev := next(); ev.Type != identity.EventSynced {
		t.Fatalf("got %v, want synced", ev.Type)
	}
	// Relabel orders-api, drop frontend; write via rename like an editor.
	edited := `
workloads:
- {namespace: shop, name: orders-api, serviceAccount: orders, labels: {app: orders, tier: api}, ips: [198.18.0.2], netns: /run/netns/a, cgroup: /cg/a}
`
	tmp := filepath.Join(dir, ".tmp")
	if err := os.WriteFile(tmp, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	got := []string{}
	for i := 0; i < 2; i++ {
		ev := next()
		got = append(got, ev.Type.String()+" "+ev.Workload.Key())
	}
	want := []string{"updated shop/orders-api", "removed shop/frontend"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events after edit (-want +got):\n%s", diff)
	}
	// An invalid edit is ignored.
	if err := os.WriteFile(path, []byte("workloads: [{name: x}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		t.Errorf("invalid file produced event %v %s", ev.Type, ev.Workload.Key())
	case <-time.After(200 * time.Millisecond): // debounce is 10ms: an event would have come
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// TestRunFollowsConfigMapVolume replays how the kubelet updates a ConfigMap
// volume: the file is a link through ..data, and an update swaps ..data.
func TestRunFollowsConfigMapVolume(t *testing.T) {
	dir := t.TempDir()
	write := func(version, body string) {
		t.Helper()
		vdir := filepath.Join(dir, version)
		if err := os.Mkdir(vdir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(vdir, "workloads.yaml"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(version, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	write("..v1", "workloads:\n- {namespace: shop, name: a}\n")
	path := filepath.Join(dir, "workloads.yaml")
	if err := os.Symlink("..data/workloads.yaml", path); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan identity.Event, 16)
	done := make(chan error, 1)
	go func() { done <- New(path, 10*time.Millisecond, nil).Run(ctx, func(ev identity.Event) { events <- ev }) }()
	next := func() identity.Event {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-time.After(5 * time.Second):
			t.Fatal("no event within 5s")
		}
		return identity.Event{}
	}
	if ev := next(); ev.Type != identity.EventAdded || ev.Workload.Key() != "shop/a" {
		t.Fatalf("got %v %s, want added shop/a", ev.Type, ev.Workload.Key())
	}
	if ev := next(); ev.Type != identity.EventSynced {
		t.Fatalf("got %v, want synced", ev.Type)
	}
	write("..v2", "workloads:\n- {namespace: shop, name: b}\n")
	got := []string{next().Type.String(), next().Type.String()}
	if diff := cmp.Diff([]string{"added", "removed"}, got); diff != "" {
		t.Errorf("events after the ..data swap (-want +got):\n%s", diff)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}
