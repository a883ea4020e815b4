package policy

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/tokencheck"
	v1 "github.com/portcullis-mesh/portcullis/tokencheck/policy/apis/v1alpha1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// benchObjects builds a cluster of total rules, of which onWorkload apply
// to the pod app=orders in namespace shop, in policies of up to 10 rules.
// The other rules select other pods of shop (half) and pods of other
// namespaces (half). Rule k allows GET /api/v<k>/* from namespace web
// with role r<k> on port 8080.
func benchObjects(total, onWorkload int, withCEL bool) *Objects {
	objs := &Objects{}
	rule := func(k int) v1.Rule {
		r := v1.Rule{
			From: &v1.Source{Namespaces: []string{"web"}},
			To:   &v1.Destination{Ports: []int32{8080}, Methods: []string{"GET"}, Paths: []string{fmt.Sprintf("/api/v%d/*", k)}},
			When: &v1.Conditions{Roles: &v1.StringMatch{AnyOf: []string{fmt.Sprintf("r%d", k)}}},
		}
		if withCEL {
			r.When.Expression = "claims.department == 'sales'"
		}
		return r
	}
	addPolicies := func(ns, app string, n, first int) {
		for p := 0; p*10 < n; p++ {
			ap := &v1.AccessPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%d", app, p)}}
			ap.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}
			for k := p * 10; k < n && k < (p+1)*10; k++ {
				ap.Spec.Rules = append(ap.Spec.Rules, rule(first+k))
			}
			objs.AccessPolicies = append(objs.AccessPolicies, ap)
		}
	}
	addPolicies("shop", "orders", onWorkload, 0)
	rest := total - onWorkload
	for i := 0; i*10 < rest/2; i++ {
		addPolicies("shop", fmt.Sprintf("other%d", i), min(10, rest/2-i*10), 0)
	}
	for i := 0; i*10 < rest-rest/2; i++ {
		addPolicies(fmt.Sprintf("ns%d", i%100), fmt.Sprintf("app%d", i), min(10, rest-rest/2-i*10), 0)
	}
	// One Deny policy on the workload that does not match.
	deny := &v1.AccessPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "no-admin"}}
	deny.Spec.Action = v1.ActionDeny
	deny.Spec.Rules = []v1.Rule{{To: &v1.Destination{Paths: []string{"/admin/*"}}}}
	objs.AccessPolicies = append(objs.AccessPolicies, deny)
	return objs
}

// benchInput asks for rule onWorkload-1 (the last one) when allow, or for
// a path no rule has otherwise.
func benchInput(onWorkload int, allow bool) Input {
	in := req()
	in.Workload = Workload{Namespace: "shop", Labels: map[string]string{"app": "orders", "pod-template-hash": "5d8f7c9b4", "version": "v3"}}
	in.Claims = claims(func(c *tokencheck.Claims) { c.Roles = []string{fmt.Sprintf("r%d", onWorkload-1), "Orders.Read"} })
	in.Path = fmt.Sprintf("/api/v%d/orders/42", onWorkload-1)
	if !allow {
		in.Path = "/nope"
	}
	return in
}

var sink Decision

func BenchmarkEvaluate(b *testing.B) {
	for _, size := range []struct{ total, onWorkload int }{
		{10, 1}, {10, 10}, {1000, 1}, {1000, 10}, {1000, 100}, {10000, 1}, {10000, 10}, {10000, 100},
	} {
		set, err := Compile(benchObjects(size.total, size.onWorkload, false))
		if err != nil {
			b.Fatal(err)
		}
		for _, allow := range []bool{true, false} {
			path := "allow"
			if !allow {
				path = "deny"
			}
			in := benchInput(size.onWorkload, allow)
			b.Run(fmt.Sprintf("cluster=%d/workload=%d/%s", size.total, size.onWorkload, path), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					sink = Evaluate(set, in)
				}
				if sink.Allowed() != allow {
					b.Fatalf("decision %+v, want allowed=%v", sink, allow)
				}
			})
		}
	}
}

func BenchmarkEvaluateCEL(b *testing.B) {
	set, err := Compile(benchObjects(1000, 10, true))
	if err != nil {
		b.Fatal(err)
	}
	in := benchInput(10, true)
	b.ReportAllocs()
	for b.Loop() {
		sink = Evaluate(set, in)
	}
	if !sink.Allowed() {
		b.Fatalf("decision %+v, want allowed", sink)
	}
}

func BenchmarkCompile(b *testing.B) {
	for _, total := range []int{1000, 10000} {
		objs := benchObjects(total, 100, false)
		b.Run(fmt.Sprintf("rules=%d", total), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Compile(objs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestEvaluateAllowPathDoesNotAllocate holds the zero-allocation goal for
// rules without CEL.
func TestEvaluateAllowPathDoesNotAllocate(t *testing.T) {
	set, err := Compile(benchObjects(1000, 10, false))
	if err != nil {
		t.Fatal(err)
	}
	for _, allow := range []bool{true, false} {
		in := benchInput(10, allow)
		var d Decision
		allocs := testing.AllocsPerRun(100, func() { d = Evaluate(set, in) })
		if d.Allowed() != allow {
			t.Fatalf("decision %+v, want allowed=%v", d, allow)
		}
		if allocs != 0 {
			t.Errorf("Evaluate(allow=%v) allocates %.1f times per call, want 0", allow, allocs)
		}
	}
}

// BenchmarkCompileCEL compiles 1,000 rules, each with its own expression,
// with an empty expression cache (cold: first load) and a full one (warm:
// a live update that changed a few policies).
func BenchmarkCompileCEL(b *testing.B) {
	objs := benchObjects(1000, 100, false)
	n := 0
	for _, ap := range objs.AccessPolicies {
		for i := range ap.Spec.Rules {
			if ap.Spec.Rules[i].When != nil {
				ap.Spec.Rules[i].When.Expression = fmt.Sprintf("claims.department == 'sales%d' && request.method == 'GET'", n)
				n++
			}
		}
	}
	for _, cold := range []bool{true, false} {
		b.Run(fmt.Sprintf("cold=%v", cold), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if cold {
					exprCache.mu.Lock()
					exprCache.m = nil
					exprCache.mu.Unlock()
				}
				if _, err := Compile(objs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkEvaluateMedian reports the median latency at 1,000 rules in
// the cluster (10 on the workload), the figure the goal is stated in: the
// median of batches of 32 calls is robust to a busy machine, unlike the
// mean (ns/op here is per batch of 32).
func BenchmarkEvaluateMedian(b *testing.B) {
	set, err := Compile(benchObjects(1000, 10, false))
	if err != nil {
		b.Fatal(err)
	}
	for _, allow := range []bool{true, false} {
		in := benchInput(10, allow)
		b.Run(fmt.Sprintf("allow=%v", allow), func(b *testing.B) {
			const batch = 32
			var samples []time.Duration
			for b.Loop() {
				start := time.Now()
				for range batch {
					sink = Evaluate(set, in)
				}
				samples = append(samples, time.Since(start)/batch)
			}
			slices.Sort(samples)
			b.ReportMetric(float64(samples[len(samples)/2].Nanoseconds()), "p50-ns/eval")
			b.ReportMetric(float64(samples[len(samples)*99/100].Nanoseconds()), "p99-ns/eval")
		})
	}
}
