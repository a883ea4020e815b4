package policy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func loadYAML(t testing.TB, docs ...string) *Objects {
	t.Helper()
	var all string
	for _, d := range docs {
		all += d + "\n---\n"
	}
	objs, err := Load("test.yaml", []byte(all))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return objs
}

func TestStoreUpdate(t *testing.T) {
	s := NewStore()
	if s.Load() != nil {
		t.Fatalf("Load() on a new Store = non-nil, want nil")
	}
	if got := Evaluate(s.Load(), req()); got.Captured {
		t.Errorf("Evaluate(empty store).Captured = true, want false")
	}
	good, err := s.Update(loadYAML(t, policy("p", "  rules: [{}]")))
	if err != nil {
		t.Fatalf("Update(valid): %v", err)
	}
	if s.Load() != good {
		t.Errorf("Load() = %p, want the Set returned by Update %p", s.Load(), good)
	}
	st := s.Stats()
	if st.Generation != 1 || st.LastChange.IsZero() || st.CompileDuration <= 0 || st.Policies != 1 || st.Rules != 1 {
		t.Errorf("Stats() after first update = %+v, want generation 1, last change, compile duration, 1 policy, 1 rule", st)
	}

	_, err = s.Update(loadYAML(t, policy("p", "  mode: Sometimes")))
	var perr *Error
	if !errors.As(err, &perr) {
		t.Fatalf("Update(invalid) error = %v, want *Error", err)
	}
	if s.Load() != good {
		t.Errorf("an invalid policy replaced the running set")
	}
	st = s.Stats()
	if st.Generation != 1 || st.Failures != 1 || st.LastError == nil {
		t.Errorf("Stats() after refused update = %+v, want generation 1, 1 failure, last error", st)
	}

	if old := s.Swap(nil); old != good || s.Load() != good {
		t.Errorf("Swap(nil) changed the running set")
	}
	other := mustCompile(t, policy("q", "  rules: [{}]"))
	if old := s.Swap(other); old != good {
		t.Errorf("Swap() returned %p, want previous %p", old, good)
	}
	if st := s.Stats(); st.Generation != 2 || st.LastError != nil || st.CompileDuration != 0 {
		t.Errorf("Stats() after Swap = %+v, want generation 2, no error, zero compile duration", st)
	}
}

// TestStoreConcurrentSwap evaluates while sets are swapped (run with
// -race): every decision must be the one of the set the reader loaded.
func TestStoreConcurrentSwap(t *testing.T) {
	allow := mustCompile(t, policy("p", "  rules: [{from: {namespaces: [web]}}]"))
	deny := mustCompile(t, policy("p", "  rules: [{from: {namespaces: [jobs]}}]"))
	s := NewStore()
	s.Swap(allow)

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	var evals atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in := req()
			for ctx.Err() == nil {
				set := s.Load()
				d := Evaluate(set, in)
				want := OutcomeAllow
				if set == deny {
					want = OutcomeDeny
				}
				if d.Outcome != want {
					t.Errorf("Evaluate() = %v on set %p, want %v", d.Outcome, set, want)
					return
				}
				evals.Add(1)
			}
		}()
	}
	swaps := 0
	for ctx.Err() == nil {
		if swaps%2 == 0 {
			s.Swap(deny)
		} else {
			s.Swap(allow)
		}
		swaps++
	}
	wg.Wait()
	if st := s.Stats(); st.Generation != uint64(swaps+1) {
		t.Errorf("Generation = %d, want %d", st.Generation, swaps+1)
	}
	if evals.Load() == 0 || swaps < 2 {
		t.Errorf("evaluations %d, swaps %d: want both > 0", evals.Load(), swaps)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Write then rename, as editors and kubelet do.
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

type reload struct {
	set *Set
	err error
}

func startWatcher(t *testing.T, paths ...string) (*Store, chan reload, chan error) {
	t.Helper()
	store := NewStore()
	reloads := make(chan reload, 16)
	w, err := NewWatcher(WatcherConfig{
		Paths:    paths,
		Store:    store,
		Debounce: 20 * time.Millisecond,
		OnReload: func(set *Set, err error) { reloads <- reload{set, err} },
	})
	if err != nil {
		t.Fatalf("NewWatcher: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Errorf("watcher did not stop within 5s")
		}
	})
	return store, reloads, done
}

func nextReload(t *testing.T, reloads chan reload) reload {
	t.Helper()
	select {
	case r := <-reloads:
		return r
	case <-time.After(5 * time.Second):
		t.Fatalf("no reload within 5s")
	}
	return reload{}
}

