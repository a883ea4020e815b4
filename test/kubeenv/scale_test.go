package kubeenv_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/bpf/testenv"
	"github.com/portcullis-mesh/portcullis/test/kubeenv"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// parallel runs fn(i) for i in [0, n) on 16 goroutines and returns the first
// error.
func parallel(n int, fn func(i int) error) error {
	work := make(chan int)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range 16 {
		wg.Go(func() {
			for i := range work {
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	return first
}

// procStat returns a process's resident set (bytes) and CPU time.
func procStat(pid int) (rss int64, cpu time.Duration, err error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for l := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			rss = kb << 10
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14, utime
	st, _ := strconv.ParseInt(f[12], 10, 64) // field 15, stime
	const hz = 100                           // USER_HZ on Linux
	return rss, time.Duration(ut+st) * time.Second / hz, nil
}

// BenchmarkAgentScale runs one agent in Kubernetes mode against a real API
// server holding PORTCULLIS_SCALE_PODS pods (10,000 when unset) on other
// nodes and 1,000 AccessPolicies, and reports the time from the agent's
// start to its policy set being in force with every informer synced (its
// readiness), its resident memory and the CPU it spent, then the memory and
// CPU after a minute of watching.
//
//	go test -run '^$' -bench AgentScale -benchtime 1x -timeout 30m ./test/kubeenv/
func BenchmarkAgentScale(b *testing.B) {
	testenv.RequirePrivileged(b)
	n := 10000
	if s := os.Getenv("PORTCULLIS_SCALE_PODS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n <= 0 {
			b.Fatalf("PORTCULLIS_SCALE_PODS=%q: want a positive integer", s)
		}
	}
	const policies = 1000
	root, err := kubeenv.RepoRoot()
	if err != nil {
		b.Fatal(err)
	}
	env := kubeenv.Start(b, kubeenv.Options{
		CRDDir: filepath.Join(root, "daemonset", "crds"),
		Users:  map[string][]string{agentUser: {"system:serviceaccounts", "system:serviceaccounts:portcullis"}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	for _, f := range []string{"namespace.yaml", "rbac.yaml"} {
		if _, err := env.Kubectl(ctx, "apply", "--server-side", "-f", filepath.Join(root, "daemonset", "manifests", f)); err != nil {
			b.Fatal(err)
		}
	}
	cs := kubernetes.NewForConfigOrDie(env.Config())
	dyn := dynamic.NewForConfigOrDie(env.Config())
	const namespaces = 50
	for i := range namespaces {
		ns := fmt.Sprintf("ns-%02d", i)
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		is := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "portcullis.dev/v1alpha1", "kind": "Issuer",
			"metadata": map[string]any{"name": "entra", "namespace": ns},
			"spec": map[string]any{"azureAD": map[string]any{
				"tenantID": "72f988bf-0000-4000-8000-000000000001", "authorityHost": "http://127.0.0.1:9",
				"audiences": []any{"api://orders"}}},
		}}
		if _, err := dyn.Resource(accessPolicies.GroupVersion().WithResource("issuers")).Namespace(ns).Create(ctx, is, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	t0 := time.Now()
	err = parallel(policies, func(i int) error {
		ns := fmt.Sprintf("ns-%02d", i%namespaces)
		p := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "portcullis.dev/v1alpha1", "kind": "AccessPolicy",
			"metadata": map[string]any{"name": fmt.Sprintf("policy-%04d", i), "namespace": ns},
			"spec": map[string]any{
				"selector": map[string]any{"matchLabels": map[string]any{"app": fmt.Sprintf("app-%d", i)}},
				"mode":     "Enforce", "action": "Allow",
				"rules": []any{map[string]any{
					"to":   map[string]any{"ports": []any{int64(8080)}, "methods": []any{"GET"}},
					"when": map[string]any{"issuers": []any{map[string]any{"name": "entra"}}},
				}},
			},
		}}
		_, err := dyn.Resource(accessPolicies).Namespace(ns).Create(ctx, p, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		b.Fatalf("create policies: %v", err)
	}
	err = parallel(n, func(i int) error {
		_, err := kubeenv.RunningPod(ctx, cs, kubeenv.Pod{
			Namespace: fmt.Sprintf("ns-%02d", i%namespaces), Name: fmt.Sprintf("pod-%05d", i),
			Node:   fmt.Sprintf("node-%02d", i%100),
			Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%policies)},
			IPs:    []string{fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)},
		})
		return err
	})
	if err != nil {
		b.Fatalf("create pods: %v", err)
	}
	b.Logf("created %d policies and %d pods in %s", policies, n, time.Since(t0).Round(time.Second))

	for b.Loop() {
		agents := startAgents(b, env, 1) // node-1: no pod of the cluster is local
		start := time.Now()              // the agent process started just now
		a := agents[0]
		hc := &http.Client{Timeout: 2 * time.Second}
		for {
			resp, err := hc.Get("http://" + a.admin + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if a.cmd.ProcessState != nil || time.Since(start) > 5*time.Minute {
				b.Fatalf("agent not ready after %s", time.Since(start).Round(time.Second))
			}
			time.Sleep(20 * time.Millisecond) // readiness is only observable by polling
		}
		ready := time.Since(start)
		rss, cpu, err := procStat(a.cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(ready.Seconds(), "s-to-ready")
		b.ReportMetric(float64(rss)/(1<<20), "MiB-rss-ready")
		b.ReportMetric(cpu.Seconds(), "cpu-s-to-ready")
		time.Sleep(time.Minute) // steady state: what an idle cluster costs
		rss2, cpu2, err := procStat(a.cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(rss2)/(1<<20), "MiB-rss-1min")
		b.ReportMetric((cpu2-cpu).Seconds()/60*1000, "mcpu-idle")
	}
}
