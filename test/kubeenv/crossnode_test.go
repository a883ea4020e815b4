package kubeenv_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/bpf/testenv"
	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/test/kubeenv"
	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// remoteCaller is a pod of another node: its Pod object says node-2, its
// address lives on this host (a secondary address of the server pod's
// host-side veth), so its connections carry no socket record here.
type remoteCaller struct {
	name, ip, clientID string // clientID: the service account's Workload ID annotation
}

// crossNodeSetup runs one agent as node-1 with policyYAML applied, a server
// pod shop/orders-api (app=orders-api, 10.81.0.2, an HTTP app on 8080)
// enrolled on it, and the callers in namespace clients on node-2. It returns
// a function doing GET / from a caller's address with an optional bearer
// token, returning the status (0 when the connection fails).
func crossNodeSetup(t *testing.T, policyYAML string, callers []remoteCaller) func(from, token string) int {
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
	t.Cleanup(cancel)
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
	f := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(f, []byte(policyYAML), 0o600); err != nil {
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
	for _, c := range callers {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "clients", Name: c.name}}
		if c.clientID != "" {
			sa.Annotations = map[string]string{identity.ClientIDAnnotation: c.clientID}
		}
		if _, err := cs.CoreV1().ServiceAccounts("clients").Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := kubeenv.RunningPod(ctx, cs, kubeenv.Pod{
			Namespace: "clients", Name: c.name, Node: "node-2", ServiceAccount: c.name, IPs: []string{c.ip},
		}); err != nil {
			t.Fatal(err)
		}
		run(t, "ip", "addr", "add", c.ip+"/24", "dev", np.hostVeth)
	}
	app := exec.Command("ip", "netns", "exec", np.netns, "/usr/bin/python3", "-m", "http.server", "--bind", "10.81.0.2", "8080")
	app.Dir = t.TempDir()
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Process.Kill(); _ = app.Wait() })

	get := func(from, token string) int {
		c := &http.Client{Timeout: time.Second, Transport: &http.Transport{
			DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}).DialContext,
		}}
		req, err := http.NewRequest(http.MethodGet, "http://10.81.0.2:8080/", nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// The pod is enrolled (the policy selects it) before anything is
	// asked of it; polling, as the agent offers no signal.
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for v, _ := a.metric(hc, "portcullis_agent_enrolled_pods"); v != 1; v, _ = a.metric(hc, "portcullis_agent_enrolled_pods") {
		if time.Now().After(deadline) {
			t.Fatalf("enrolled pods: got %v, want 1", v)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return get
}

// eventually retries f until it returns want (the app and the agent's
// caches settle) for up to 30 s, and fails with the last result.
func eventually(t *testing.T, what string, want int, f func() int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	got := f()
	for got != want && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		got = f()
	}
	if got != want {
		t.Fatalf("%s: got %d, want %d", what, got, want)
	}
}

// TestCrossNodeCallerFromIPCache: callers on another node are named by
// source address through the agent's IP cache, filled from every Pod.
func TestCrossNodeCallerFromIPCache(t *testing.T) {
	get := crossNodeSetup(t, `
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
`, []remoteCaller{{name: "frontend", ip: "10.81.0.3"}, {name: "attacker", ip: "10.81.0.4"}})

	eventually(t, "frontend (node-2, named by the IP cache)", http.StatusOK, func() int { return get("10.81.0.3", "") })
	for from, want := range map[string]int{
		"10.81.0.4": http.StatusForbidden, // attacker: known, not allowed
		"10.81.0.1": http.StatusForbidden, // the node's own address: anonymous
	} {
		if got := get(from, ""); got != want {
			t.Errorf("request from %s: got %d, want %d", from, got, want)
		}
	}
}

// TestTokenBoundToSource: a token is accepted only when its client (azp)
// is the caller's own Workload ID client ID, from its service account's
// azure.workload.identity/client-id annotation; a token stolen from the
// frontend and replayed by the attacker is refused.
func TestTokenBoundToSource(t *testing.T) {
	const frontendClient = "aaaaaaaa-0000-4000-8000-00000000f00d"
	const attackerClient = "bbbbbbbb-0000-4000-8000-0000000000ff"
	p, err := idp.New(idp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p.Handler(""))
	t.Cleanup(srv.Close)

	get := crossNodeSetup(t, `
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: entra, namespace: shop}
spec:
  azureAD:
    tenantID: `+idp.DefaultTenant+`
    authorityHost: `+srv.URL+`
    audiences: [api://orders]
---
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
      workloads: [clients/frontend, clients/attacker]
    to:
      ports: [8080]
      methods: [GET]
    when:
      issuers: [{name: entra}]
      tokenBoundToSource: true
`, []remoteCaller{
		{name: "frontend", ip: "10.81.0.3", clientID: frontendClient},
		{name: "attacker", ip: "10.81.0.4", clientID: attackerClient},
	})
	mint := func(client string) string {
		tok, err := p.Mint(idp.TokenRequest{Audience: "api://orders", App: true, ClientID: client})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	frontendToken := mint(frontendClient)
	eventually(t, "frontend with its own token", http.StatusOK, func() int { return get("10.81.0.3", frontendToken) })
	for _, tc := range []struct {
		what, from, token string
		want              int
	}{
		{"attacker replaying the frontend's token", "10.81.0.4", frontendToken, http.StatusForbidden},
		{"attacker with its own token", "10.81.0.4", mint(attackerClient), http.StatusOK},
		{"frontend with the attacker's token", "10.81.0.3", mint(attackerClient), http.StatusForbidden},
		{"frontend without a token", "10.81.0.3", "", http.StatusUnauthorized},
	} {
		if got := get(tc.from, tc.token); got != tc.want {
			t.Errorf("%s: got %d, want %d", tc.what, got, tc.want)
		}
	}
}

// TestSameNodeCallerFromSocketRecord: a caller on the same node is named by
// the eBPF socket record of its cgroup, not by its address: its Pod object
// announces an address it does not use, so the IP cache cannot name it.
func TestSameNodeCallerFromSocketRecord(t *testing.T) {
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
	t.Cleanup(cancel)
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
	f := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(f, []byte(`
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
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Kubectl(ctx, "apply", "--server-side", "-f", f); err != nil {
		t.Fatal(err)
	}
	bridge := "pckb" + strconv.Itoa(os.Getpid()%100000)
	run(t, "ip", "link", "add", bridge, "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", bridge).Run() })
	run(t, "ip", "link", "set", bridge, "up")

	a := startAgents(t, env, 1)[0]
	pods := map[string]*nodePod{}
	for _, p := range []struct{ ns, name, sa, apiIP, realIP string }{
		{"shop", "orders-api", "orders", "10.83.0.2", "10.83.0.2"},
		{"clients", "frontend", "frontend", "10.83.0.99", "10.83.0.3"}, // the API's address is not the one used
		{"clients", "attacker", "attacker", "10.83.0.98", "10.83.0.4"},
	} {
		pod, err := kubeenv.RunningPod(ctx, cs, kubeenv.Pod{
			Namespace: p.ns, Name: p.name, Node: a.node, ServiceAccount: p.sa,
			Labels: map[string]string{"app": p.name}, IPs: []string{p.apiIP},
		})
		if err != nil {
			t.Fatal(err)
		}
		pods[p.name] = startNodePod(t, string(pod.UID), p.realIP, "bridge:"+bridge)
	}
	app := exec.Command("ip", "netns", "exec", pods["orders-api"].netns, "/usr/bin/python3", "-m", "http.server", "--bind", "10.83.0.2", "8080")
	app.Dir = t.TempDir()
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Process.Kill(); _ = app.Wait() })

	// curl from inside a caller: its netns and its container cgroup.
	curl := func(from string) int {
		np := pods[from]
		fd, err := unix.Open(np.cgroup, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		cmd := exec.Command("ip", "netns", "exec", np.netns, "curl", "-s", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}", "http://10.83.0.2:8080/")
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
		out, _ := cmd.Output()
		code, _ := strconv.Atoi(strings.TrimSpace(string(out)))
		return code
	}
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for v, _ := a.metric(hc, "portcullis_agent_enrolled_pods"); v != 1; v, _ = a.metric(hc, "portcullis_agent_enrolled_pods") {
		if time.Now().After(deadline) {
			t.Fatalf("enrolled pods: got %v, want 1", v)
		}
		time.Sleep(50 * time.Millisecond)
	}
	eventually(t, "frontend on the same node (socket record)", http.StatusOK, func() int { return curl("frontend") })
	if got := curl("attacker"); got != http.StatusForbidden {
		t.Errorf("attacker on the same node: got %d, want 403", got)
	}
}