func TestWatcher(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "policies.yaml")
	writeFile(t, file, policy("p", "  rules: [{from: {namespaces: [web]}}]"))
	store, reloads, _ := startWatcher(t, dir)

	first := nextReload(t, reloads)
	if first.err != nil || store.Load() != first.set {
		t.Fatalf("initial load: %v", first.err)
	}
	if d := Evaluate(store.Load(), req()); !d.Allowed() {
		t.Fatalf("initial set: %+v, want allowed", d)
	}

	writeFile(t, file, policy("p", "  rules: [{from: {namespaces: [jobs]}}]"))
	if r := nextReload(t, reloads); r.err != nil {
		t.Fatalf("reload after edit: %v", r.err)
	}
	if d := Evaluate(store.Load(), req()); d.Allowed() {
		t.Errorf("after edit: %+v, want denied", d)
	}
	good := store.Load()

	writeFile(t, file, policy("p", "  rules: [{from: {namespaces: [Not_Valid]}}]"))
	r := nextReload(t, reloads)
	var perr *Error
	if !errors.As(r.err, &perr) {
		t.Fatalf("reload of invalid file: err %v, want *Error", r.err)
	}
	if store.Load() != good {
		t.Errorf("an invalid file replaced the running set")
	}

	// A second file in the directory is picked up.
	writeFile(t, file, policy("p", "  rules: [{from: {namespaces: [jobs]}}]"))
	writeFile(t, filepath.Join(dir, "more.yml"), policy("q", "  rules: [{from: {namespaces: [web]}}]"))
	for {
		r := nextReload(t, reloads)
		if r.err != nil {
			t.Fatalf("reload: %v", r.err)
		}
		if r.set.Policies() == 2 {
			break
		}
	}
	if d := Evaluate(store.Load(), req()); !d.Allowed() || d.Policy != "shop/q" {
		t.Errorf("with two files: %+v, want allowed by shop/q", d)
	}
	if got := store.Stats().Generation; got < 3 {
		t.Errorf("Generation = %d, want >= 3", got)
	}
}

// TestWatcherLoadThenRun: after Load, Run does not load the unchanged
// files again (one generation per content).
func TestWatcherLoadThenRun(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "policies.yaml"), policy("p", "  rules: [{from: {namespaces: [web]}}]"))
	store := NewStore()
	reloads := 0
	w, err := NewWatcher(WatcherConfig{
		Paths: []string{dir}, Store: store,
		OnReload: func(*Set, error) { reloads++ },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Load(); err != nil {
		t.Fatalf("Load: %v", err)
	}
	if store.Load() == nil || reloads != 1 {
		t.Fatalf("Load: stored set %v, %d OnReload calls; want a set and 1 call", store.Load(), reloads)
	}
	// Run makes its initial load even when ctx is already done, and
	// returns when it is: then every load it made is counted.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := store.Stats().Generation; got != 1 || reloads != 1 {
		t.Errorf("after Load and Run: generation %d, %d OnReload calls; want 1 and 1 (unchanged files loaded again)", got, reloads)
	}
}

