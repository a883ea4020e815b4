package policywatch

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/identity/kube/coreclient"
	"github.com/portcullis-mesh/portcullis/test/kubeenv"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

const issuerYAML = `
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: entra, namespace: shop}
spec:
  azureAD:
    tenantID: 72f988bf-0000-4000-8000-000000000001
    audiences: [api://orders]
`

const policyYAML = `
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: orders-api, namespace: shop}
spec:
  selector:
    matchLabels: {app: orders-api}
  mode: Enforce
  action: Allow
  rules:
  - to:
      ports: [8080]
      methods: [GET]
    when:
      issuers: [{name: entra}]
`

func obj(t testing.TB, y string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(y), &u.Object); err != nil {
		t.Fatal(err)
	}
	return u
}

func names(objs []*unstructured.Unstructured) string {
	var s []string
	for _, o := range objs {
		s = append(s, o.GetNamespace()+"/"+o.GetName())
	}
	return strings.Join(s, ",")
}

func TestWatcher(t *testing.T) {
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	env := kubeenv.Start(t, kubeenv.Options{CRDDir: filepath.Join(root, "daemonset", "crds")})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs := kubernetes.NewForConfigOrDie(env.Config())
	dyn := dynamic.NewForConfigOrDie(env.Config())
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// One object exists before the watcher starts.
	if _, err := dyn.Resource(IssuersGVR).Namespace("shop").Create(ctx, obj(t, issuerYAML), metav1.CreateOptions{FieldManager: "kubectl"}); err != nil {
		t.Fatalf("create issuer: %v", err)
	}

	w, err := New(dyn, Config{})
	if err != nil {
		t.Fatal(err)
	}
	snaps := make(chan Snapshot, 16)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx, func(s Snapshot) { snaps <- s }) }()
	t.Cleanup(func() { // informers stop before the API server
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
	next := func() Snapshot {
		t.Helper()
		select {
		case s := <-snaps:
			return s
		case <-time.After(15 * time.Second):
			t.Fatal("no snapshot within 15s")
			return Snapshot{}
		}
	}

	s := next()
	if !s.Initial || names(s.Issuers) != "shop/entra" || len(s.AccessPolicies) != 0 || s.ObservedAt.IsZero() {
		t.Fatalf("initial snapshot: initial %v issuers %q policies %d observed %v; want initial, shop/entra, 0, set",
			s.Initial, names(s.Issuers), len(s.AccessPolicies), s.ObservedAt)
	}
	if mf := s.Issuers[0].GetManagedFields(); mf != nil {
		t.Errorf("managed fields kept: %v", mf)
	}

	before := time.Now()
	if _, err := dyn.Resource(AccessPoliciesGVR).Namespace("shop").Create(ctx, obj(t, policyYAML), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create access policy: %v", err)
	}
	s = next()
	if s.Initial || names(s.AccessPolicies) != "shop/orders-api" || names(s.Issuers) != "shop/entra" {
		t.Fatalf("after create: initial %v policies %q issuers %q", s.Initial, names(s.AccessPolicies), names(s.Issuers))
	}
	if s.ObservedAt.Before(before) || time.Since(s.ObservedAt) > 10*time.Second {
		t.Errorf("ObservedAt %v not between the create (%v) and now", s.ObservedAt, before)
	}

	// The snapshot is a copy: changing it changes nothing the watcher holds.
	s.AccessPolicies[0].SetName("mutated")

	if err := dyn.Resource(IssuersGVR).Namespace("shop").Delete(ctx, "entra", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	s = next()
	if len(s.Issuers) != 0 || names(s.AccessPolicies) != "shop/orders-api" {
		t.Fatalf("after delete: issuers %q policies %q; want none and shop/orders-api", names(s.Issuers), names(s.AccessPolicies))
	}

	// A schema violation is refused at admission: it never reaches agents.
	bad := obj(t, policyYAML)
	bad.SetName("bad")
	if err := unstructured.SetNestedField(bad.Object, "Sometimes", "spec", "mode"); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(AccessPoliciesGVR).Namespace("shop").Create(ctx, bad, metav1.CreateOptions{}); err == nil {
		t.Errorf("create access policy with mode Sometimes: got nil error, want refused by the CRD schema")
	}

	// Problems the schema cannot express are reported as Events.
	core, err := coreclient.NewForConfig(env.Config())
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewReporter(core, ReporterConfig{NodeName: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Shutdown()
	for range 5 { // the correlator lets a burst of 2 through, aggregates the rest
		r.Invalid(s.AccessPolicies[0], "issuer shop/entra does not exist")
	}
	sel := fields.OneTermEqualSelector("reason", Reason).String()
	deadline := time.Now().Add(15 * time.Second)
	for {
		evs, err := cs.CoreV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs.Items) > 0 {
			e := evs.Items[0]
			if e.InvolvedObject.Kind != "AccessPolicy" || e.InvolvedObject.Name != "orders-api" || e.Type != corev1.EventTypeWarning || e.Source.Host != "node-a" {
				t.Errorf("event: got %+v", e)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no InvalidPolicy event within 15s")
		}
		time.Sleep(50 * time.Millisecond) // Events are written asynchronously; no signal.
	}
}
