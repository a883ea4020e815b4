package kubeenv_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/bpf/testenv"
	"github.com/portcullis-mesh/portcullis/test/kubeenv"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

const agentUser = "system:serviceaccount:portcullis:portcullis-agent"

var accessPolicies = schema.GroupVersionResource{Group: "portcullis.dev", Version: "v1alpha1", Resource: "accesspolicies"}

// agentProc is one portcullis-agent process playing one node.
type agentProc struct {
	node  string
	admin string // host:port of /metrics
	cmd   *exec.Cmd
	log   string
	out   *os.File
}

// restart starts the agent again with the same configuration, after its
// process ended (killed by the test, for instance).
func (a *agentProc) restart(tb testing.TB) {
	tb.Helper()
	cmd := exec.Command(a.cmd.Path, a.cmd.Args[1:]...)
	cmd.Stdout, cmd.Stderr = a.out, a.out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("restart %s: %v", a.node, err)
	}
	a.cmd = cmd
}

// generation scrapes portcullis_policy_generation.
func (a *agentProc) generation(c *http.Client) (int, error) {
	resp, err := c.Get("http://" + a.admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "portcullis_policy_generation "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return int(f), err
		}
	}
	return 0, fmt.Errorf("no portcullis_policy_generation in /metrics of %s", a.node)
}

func freeAddr(tb testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startAgents builds portcullis-agent and runs n of them in Kubernetes mode
// against env, as nodes node-1..node-n, each with its own pin directory,
// admin port and debug socket, authenticating as the agent's service
// account (so the DaemonSet's RBAC is what they get).
func startAgents(tb testing.TB, env *kubeenv.Env, n int) []*agentProc {
	root, err := kubeenv.RepoRoot()
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	bin := filepath.Join(dir, "portcullis-agent")
	build := exec.Command("go", "build", "-o", bin, "./agent/cmd/portcullis-agent")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("build agent: %v\n%s", err, out)
	}
	kubeconfig := filepath.Join(dir, "agent.kubeconfig")
	if err := env.WriteKubeconfig(kubeconfig, agentUser); err != nil {
		tb.Fatal(err)
	}
	var agents []*agentProc
	for i := 1; i <= n; i++ {
		a := &agentProc{node: fmt.Sprintf("node-%d", i), admin: freeAddr(tb), log: filepath.Join(dir, fmt.Sprintf("agent-%d.log", i))}
		cfg := fmt.Sprintf(`mode: kubernetes
nodeName: %s
adminAddress: %s
debugSocket: %s
pinDir: /sys/fs/bpf/portcullis-kubeenv-%d-%d
teardownOnExit: true
shutdownGrace: 1s
kubernetes:
  kubeconfig: %s
  podName: agent-%d
  podNamespace: portcullis
audit:
  path: %s
log:
  format: text
  level: warn
`, a.node, a.admin, filepath.Join(dir, fmt.Sprintf("debug-%d.sock", i)), os.Getpid(), i, kubeconfig, i, filepath.Join(dir, fmt.Sprintf("audit-%d.log", i)))
		cfgPath := filepath.Join(dir, fmt.Sprintf("agent-%d.yaml", i))
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			tb.Fatal(err)
		}
		logf, err := os.Create(a.log)
		if err != nil {
			tb.Fatal(err)
		}
		a.cmd = exec.Command(bin, "--config="+cfgPath)
		a.cmd.Stdout, a.cmd.Stderr = logf, logf
		a.out = logf
		if err := a.cmd.Start(); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() {
			if a.cmd.ProcessState != nil {
				logf.Close()
				return
			}
			_ = a.cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = a.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				_ = a.cmd.Process.Kill()
				<-done
			}
			logf.Close()
			if tb.Failed() {
				data, _ := os.ReadFile(a.log)
				tb.Logf("%s log:\n%s", a.node, data)
			}
		})
		agents = append(agents, a)
	}
	return agents
}

