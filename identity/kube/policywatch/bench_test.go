package policywatch

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/test/kubeenv"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// BenchmarkPolicies measures, against a real API server holding 1,000
// AccessPolicies (and 20 Issuers), the time to the initial snapshot and the
// heap held, then the latency from an update request to the snapshot that
// includes it (p50/p99 over 200 sequential updates): the API server and
// watch share of policy propagation, before compilation.
//
//	go test -run '^$' -bench Policies -benchtime 1x ./identity/kube/policywatch/
func BenchmarkPolicies(b *testing.B) {
	const policies, issuers, updates = 1000, 20, 200
	root, err := kubeenv.RepoRoot()
	if err != nil {
		b.Fatal(err)
	}
	env := kubeenv.Start(b, kubeenv.Options{CRDDir: filepath.Join(root, "daemonset", "crds")})
	ctx := context.Background()
	cs := kubernetes.NewForConfigOrDie(env.Config())
	dyn := dynamic.NewForConfigOrDie(env.Config())
	for i := range issuers {
		ns := fmt.Sprintf("ns-%02d", i)
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		is := obj(b, issuerYAML)
		is.SetNamespace(ns)
		if _, err := dyn.Resource(IssuersGVR).Namespace(ns).Create(ctx, is, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	work := make(chan int)
	var wg sync.WaitGroup
	errs := make(chan error, policies)
	for range 16 {
		wg.Go(func() {
			for i := range work {
				p := obj(b, policyYAML)
				p.SetNamespace(fmt.Sprintf("ns-%02d", i%issuers))
				p.SetName(fmt.Sprintf("policy-%04d", i))
				if _, err := dyn.Resource(AccessPoliciesGVR).Namespace(p.GetNamespace()).Create(ctx, p, metav1.CreateOptions{}); err != nil {
					errs <- err
				}
			}
		})
	}
	for i := range policies {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatalf("create policies: %v", err)
	}

	var syncTime time.Duration
	var heap uint64
	var lat []time.Duration
	for b.Loop() {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.HeapAlloc
		w, err := New(dyn, Config{})
		if err != nil {
			b.Fatal(err)
		}
		snaps := make(chan Snapshot, 1)
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		t0 := time.Now()
		go func() { done <- w.Run(runCtx, func(s Snapshot) { snaps <- s }) }()
		s := <-snaps
		syncTime += time.Since(t0)
		if len(s.AccessPolicies) != policies || len(s.Issuers) != issuers {
			b.Fatalf("initial snapshot: %d policies, %d issuers; want %d, %d", len(s.AccessPolicies), len(s.Issuers), policies, issuers)
		}
		s = Snapshot{}
		runtime.GC()
		runtime.ReadMemStats(&ms)
		heap += ms.HeapAlloc - min(before, ms.HeapAlloc)

		for i := range updates {
			name := fmt.Sprintf("policy-%04d", i)
			ns := fmt.Sprintf("ns-%02d", i%issuers)
			p, err := dyn.Resource(AccessPoliciesGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				b.Fatal(err)
			}
			p.SetLabels(map[string]string{"round": fmt.Sprint(i)})
			start := time.Now()
			up, err := dyn.Resource(AccessPoliciesGVR).Namespace(ns).Update(ctx, p, metav1.UpdateOptions{})
			if err != nil {
				b.Fatal(err)
			}
			for seen := false; !seen; {
				select {
				case s := <-snaps:
					for _, o := range s.AccessPolicies {
						seen = seen || (o.GetName() == name && o.GetNamespace() == ns && o.GetResourceVersion() == up.GetResourceVersion())
					}
				case <-time.After(30 * time.Second):
					b.Fatalf("update %d not in a snapshot within 30s", i)
				}
			}
			lat = append(lat, time.Since(start))
		}
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	slices.Sort(lat)
	n := float64(b.N)
	b.ReportMetric(syncTime.Seconds()/n, "s-to-sync")
	b.ReportMetric(float64(heap)/n/(1<<20), "MiB-heap")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "ms-update-p50")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "ms-update-p99")
}
