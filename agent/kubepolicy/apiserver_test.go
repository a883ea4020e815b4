package kubepolicy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/portcullis-mesh/portcullis/identity/kube/policywatch"
	"github.com/portcullis-mesh/portcullis/test/kubeenv"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

// newerCRDs writes the repository's CRDs into a directory, with one spec
// field added to AccessPolicy that this agent's types lack: the cluster
// runs a newer CRD than the agent, as during every upgrade (CRDs first).
func newerCRDs(t *testing.T) string {
	t.Helper()
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(root, "daemonset", "crds")
	dir := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if filepath.Ext(e.Name()) != ".yaml" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(e.Name(), "accesspolicies") {
			var crd map[string]any
			if err := yaml.Unmarshal(b, &crd); err != nil {
				t.Fatal(err)
			}
			versions, _, err := unstructured.NestedSlice(crd, "spec", "versions")
			if err != nil || len(versions) != 1 {
				t.Fatalf("CRD versions: %v, %v", versions, err)
			}
			v := versions[0].(map[string]any)
			if err := unstructured.SetNestedField(v, map[string]any{"type": "boolean"},
				"schema", "openAPIV3Schema", "properties", "spec", "properties", "futureField"); err != nil {
				t.Fatal(err)
			}
			if err := unstructured.SetNestedSlice(crd, versions, "spec", "versions"); err != nil {
				t.Fatal(err)
			}
			if b, err = yaml.Marshal(crd); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestNewerCRD runs the watcher and Apply against a real API server whose
// AccessPolicy CRD has a field this agent does not know: the policy using
// it denies every request to the pods it selects, and every other policy
// keeps being applied.
func TestNewerCRD(t *testing.T) {
	env := kubeenv.Start(t, kubeenv.Options{CRDDir: newerCRDs(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs := kubernetes.NewForConfigOrDie(env.Config())
	dyn := dynamic.NewForConfigOrDie(env.Config())
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	aps := dyn.Resource(policywatch.AccessPoliciesGVR).Namespace("shop")
	create := func(y string) {
		t.Helper()
		if _, err := aps.Create(ctx, obj(t, y), metav1.CreateOptions{}); err != nil {
			t.Fatalf("create: %v", err)
		}
	}
	create(good)
	newer := strings.Replace(strings.Replace(good, "name: orders,", "name: other,", 1), "app: orders", "app: other", 1) + "  futureField: true\n"
	create(newer)

	w, err := policywatch.New(dyn, policywatch.Config{})
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan Result, 16)
	store := policy.NewStore()
	sets := make(chan *policy.Set, 16)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, w, Config{
			Store:    store,
			Reporter: reports{},
			OnApply:  func(s *policy.Set, _ time.Time) { sets <- s },
			OnResult: func(r Result) { results <- r },
		}, nil)
	}()
	t.Cleanup(func() { // the watcher stops before the API server
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return 30s after cancel")
		}
	})
	next := func() (Result, *policy.Set) {
		t.Helper()
		select {
		case r := <-results:
			var s *policy.Set
			if r.Applied {
				s = <-sets // OnApply runs before OnResult
			}
			return r, s
		case <-time.After(15 * time.Second):
			t.Fatal("no snapshot applied within 15s")
			return Result{}, nil
		}
	}

	r, set := next()
	if !r.Applied || r.Invalid != 1 || !strings.Contains(r.Err.Error(), `unknown field "spec.futureField"`) {
		t.Fatalf("initial snapshot: got %+v, want applied, with shop/other not understood", r)
	}
	if d := request(set, "other"); d.Allowed() || d.Reason != policy.ReasonInvalidPolicy {
		t.Errorf("request to app=other: got %s (%s), want deny (invalid_policy)", d.Outcome, d.Reason)
	}
	if d := request(set, "orders"); !d.Allowed() {
		t.Errorf("request to app=orders: got %s (%s), want allow", d.Outcome, d.Reason)
	}

	// A later change still takes effect.
	create(strings.Replace(strings.Replace(good, "name: orders,", "name: payments,", 1), "app: orders", "app: payments", 1))
	r, set = next()
	if !r.Applied || set.Policies() != 3 || r.Invalid != 1 {
		t.Fatalf("after adding shop/payments: got %+v with %d policies, want applied, 3 policies, 1 invalid", r, set.Policies())
	}
	if d := request(set, "payments"); !d.Allowed() {
		t.Errorf("request to app=payments: got %s (%s), want allow", d.Outcome, d.Reason)
	}

	// Removing the field the agent does not know applies the policy as written.
	cur, err := aps.Get(ctx, "other", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	unstructured.RemoveNestedField(cur.Object, "spec", "futureField")
	if _, err := aps.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r, set = next()
	if !r.Applied || r.Err != nil || r.Invalid != 0 {
		t.Fatalf("after removing futureField: got %+v, want applied without problems", r)
	}
	if d := request(set, "other"); !d.Allowed() {
		t.Errorf("request to app=other: got %s (%s), want allow", d.Outcome, d.Reason)
	}
	if st := store.Stats(); st.Failures != 0 || st.Generation != 3 {
		t.Errorf("store: got %d failures, generation %d; want 0, 3", st.Failures, st.Generation)
	}
}