// BenchmarkPolicyPropagation runs three agents as three nodes against a
// real API server and measures, for each change of an AccessPolicy, the time
// from the API server accepting the change (the patch returning) to each
// node's agent enforcing the recompiled set (its policy generation
// advancing, scraped every 2ms). Reported: p50/p99 over every node and
// change, and p50/p99 of the slowest node per change ("every node").
//
//	go test -run '^$' -bench PolicyPropagation -benchtime 100x ./test/kubeenv/
func BenchmarkPolicyPropagation(b *testing.B) {
	testenv.RequirePrivileged(b)
	root, err := kubeenv.RepoRoot()
	if err != nil {
		b.Fatal(err)
	}
	env := kubeenv.Start(b, kubeenv.Options{
		CRDDir: filepath.Join(root, "daemonset", "crds"),
		Users:  map[string][]string{agentUser: {"system:serviceaccounts", "system:serviceaccounts:portcullis"}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// The DaemonSet's RBAC, for real.
	if _, err := env.Kubectl(ctx, "apply", "--server-side", "-f", filepath.Join(root, "daemonset", "manifests", "namespace.yaml")); err != nil {
		b.Fatal(err)
	}
	if _, err := env.Kubectl(ctx, "apply", "--server-side", "-f", filepath.Join(root, "daemonset", "manifests", "rbac.yaml")); err != nil {
		b.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(env.Config())
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	policies := `
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: entra, namespace: shop}
spec:
  azureAD:
    tenantID: 72f988bf-0000-4000-8000-000000000001
    authorityHost: http://127.0.0.1:9
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
  - to:
      ports: [8080]
      methods: [GET]
    when:
      issuers: [{name: entra}]
`
	f := filepath.Join(b.TempDir(), "policies.yaml")
	if err := os.WriteFile(f, []byte(policies), 0o600); err != nil {
		b.Fatal(err)
	}
	if _, err := env.Kubectl(ctx, "apply", "--server-side", "-f", f); err != nil {
		b.Fatal(err)
	}

	agents := startAgents(b, env, 3)
	hc := &http.Client{Timeout: time.Second}
	gens := make([]int, len(agents))
	deadline := time.Now().Add(90 * time.Second)
	for i, a := range agents {
		for {
			g, err := a.generation(hc)
			if err == nil && g >= 1 {
				gens[i] = g
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s has no policy set after 90s (last error %v)", a.node, err)
			}
			if a.cmd.ProcessState != nil {
				b.Fatalf("%s exited", a.node)
			}
			time.Sleep(50 * time.Millisecond) // startup: no signal but the endpoint
		}
	}

	dyn := dynamic.NewForConfigOrDie(env.Config())
	var all, slowest []time.Duration
	round := 0
	for b.Loop() {
		round++
		patch := fmt.Appendf(nil, `{"metadata":{"labels":{"round":"%d"}}}`, round)
		_, err := dyn.Resource(accessPolicies).Namespace("shop").Patch(ctx, "orders-api", types.MergePatchType, patch, metav1.PatchOptions{})
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		lat := make([]time.Duration, len(agents))
		errs := make([]error, len(agents))
		var wg sync.WaitGroup
		for i, a := range agents {
			wg.Go(func() { // every node watched at once
				for {
					g, err := a.generation(hc)
					if err == nil && g > gens[i] {
						gens[i], lat[i] = g, time.Since(t0)
						return
					}
					if time.Since(t0) > 30*time.Second {
						errs[i] = fmt.Errorf("round %d: %s did not enforce within 30s", round, a.node)
						return
					}
					time.Sleep(2 * time.Millisecond) // scrape interval: no push signal
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			b.Fatal(err)
		}
		all = append(all, lat...)
		worst := slices.Max(lat)
		slowest = append(slowest, worst)
	}
	pct := func(d []time.Duration, p int) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[(len(s)-1)*p/100].Microseconds()) / 1000
	}
	b.ReportMetric(pct(all, 50), "ms-p50")
	b.ReportMetric(pct(all, 99), "ms-p99")
	b.ReportMetric(pct(slowest, 50), "ms-all-nodes-p50")
	b.ReportMetric(pct(slowest, 99), "ms-all-nodes-p99")
}
