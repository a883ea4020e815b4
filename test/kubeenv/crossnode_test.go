package kubeenv_test

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/bpf/testenv"
	"github.com/portcullis-mesh/portcullis/test/kubeenv"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestCrossNodeCallerFromIPCache: callers whose pods run on another node
// carry no socket record here, so the agent names them by source address
// through its IP cache, filled from every Pod in the cluster. The callers'
// addresses live on this host (secondary addresses of the pod's host-side
// veth), their Pod objects say node-2.
func TestCrossNodeCallerFromIPCache(t *testing.T) {
	testenv.RequirePrivileged(t)
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	env := kubeenv.Start(t, kubeenv.Options{
		CRDDir: filepath.Join(root, "daemonset", "crds"),
		Users:  map[string][]string{agentUser: {"system:serviceaccounts", "system:serviceaccounts:portcullis"}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, f := range []string{"namespace.yaml", "rbac.yaml"} {
		if _, err := env.Kubectl(ctx, "apply", "--server-side", "-f", filepath.Join(root, "daemonset", "manifests", f)); err != nil {
			t.Fatal(err)
		}
	}
	cs := kubernetes.NewForConfigOrDie(env.Config())
	for _, ns := range []string{"shop", "clients"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	policy := `
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: orders-api, namespace: shop}
spec:
  selector:
    matchLabels: {app: orders-api}
  mode: Enforce
  action: Allow
  rules:
  - from:
      workloads: [clients/frontend]
    to:
      ports: [8080]
      methods: [GET]
`
	f := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(f, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Kubectl(ctx, "apply", "--server-side", "-f", f); err != nil {
		t.Fatal(err)
	}

	a := startAgents(t, env, 1)[0]
	server, err := kubeenv.RunningPod(ctx, cs, kubeenv.Pod{
		Namespace: "shop", Name: "orders-api", Node: a.node, ServiceAccount: "orders",
		Labels: map[string]string{"app": "orders-api"}, IPs: []string{"10.81.0.2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	np := startNodePod(t, string(server.UID), "10.81.0.2", "10.81.0.1")
	for name, ip := range map[string]string{"frontend": "10.81.0.3", "attacker": "10.81.0.4"} {
		if _, err := kubeenv.RunningPod(ctx, cs, kubeenv.Pod{
			Namespace: "clients", Name: name, Node: "node-2", ServiceAccount: name, IPs: []string{ip},
		}); err != nil {
			t.Fatal(err)
		}
		run(t, "ip", "addr", "add", ip+"/24", "dev", np.hostVeth)
	}
	app := exec.Command("ip", "netns", "exec", np.netns, "/usr/bin/python3", "-m", "http.server", "--bind", "10.81.0.2", "8080")
	app.Dir = t.TempDir()
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Process.Kill(); _ = app.Wait() })

	get := func(from string) int {
		c := &http.Client{Timeout: time.Second, Transport: &http.Transport{
			DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}).DialContext,
		}}
		resp, err := c.Get("http://10.81.0.2:8080/")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// First the pod is enrolled (the policy selects it), then the app
	// listens: the frontend's request goes through. Both by polling: the
	// agent offers no signal.
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for v, _ := a.metric(hc, "portcullis_agent_enrolled_pods"); v != 1; v, _ = a.metric(hc, "portcullis_agent_enrolled_pods") {
		if time.Now().After(deadline) {
			t.Fatalf("enrolled pods: got %v, want 1", v)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for got := get("10.81.0.3"); got != http.StatusOK; got = get("10.81.0.3") {
		if time.Now().After(deadline) {
			t.Fatalf("frontend (node-2, by IP cache): got %d, want 200", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for from, want := range map[string]int{
		"10.81.0.4": http.StatusForbidden, // attacker: known, not allowed
		"10.81.0.1": http.StatusForbidden, // the node's own address: anonymous
	} {
		if got := get(from); got != want {
			t.Errorf("request from %s: got %d, want %d", from, got, want)
		}
	}
}
