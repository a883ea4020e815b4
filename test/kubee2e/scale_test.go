package kubee2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/portcullis-mesh/portcullis/test/kubeenv"
)

// Scale of BenchmarkAgentScale.
const (
	scaleNamespaces = 50
	scaleNodes      = 100 // nodes the cluster's pods are spread over
	scalePolicies   = 1000
	scaleLocalPods  = 10 // pods with real processes on the agent's node
	scaleIdle       = 30 * time.Second
	scaleChurn      = 30 * time.Second
	scaleChurnRate  = 100 // pod updates per second during the churn phase
)

// BenchmarkAgentScale runs one agent in Kubernetes mode against a real API
// server holding PORTCULLIS_SCALE_PODS pods (10,000 when unset) spread over
// 100 other nodes and 50 namespaces, 1,000 AccessPolicies, and
// scaleLocalPods pods of its own node with real processes, selected by a
// policy. Reported: the time from the agent process starting to /readyz
// (policy set compiled, every informer synced, the node's pods enrolled),
// its memory (VmRSS, VmHWM) and CPU (utime+stime) then, after an idle
// period, and during a period of pod churn elsewhere in the cluster (label
// patches at scaleChurnRate/s, each one delivered to the agent's
// cluster-wide pod watch). Creating the objects takes most of the ~3–4 min.
//
//	go test -count=1 -run '^$' -bench AgentScale -benchtime 1x -timeout 20m ./test/kubee2e/
func BenchmarkAgentScale(b *testing.B) {
	pods := 10000
	if s := os.Getenv("PORTCULLIS_SCALE_PODS"); s != "" {
		var err error
		if pods, err = strconv.Atoi(s); err != nil || pods <= 0 {
			b.Fatalf("PORTCULLIS_SCALE_PODS=%q: want a positive integer", s)
		}
	}
	c := newCluster(b)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	dyn := dynamic.NewForConfigOrDie(c.env.Config())
	gv := schema.GroupVersion{Group: "portcullis.dev", Version: "v1alpha1"}

	t0 := time.Now()
	for i := range scaleNamespaces {
		ns := fmt.Sprintf("ns-%02d", i)
		if _, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app",
			Annotations: map[string]string{clientIDAnnotation: fmt.Sprintf("cccccccc-0000-4000-8000-%012d", i)}}}
		if _, err := c.client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		is := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": gv.String(), "kind": "Issuer",
			"metadata": map[string]any{"name": "entra", "namespace": ns},
			"spec": map[string]any{"azureAD": map[string]any{
				"tenantID": "72f988bf-0000-4000-8000-000000000001", "authorityHost": c.idpURL,
				"audiences": []any{"api://orders"}}},
		}}
		if _, err := dyn.Resource(gv.WithResource("issuers")).Namespace(ns).Create(ctx, is, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	err := parallel(scalePolicies, func(i int) error {
		ns := fmt.Sprintf("ns-%02d", i%scaleNamespaces)
		p := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": gv.String(), "kind": "AccessPolicy",
			"metadata": map[string]any{"name": fmt.Sprintf("policy-%04d", i), "namespace": ns},
			"spec": map[string]any{
				"selector": map[string]any{"matchLabels": map[string]any{"app": fmt.Sprintf("app-%d", i)}},
				"mode":     "Enforce", "action": "Allow",
				"rules": []any{map[string]any{
					"to":   map[string]any{"ports": []any{int64(8080)}, "methods": []any{"GET"}, "paths": []any{"/orders/*"}},
					"when": map[string]any{"issuers": []any{map[string]any{"name": "entra"}}, "roles": map[string]any{"anyOf": []any{"Orders.Read"}}},
				}},
			},
		}}
		_, err := dyn.Resource(gv.WithResource("accesspolicies")).Namespace(ns).Create(ctx, p, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		b.Fatalf("create policies: %v", err)
	}
	b.Logf("created %d namespaces, issuers, service accounts and %d policies in %v", scaleNamespaces, scalePolicies, time.Since(t0).Round(time.Second))
	t0 = time.Now()
	err = parallel(pods, func(i int) error {
		_, err := kubeenv.RunningPod(ctx, c.client, kubeenv.Pod{
			Namespace: fmt.Sprintf("ns-%02d", i%scaleNamespaces), Name: fmt.Sprintf("pod-%05d", i),
			Node: fmt.Sprintf("node-%03d", i%scaleNodes), ServiceAccount: "app",
			Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%scalePolicies)},
			IPs:    []string{fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)},
		})
		return err
	})
	if err != nil {
		b.Fatalf("create pods: %v", err)
	}
	b.Logf("created %d running pods in %v", pods, time.Since(t0).Round(time.Second))
	c.serviceAccount("orders", "")
	c.apply(policies("Orders.Read"))
	for i := range scaleLocalPods {
		c.addPod(podSpec{Name: fmt.Sprintf("local-%02d", i), Node: "node-scale", ServiceAccount: "orders", Labels: map[string]string{"app": "orders-api"}})
	}

	for b.Loop() {
		a := c.startAgent("node-scale")
		pid := a.cmd.Process.Pid
		waitFor(b, "every local pod enrolled", func() (bool, string) {
			n, _ := a.metric("portcullis_agent_enrolled_pods")
			return n == scaleLocalPods, fmt.Sprintf("%v enrolled", n)
		})
		ready := readProc(b, pid)
		b.ReportMetric(a.readyAfter.Seconds(), "s-to-ready")
		b.ReportMetric(ready.cpu.Seconds(), "cpu-s-to-ready")
		b.ReportMetric(ready.rssMiB(), "MiB-rss-ready")
		b.ReportMetric(ready.hwmMiB(), "MiB-hwm-ready")

		time.Sleep(scaleIdle) // the steady state being measured is time passing
		idle := readProc(b, pid)
		b.ReportMetric(idle.rssMiB(), "MiB-rss-idle")
		b.ReportMetric(float64((idle.cpu-ready.cpu).Milliseconds())/scaleIdle.Seconds(), "mcpu-idle")

		updates := churn(ctx, b, c, pods, scaleChurn)
		churned := readProc(b, pid)
		b.ReportMetric(float64(updates)/scaleChurn.Seconds(), "updates/s")
		b.ReportMetric(float64((churned.cpu-idle.cpu).Milliseconds())/scaleChurn.Seconds(), "mcpu-churn")
		b.ReportMetric(churned.rssMiB(), "MiB-rss-churn")
		b.ReportMetric(churned.hwmMiB(), "MiB-hwm-churn")
		a.stop()
		c.removePins(a)
	}
}

