package kubepolicy

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/portcullis-mesh/portcullis/identity/kube/policywatch"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

func obj(t *testing.T, y string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(y), &u.Object); err != nil {
		t.Fatal(err)
	}
	return u
}

type reports map[string]string

func (r reports) Invalid(u *unstructured.Unstructured, msg string) {
	r[u.GetKind()+" "+u.GetNamespace()+"/"+u.GetName()] = msg
}

const good = `
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: orders, namespace: shop, generation: 1}
spec:
  selector: {matchLabels: {app: orders}}
  rules:
  - from: {workloads: [shop/frontend]}
`

func TestApply(t *testing.T) {
	store := policy.NewStore()
	rep := reports{}
	var applied *policy.Set
	var observed time.Time
	cfg := Config{Store: store, Reporter: rep, OnApply: func(s *policy.Set, at time.Time) { applied, observed = s, at }}
	at := time.Unix(1000, 0)

	Apply(cfg, policywatch.Snapshot{AccessPolicies: []*unstructured.Unstructured{obj(t, good)}, ObservedAt: at, Initial: true})
	if applied == nil || applied.Policies() != 1 || !observed.Equal(at) {
		t.Fatalf("first snapshot: applied %v at %v, want 1 policy at %v", applied, observed, at)
	}
	if len(rep) != 0 {
		t.Errorf("reports for a valid snapshot: %v", rep)
	}

	// A policy naming an issuer that does not exist is quarantined: the set
	// is still installed, and the object gets an Event.
	bad := obj(t, strings.Replace(good, "name: orders,", "name: broken,", 1)+"    when: {issuers: [{name: nope}]}\n")
	Apply(cfg, policywatch.Snapshot{AccessPolicies: []*unstructured.Unstructured{obj(t, good), bad}, ObservedAt: at})
	if got := store.Stats().Generation; got != 2 {
		t.Errorf("generation after quarantine: got %d, want 2", got)
	}
	if msg, ok := rep["AccessPolicy shop/broken"]; !ok || !strings.Contains(msg, "nope") {
		t.Errorf("report for shop/broken: got %q (reports %v), want one naming the missing issuer", msg, rep)
	}

	// An object that does not even decode keeps the set in force.
	undecodable := obj(t, "apiVersion: portcullis.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: x, namespace: shop}\nspec: {rules: 5}\n")
	Apply(cfg, policywatch.Snapshot{AccessPolicies: []*unstructured.Unstructured{undecodable}, ObservedAt: at})
	if got := store.Stats().Generation; got != 2 {
		t.Errorf("generation after an undecodable object: got %d, want 2 (unchanged)", got)
	}
	if _, ok := rep["AccessPolicy shop/x"]; !ok {
		t.Errorf("no report for the undecodable object: %v", rep)
	}
}
