package policy

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/portcullis-mesh/portcullis/tokencheck/policy/apis/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestLoadErrorsGolden checks the messages operators see for invalid
// files: one testdata/invalid/X.yaml, one X.golden.
func TestLoadErrorsGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/invalid/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("glob testdata/invalid: %v, %d files", err, len(files))
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".yaml"), func(t *testing.T) {
			objs, err := LoadFiles(f)
			if err == nil {
				_, err = Compile(objs)
			}
			if err == nil {
				t.Fatalf("LoadFiles+Compile(%s) = nil error, want problems", f)
			}
			var perr *Error
			if !errors.As(err, &perr) {
				t.Fatalf("error %v is %T, want *Error", err, err)
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(f, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("read golden file (run with -update to create): %v", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("error mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoadValid(t *testing.T) {
	objs, err := LoadFiles("testdata/valid")
	if err != nil {
		t.Fatalf("LoadFiles: %v", err)
	}
	set, err := Compile(objs)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	if got, want := set.Policies(), 2; got != want {
		t.Errorf("Policies() = %d, want %d", got, want)
	}
	if got, want := set.Rules(), 3; got != want {
		t.Errorf("Rules() = %d, want %d", got, want)
	}
	if got, want := objs.AccessPolicies[0].Spec.Rules[0].To.Ports, []int32{8080}; !cmp.Equal(got, want) {
		t.Errorf("ports = %v, want %v", got, want)
	}
	if got, want := objs.Issuers[0].Spec.ClockSkew.Duration.String(), "2m0s"; got != want {
		t.Errorf("clockSkew = %s, want %s", got, want)
	}
}

func TestLoadDefaultsNamespace(t *testing.T) {
	objs, err := Load("x.yaml", []byte("apiVersion: portcullis.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: p}\nspec: {}\n---\n"))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got := objs.AccessPolicies[0].Namespace; got != "default" {
		t.Errorf("namespace = %q, want default", got)
	}
}

// TestValidateAPIObjects covers the Kubernetes path: objects without a
// file origin get the same checks, without positions.
func TestValidateAPIObjects(t *testing.T) {
	objs := &Objects{}
	ap := &v1.AccessPolicy{}
	ap.Name, ap.Namespace = "p", "shop"
	ap.Spec.Rules = []v1.Rule{{To: &v1.Destination{Paths: []string{"no-slash"}}}}
	if err := objs.Add(ap); err != nil {
		t.Fatal(err)
	}
	err := Validate(objs)
	want := `invalid policy: AccessPolicy shop/p: spec.rules[0].to.paths[0]: path "no-slash": want an absolute path, "/prefix/*" or "*suffix"`
	if err == nil || err.Error() != want {
		t.Errorf("Validate() = %v, want %s", err, want)
	}
}

// FuzzLoadAndCompile feeds arbitrary bytes to the loader and compiler:
// they must return an error or a Set, never panic.
func FuzzLoadAndCompile(f *testing.F) {
	for _, dir := range []string{"testdata/valid", "testdata/invalid"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := Load("fuzz.yaml", data)
		if err != nil {
			var perr *Error
			if !errors.As(err, &perr) {
				t.Fatalf("Load error %T, want *Error", err)
			}
			return
		}
		set, err := Compile(objs)
		if err != nil {
			return
		}
		_ = Evaluate(set, req())
	})
}

// TestLoadList reads what `kubectl get accesspolicies -A -o yaml` writes.
func TestLoadList(t *testing.T) {
	data := `apiVersion: v1
kind: List
metadata: {resourceVersion: ""}
items:
- apiVersion: portcullis.dev/v1alpha1
  kind: AccessPolicy
  metadata: {name: a, namespace: shop, uid: 0c1e, resourceVersion: "42", creationTimestamp: "2026-01-02T03:04:05Z", generation: 1}
  spec: {rules: [{}]}
  status: {observedGeneration: 1}
- apiVersion: portcullis.dev/v1alpha1
  kind: AccessPolicyList
  items: []
- apiVersion: portcullis.dev/v1alpha1
  kind: AccessPolicy
  metadata: {name: b, namespace: shop}
  spec: {rulez: []}
`
	_, err := Load("list.yaml", []byte(data))
	want := "invalid policy (2 problems):\n  list.yaml:10:3: lists do not nest\n  list.yaml:16:10: spec.rulez: unknown field"
	if err == nil || err.Error() != want {
		t.Fatalf("Load() = %v, want %s", err, want)
	}
	objs, err := Load("list.yaml", []byte(strings.Split(data, "- apiVersion: portcullis.dev/v1alpha1\n  kind: AccessPolicyList")[0]))
	if err != nil {
		t.Fatalf("Load(): %v", err)
	}
	if got := len(objs.AccessPolicies); got != 1 || objs.AccessPolicies[0].Name != "a" {
		t.Errorf("Load() read %d policies, want shop/a", got)
	}
}