// churn patches a label of the cluster's pods, round robin, at
// scaleChurnRate per second for d, and returns how many patches succeeded.
func churn(ctx context.Context, b *testing.B, c *cluster, pods int, d time.Duration) int64 {
	var done atomic.Int64
	work := make(chan int)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for i := range work {
				patch := fmt.Appendf(nil, `{"metadata":{"labels":{"churn":"%d"}}}`, i)
				_, err := c.client.CoreV1().Pods(fmt.Sprintf("ns-%02d", i%pods%scaleNamespaces)).
					Patch(ctx, fmt.Sprintf("pod-%05d", i%pods), types.MergePatchType, patch, metav1.PatchOptions{})
				if err == nil {
					done.Add(1)
				}
			}
		})
	}
	tick := time.NewTicker(time.Second / scaleChurnRate)
	end := time.After(d)
loop:
	for i := 0; ; i++ {
		select {
		case <-tick.C:
			select {
			case work <- i:
			default: // the API server is behind: skip this tick
			}
		case <-end:
			break loop
		}
	}
	tick.Stop()
	close(work)
	wg.Wait()
	if done.Load() == 0 {
		b.Fatal("no pod update succeeded during churn")
	}
	return done.Load()
}

// procSample is a process's memory and CPU time.
type procSample struct {
	rss, hwm int64 // bytes
	cpu      time.Duration
}

func (s procSample) rssMiB() float64 { return float64(s.rss) / (1 << 20) }
func (s procSample) hwmMiB() float64 { return float64(s.hwm) / (1 << 20) }

// readProc reads VmRSS, VmHWM and utime+stime of pid.
func readProc(tb testing.TB, pid int) procSample {
	tb.Helper()
	var s procSample
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for l := range strings.SplitSeq(string(status), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			tb.Fatalf("%s of %d: %v", k, pid, err)
		}
		if k == "VmRSS" {
			s.rss = kb << 10
		} else {
			s.hwm = kb << 10
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // field 14, utime
	st, err2 := strconv.ParseInt(f[12], 10, 64) // field 15, stime
	if err1 != nil || err2 != nil {
		tb.Fatalf("stat of %d: %q", pid, stat)
	}
	const userHZ = 100 // USER_HZ on Linux
	s.cpu = time.Duration(ut+st) * time.Second / userHZ
	return s
}

// parallel runs fn(i) for i in [0, n) on 16 goroutines (the API server
// and etcd share the machine's cores) and returns the first error.
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
