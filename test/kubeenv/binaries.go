// Package kubeenv runs a real Kubernetes control plane (etcd and
// kube-apiserver) on loopback for tests: random free ports, a temporary
// directory, certificates generated in Go, static-token authentication and
// RBAC. There is no controller manager, scheduler or kubelet: tests create
// objects through the API and, since no kubelet acknowledges termination,
// delete pods bound to a node with a grace period of 0.
//
// The binaries are built once per machine by build.sh (a separate Go module
// in tools/, so the product go.mod never depends on k8s.io/kubernetes) into
// BinDir. Tests call RequireBinaries (Start does it for them): it skips when
// the binaries are missing, or fails when PORTCULLIS_REQUIRE_PRIVILEGED=1, as
// CI sets, so that a broken build can never silently turn these tests off.
package kubeenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// KubeVersion is the Kubernetes release build.sh builds.
const KubeVersion = "v1.37.1"

// BinEnv names the environment variable that overrides DefaultBinDir.
const BinEnv = "PORTCULLIS_KUBE_BIN"

// DefaultBinDir is where build.sh puts the binaries unless BinEnv is set.
const DefaultBinDir = "/var/cache/portcullis/kube-" + KubeVersion + "/bin"

// RequireEnv mirrors bpf/testenv.RequirePrivilegedEnv: when it is "1", a test
// that would skip for want of its environment fails instead.
const RequireEnv = "PORTCULLIS_REQUIRE_PRIVILEGED"

// The control-plane binaries every Env needs.
var required = []string{"etcd", "kube-apiserver", "kubectl"}

// BinDir returns the directory holding the binaries: $PORTCULLIS_KUBE_BIN,
// or DefaultBinDir when it is unset.
func BinDir() string {
	if d := os.Getenv(BinEnv); d != "" {
		return d
	}
	return DefaultBinDir
}

// errMissing is wrapped by Binaries when a binary is absent.
var errMissing = errors.New("kube binaries missing")

// Binaries returns the absolute paths of etcd, kube-apiserver and kubectl in
// BinDir, or an error naming the first one missing.
func Binaries() (map[string]string, error) {
	dir, err := filepath.Abs(BinDir())
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", BinDir(), err)
	}
	paths := make(map[string]string, len(required))
	for _, b := range required {
		p := filepath.Join(dir, b)
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("%w: %s not executable in %s (run test/kubeenv/build.sh)", errMissing, b, dir)
		}
		paths[b] = p
	}
	return paths, nil
}

// RequireBinaries returns the paths of the control-plane binaries. When they
// are missing it skips tb, or fails it when PORTCULLIS_REQUIRE_PRIVILEGED=1.
func RequireBinaries(tb testing.TB) map[string]string {
	tb.Helper()
	paths, err := Binaries()
	if err == nil {
		return paths
	}
	if os.Getenv(RequireEnv) == "1" {
		tb.Fatalf("%v; %s=1 forbids skipping", err, RequireEnv)
	}
	tb.Skip(err.Error())
	return nil
}

// HelmPath returns the path of the helm binary in BinDir, or "" when build.sh
// could not build it (callers then render charts with the Helm library).
func HelmPath() string {
	p := filepath.Join(BinDir(), "helm")
	if _, err := exec.LookPath(p); err != nil {
		return ""
	}
	return p
}
