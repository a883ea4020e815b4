package kube

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/identity/ipcache"
	"github.com/portcullis-mesh/portcullis/identity/kube/coreclient"
	"github.com/portcullis-mesh/portcullis/identity/procfs"
	"github.com/portcullis-mesh/portcullis/test/kubeenv"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// scalePods is the cluster size of BenchmarkInitialSync:
// $PORTCULLIS_SCALE_PODS, 10,000 when unset.
func scalePods(b *testing.B) int {
	if s := os.Getenv("PORTCULLIS_SCALE_PODS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			b.Fatalf("PORTCULLIS_SCALE_PODS=%q: want a positive integer", s)
		}
		return n
	}
	return 10000
}

// populate creates n running pods with addresses over 100 nodes (1% of
// them on "node-00"), in 50 namespaces with one service account each.
func populate(b *testing.B, client kubernetes.Interface, n int) {
	ctx := context.Background()
	for i := range 50 {
		ns := fmt.Sprintf("ns-%02d", i)
		if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"team": ns}}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app",
			Annotations: map[string]string{identity.ClientIDAnnotation: "11111111-2222-4333-8444-555555555555"}}}
		if _, err := client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	work := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 16 {
		wg.Go(func() {
			for i := range work {
				ns := fmt.Sprintf("ns-%02d", i%50)
				p := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pod-%05d", i),
						Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%200), "version": "v1"}},
					Spec: corev1.PodSpec{
						NodeName: fmt.Sprintf("node-%02d", i%100), ServiceAccountName: "app",
						Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
					},
				}
				created, err := client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
				if err == nil {
					ip := fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
					created.Status.Phase = corev1.PodRunning
					created.Status.PodIPs = []corev1.PodIP{{IP: ip}}
					_, err = client.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{})
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		b.Fatalf("populate: %v", firstErr)
	}
}

// allRunning locates every pod: /proc is not what is measured here.
type allRunning struct{}

func (allRunning) Find(uid string) (*procfs.Pod, error) {
	return &procfs.Pod{UID: uid, SandboxPID: 1, SandboxStartTime: 1, NetnsPath: "/proc/1/ns/net"}, nil
}
func (allRunning) Alive(int, uint64) bool { return true }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkInitialSync measures, against a real API server holding
// PORTCULLIS_SCALE_PODS pods, how long a Source takes from start to
// EventSynced (every informer listed, the node's pods reported, the IP cache
// full), the CPU it spends doing so, and the heap it holds afterwards. CPU
// and heap include the client's share only (the API server runs in its own
// process). The json and protobuf sub-benchmarks differ in the wire
// encoding the client asks for; the agent leaves rest.Config.ContentType
// empty, which for core/v1 means protobuf (as client-go's typed client).
//
//	go test -run '^$' -bench InitialSync -benchtime 3x ./identity/kube/
func BenchmarkInitialSync(b *testing.B) {
	n := scalePods(b)
	env := kubeenv.Start(b, kubeenv.Options{})
	start := time.Now()
	populate(b, kubernetes.NewForConfigOrDie(env.Config()), n)
	b.Logf("created %d pods in %s", n, time.Since(start).Round(time.Millisecond))

	for _, enc := range []struct{ name, contentType string }{
		{"json", "application/json"},
		{"protobuf", "application/vnd.kubernetes.protobuf"},
	} {
		b.Run(enc.name, func(b *testing.B) {
			cfg := env.Config()
			cfg.ContentType = enc.contentType
			client, err := coreclient.NewForConfig(cfg)
			if err != nil {
				b.Fatal(err)
			}
			benchSync(b, client, n)
		})
	}
}

func benchSync(b *testing.B, client rest.Interface, n int) {
	var syncTime, cpu time.Duration
	var heap uint64
	var local, cached int
	for b.Loop() {
		ipc := &ipcache.Cache{}
		before := heapInUse()
		cpu0 := cpuTime()
		t0 := time.Now()
		src, err := New(client, Config{NodeName: "node-00", IPCache: ipc, Locator: allRunning{}})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		synced := make(chan struct{})
		done := make(chan error, 1)
		local = 0
		go func() {
			done <- src.Run(ctx, func(ev identity.Event) {
				switch ev.Type {
				case identity.EventAdded:
					local++
				case identity.EventSynced:
					close(synced)
				}
			})
		}()
		select {
		case <-synced:
		case err := <-done:
			b.Fatalf("Run ended before sync: %v", err)
		case <-time.After(5 * time.Minute):
			b.Fatal("no sync within 5 minutes")
		}
		syncTime += time.Since(t0)
		cpu += cpuTime() - cpu0
		heap += heapInUse() - min(before, heapInUse())
		cached = ipc.Len()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		runtime.KeepAlive(src)
	}
	if local != n/100 || cached != n {
		b.Errorf("after sync: %d local workloads, %d ip cache entries; want %d and %d", local, cached, n/100, n)
	}
	iters := float64(b.N)
	b.ReportMetric(syncTime.Seconds()/iters, "s-to-sync")
	b.ReportMetric(cpu.Seconds()/iters, "cpu-s")
	b.ReportMetric(float64(heap)/iters/(1<<20), "MiB-heap")
	b.ReportMetric(float64(heap)/iters/float64(n), "B/pod")
}
