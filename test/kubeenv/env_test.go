package kubeenv_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/test/kubeenv"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
)

func TestEnv(t *testing.T) {
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	const reader = "reader"
	env := kubeenv.Start(t, kubeenv.Options{
		Users:  map[string][]string{reader: {"readers"}},
		CRDDir: filepath.Join(root, "daemonset", "crds"),
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	admin := kubernetes.NewForConfigOrDie(env.Config())
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kubeenv-test"}}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace as admin: %v", err)
	}

	// RBAC is on: a user without a binding is forbidden.
	user := kubernetes.NewForConfigOrDie(env.UserConfig(reader))
	_, err = user.CoreV1().Namespaces().Get(ctx, "kubeenv-test", metav1.GetOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("get namespace as %s: got err %v, want Forbidden", reader, err)
	}

	// The CRDs from daemonset/crds are served.
	dc := discovery.NewDiscoveryClientForConfigOrDie(env.Config())
	crds, err := kubeenv.ReadCRDs(filepath.Join(root, "daemonset", "crds"))
	if err != nil {
		t.Fatal(err)
	}
	for _, crd := range crds {
		gv := schema.GroupVersion{Group: crd.Spec.Group, Version: crd.Spec.Versions[0].Name}
		res, err := dc.ServerResourcesForGroupVersion(gv.String())
		if err != nil {
			t.Fatalf("discover %s: %v", gv, err)
		}
		found := false
		for _, r := range res.APIResources {
			found = found || r.Name == crd.Spec.Names.Plural
		}
		if !found {
			t.Errorf("resource %s not served in %s", crd.Spec.Names.Plural, gv)
		}
	}

	// kubectl talks to the same server.
	out, err := env.Kubectl(ctx, "get", "namespace", "kubeenv-test", "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(out)), "namespace/kubeenv-test"; got != want {
		t.Errorf("kubectl get namespace: got %q, want %q", got, want)
	}
}