// TestWatcherBadEditAfterLoad: an invalid edit between Load and Run is not
// fatal to Run: the loaded Set stays, and Run keeps watching.
func TestWatcherBadEditAfterLoad(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "policies.yaml")
	writeFile(t, file, policy("p", "  rules: [{from: {namespaces: [web]}}]"))
	store := NewStore()
	w, err := NewWatcher(WatcherConfig{Paths: []string{dir}, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Load(); err != nil {
		t.Fatalf("Load: %v", err)
	}
	good := store.Load()
	writeFile(t, file, "kind: [")
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // Run makes its initial load, then returns
	if err := w.Run(ctx); err != nil {
		t.Errorf("Run after an invalid edit: got %v, want nil (the loaded set stays in force)", err)
	}
	if store.Load() != good {
		t.Errorf("an invalid edit replaced the loaded set")
	}
}

func TestWatcherInitialError(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "p.yaml")
	writeFile(t, file, "kind: [")
	w, err := NewWatcher(WatcherConfig{Paths: []string{file}, Store: NewStore()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = w.Run(ctx)
	var perr *Error
	if !errors.As(err, &perr) {
		t.Fatalf("Run() = %v, want *Error", err)
	}
	if ctx.Err() != nil {
		t.Errorf("Run() returned only after the timeout")
	}
}

func TestNewWatcherConfig(t *testing.T) {
	if _, err := NewWatcher(WatcherConfig{Store: NewStore()}); err == nil {
		t.Errorf("NewWatcher without paths: nil error")
	}
	if _, err := NewWatcher(WatcherConfig{Paths: []string{"x"}}); err == nil {
		t.Errorf("NewWatcher without store: nil error")
	}
}

func TestQuarantine(t *testing.T) {
	objs := loadYAML(t,
		policy("allow", "  selector: {matchLabels: {app: orders}}\n  rules: [{}]"),
		policy("bad-path", "  selector: {matchLabels: {app: orders}}\n  rules: [{to: {paths: [nope]}}]"),
		`apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: broken, namespace: shop}
spec: {oidc: {issuer: "ftp://x", audiences: [a]}}`,
		policy("needs-broken", "  selector: {matchLabels: {app: cart}}\n  rules: [{when: {issuers: [{name: broken}]}}]"),
	)
	if set, err := Compile(objs); set != nil || err == nil {
		t.Fatalf("strict Compile() = %v, %v; want no set and an error", set, err)
	}
	set, err := CompileWithOptions(objs, Options{Quarantine: true})
	var perr *Error
	if set == nil || !errors.As(err, &perr) || len(perr.Problems) != 3 {
		t.Fatalf("CompileWithOptions(Quarantine) = %v, %v; want a set and 3 problems", set, err)
	}
	invalid := func(policy string) Decision {
		return Decision{Outcome: OutcomeDeny, Status: StatusForbidden, Reason: ReasonInvalidPolicy, Policy: policy, Rule: 0, Captured: true}
	}
	tests := []struct {
		name string
		w    Workload
		want Decision
	}{
		{"invalid policy denies its workloads", ordersPod, invalid("shop/bad-path")},
		{"policy naming an invalid issuer denies", otherPod, invalid("shop/needs-broken")},
		{"other workloads unaffected", Workload{Namespace: "shop", Labels: map[string]string{"app": "x"}}, notCapturedDec},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Evaluate(set, req(func(in *Input) { in.Workload = tt.w }))
			if got != tt.want {
				t.Errorf("Evaluate() = %+v, want %+v", got, tt.want)
			}
		})
	}
	if got := len(set.Issuers()); got != 0 {
		t.Errorf("Issuers() has %d, want the invalid issuer left out", got)
	}

	// An invalid selector quarantines the whole namespace.
	set, _ = CompileWithOptions(loadYAML(t, policy("bad-selector", "  selector: {matchExpressions: [{key: app, operator: Near}]}\n  rules: [{}]")), Options{Quarantine: true})
	if got := Evaluate(set, req(func(in *Input) { in.Workload = otherPod })); got != invalid("shop/bad-selector") {
		t.Errorf("Evaluate() with invalid selector = %+v, want %+v", got, invalid("shop/bad-selector"))
	}

	store := NewStore()
	if _, err := store.UpdateWithOptions(objs, Options{Quarantine: true}); err == nil || store.Load() == nil {
		t.Errorf("UpdateWithOptions(Quarantine) = %v with set %v, want the set installed and the problems returned", err, store.Load())
	}
	if st := store.Stats(); st.Generation != 1 || st.LastError == nil || st.Failures != 0 {
		t.Errorf("Stats() = %+v, want generation 1, last error, no failure", st)
	}
}

// TestWatcherConfigMapVolume mimics how kubelet updates a ConfigMap
// volume: the files are links into a ..data link that is swapped
// atomically to a new directory.
func TestWatcherConfigMapVolume(t *testing.T) {
	dir := t.TempDir()
	version := func(name, content string) {
		t.Helper()
		vdir := filepath.Join(dir, name)
		if err := os.Mkdir(vdir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(vdir, "policies.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..v1", policy("p", "  rules: [{from: {namespaces: [web]}}]"))
	if err := os.Symlink("..data/policies.yaml", filepath.Join(dir, "policies.yaml")); err != nil {
		t.Fatal(err)
	}
	store, reloads, _ := startWatcher(t, dir)
	if r := nextReload(t, reloads); r.err != nil || r.set.Policies() != 1 {
		t.Fatalf("initial load: %v", r.err)
	}
	if d := Evaluate(store.Load(), req()); !d.Allowed() {
		t.Fatalf("initial set: %+v, want allowed", d)
	}
	version("..v2", policy("p", "  rules: [{from: {namespaces: [jobs]}}]"))
	if r := nextReload(t, reloads); r.err != nil {
		t.Fatalf("reload: %v", r.err)
	}
	if d := Evaluate(store.Load(), req()); d.Allowed() {
		t.Errorf("after the ConfigMap update: %+v, want denied", d)
	}
}
