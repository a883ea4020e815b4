package kubee2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
)

const (
	// frontendClient is the frontend ServiceAccount's Workload ID.
	frontendClient = "aaaaaaaa-0000-4000-8000-00000000f00d"
	// otherClient is an application that is not the frontend.
	otherClient = "bbbbbbbb-0000-4000-8000-00000000beef"
)

// policies are the shop's Issuer and AccessPolicy; readRole is the role
// GET /orders/* requires (the propagation rounds flip it).
func policies(readRole string) string {
	return fmt.Sprintf(`apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: entra, namespace: shop}
spec:
  azureAD:
    tenantID: 72f988bf-0000-4000-8000-000000000001
    authorityHost: {{IDP}}
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
      paths: ["/orders/*"]
    when:
      issuers: [{name: entra}]
      roles: {anyOf: [%s]}
  - to:
      ports: [8080]
      methods: [POST]
      paths: ["/orders"]
    when:
      issuers: [{name: entra}]
      roles: {anyOf: [Orders.Write]}
      tokenBoundToSource: true
  - from:
      workloads: [shop/frontend, shop/batch]
    to:
      ports: [8080]
      methods: [GET]
      paths: ["/whoami"]
`, readRole)
}

// TestMultiNode runs three agents as nodes node-a, node-b and node-c of one
// cluster (one real API server) and checks, with traffic between pods on one
// bridge: attribution of same-node callers by the eBPF socket record and of
// cross-node callers by the IP cache, tokenBoundToSource with the Workload
// ID annotation, policy propagation to every node, an agent restart that
// keeps the gate closed and re-syncs from the API, and a pod deleted through
// the API leaving nothing enrolled.
func TestMultiNode(t *testing.T) {
	c := newCluster(t)
	c.serviceAccount("frontend", frontendClient)
	c.serviceAccount("batch", "")
	c.serviceAccount("attacker", "")
	c.serviceAccount("orders", "")
	c.apply(policies("Orders.Read"))

	orders := map[string]string{"node-a": "orders-a", "node-b": "orders-b", "node-c": "orders-c"}
	for node, name := range orders {
		c.addPod(podSpec{Name: name, Node: node, ServiceAccount: "orders", Labels: map[string]string{"app": "orders-api"}, Server: true})
	}
	frontend := c.addPod(podSpec{Name: "frontend", Node: "node-a", ServiceAccount: "frontend", Labels: map[string]string{"app": "frontend"}})
	attacker := c.addPod(podSpec{Name: "attacker", Node: "node-a", ServiceAccount: "attacker", Labels: map[string]string{"app": "attacker"}})
	// batch's Pod status claims an address that is not its own: the IP
	// cache cannot attribute its calls; only the socket record can.
	batch := c.addPod(podSpec{Name: "batch", Node: "node-a", ServiceAccount: "batch", Labels: map[string]string{"app": "batch"},
		StatusIP: netip.MustParseAddr("192.0.2.77")})
	ordersA, ordersB, ordersC := c.pods["shop/orders-a"], c.pods["shop/orders-b"], c.pods["shop/orders-c"]

	start := time.Now()
	for _, node := range []string{"node-a", "node-b", "node-c"} {
		c.startAgent(node)
	}
	t.Logf("three agents ready %v after start", time.Since(start).Round(time.Millisecond))
	for node, name := range orders {
		waitFor(t, fmt.Sprintf("%s enrols shop/%s", node, name), func() (bool, string) {
			got := c.agents[node].enrolled()
			return slices.Equal(got, []string{"shop/" + name}), fmt.Sprintf("enrolled %q", got)
		})
	}

	// Each agent attaches capture to its own node's selected pods only.
	for _, p := range []*kpod{ordersA, ordersB, ordersC, frontend, attacker, batch} {
		want := 0
		if p.spec.Labels["app"] == "orders-api" {
			want = 1
		}
		if got := c.tcxPrograms(p); len(got) != want {
			t.Errorf("%s: %d programs at TCX ingress (%v), want %d", p.spec.Name, len(got), got, want)
		}
	}

	t.Run("attribution", func(t *testing.T) {
		tests := []struct {
			name     string
			from     *kpod
			to       *kpod
			status   int
			source   string
			viaProof string
		}{
			// Same node: the caller's cgroup is registered with node-a's
			// datapath, the socket record names it.
			{"same node frontend", frontend, ordersA, 200, spiffeID("frontend"), "socket record"},
			// batch's status address is wrong: only the socket record
			// can know it.
			{"same node batch", batch, ordersA, 200, spiffeID("batch"), "socket record"},
			// Cross node: node-b's datapath has no record of node-a's
			// cgroups; the IP cache built from the Pods says who calls.
			{"cross node frontend", frontend, ordersB, 200, spiffeID("frontend"), "IP cache"},
			{"cross node frontend to c", frontend, ordersC, 200, spiffeID("frontend"), "IP cache"},
			// ... and when the Pod's address is wrong, node-b cannot
			// attribute the call: anonymous, refused.
			{"cross node batch", batch, ordersB, 403, "", "IP cache (miss)"},
			{"cross node attacker", attacker, ordersB, 403, "", "IP cache"},
			{"same node attacker", attacker, ordersA, 403, "", "socket record"},
		}
		for _, tt := range tests {
			got := c.call(tt.from, "GET", tt.to.url("/whoami"), "")
			if got.Status != tt.status || got.Echo.Source != tt.source {
				t.Errorf("%s (%s): GET %s/whoami from %s: got %d %q (%s), want %d %q",
					tt.name, tt.viaProof, tt.to.spec.Name, tt.from.spec.Name, got.Status, got.Echo.Source, got.Err, tt.status, tt.source)
			}
		}
		// IPv6: the IP cache holds every address of the Pod's status.
		for _, to := range []*kpod{ordersA, ordersB} {
			if got := c.call(frontend, "GET", to.url6("/whoami"), ""); got.Status != 200 || got.Echo.Source != spiffeID("frontend") {
				t.Errorf("GET [%s]/whoami from frontend: got %d %q (%s), want 200 %q", to.net.IPv6, got.Status, got.Echo.Source, got.Err, spiffeID("frontend"))
			}
		}
	})

	t.Run("tokenBoundToSource", func(t *testing.T) {
		own := c.mint(frontendClient, "Orders.Write")
		other := c.mint(otherClient, "Orders.Write")
		tests := []struct {
			name   string
			from   *kpod
			to     *kpod
			token  string
			status int
		}{
			{"frontend's own token, same node", frontend, ordersA, own, 200},
			{"frontend's own token, cross node", frontend, ordersB, own, 200},
			{"frontend with another app's token", frontend, ordersB, other, 403},
			{"frontend's token replayed by attacker, cross node", attacker, ordersB, own, 403},
			{"frontend's token replayed by attacker, same node", attacker, ordersA, own, 403},
			{"frontend's token replayed by batch (no client ID)", batch, ordersA, own, 403},
		}
		for _, tt := range tests {
			got := c.call(tt.from, "POST", tt.to.url("/orders"), tt.token)
			if got.Status != tt.status {
				t.Errorf("%s: got %d (%s), want %d", tt.name, got.Status, got.Err, tt.status)
			}
		}
		// The annotation is read live: removing it unbinds the token.
		sa, err := c.client.CoreV1().ServiceAccounts("shop").Get(c.ctx(), "frontend", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		delete(sa.Annotations, clientIDAnnotation)
		if _, err := c.client.CoreV1().ServiceAccounts("shop").Update(c.ctx(), sa, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, to := range []*kpod{ordersA, ordersB} {
			waitFor(t, "POST to "+to.spec.Name+" refused without the annotation", func() (bool, string) {
				got := c.call(frontend, "POST", to.url("/orders"), own)
				return got.Status == 403, fmt.Sprintf("status %d", got.Status)
			})
		}
		sa.Annotations = map[string]string{clientIDAnnotation: frontendClient}
		sa.ResourceVersion = ""
		if _, err := c.client.CoreV1().ServiceAccounts("shop").Update(c.ctx(), sa, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, to := range []*kpod{ordersA, ordersB} {
			waitFor(t, "POST to "+to.spec.Name+" allowed again", func() (bool, string) {
				got := c.call(frontend, "POST", to.url("/orders"), own)
				return got.Status == 200, fmt.Sprintf("status %d", got.Status)
			})
		}
	})

	t.Run("propagation", func(t *testing.T) {
		testPropagation(t, c, []*kpod{ordersA, ordersB, ordersC})
	})

	t.Run("restart", func(t *testing.T) {
		a := c.agents["node-a"]
		reader := c.mint(otherClient, "Orders.Read")
		hc := &http.Client{Timeout: 5 * time.Second}
		if got := status(hc, ordersA.url("/orders/1"), reader); got != 200 {
			t.Fatalf("before restart: got %d, want 200", got)
		}
		a.kill()
		// Gate closed while no agent runs: connections to the captured
		// port do not reach the app; uncaptured pods are unaffected.
		if err := dialOnce(ordersA, time.Second); err == nil {
			t.Errorf("node-a down: connect to %s:%d succeeded, want refused or dropped", ordersA.spec.Name, appPort)
		}
		// The cluster changes while node-a's agent is down: the read
		// role flips. The restarted agent must enforce the new set.
		c.apply(policies("Orders.Audit"))
		if err := dialOnce(ordersA, time.Second); err == nil {
			t.Errorf("node-a down after policy change: connect succeeded, want refused or dropped")
		}
		a.start()
		if got := status(hc, ordersA.url("/orders/1"), reader); got != 403 {
			t.Errorf("after restart with the new policy: got %d, want 403", got)
		}
		if got := status(hc, ordersA.url("/orders/1"), ""); got != 401 {
			t.Errorf("after restart without token: got %d, want 401", got)
		}
		c.apply(policies("Orders.Read"))
		waitFor(t, "node-a allows readers again", func() (bool, string) {
			got := status(hc, ordersA.url("/orders/1"), reader)
			return got == 200, fmt.Sprintf("status %d", got)
		})
		if got := c.call(frontend, "GET", ordersA.url("/whoami"), ""); got.Status != 200 || got.Echo.Source != spiffeID("frontend") {
			t.Errorf("after restart, frontend → orders-a: got %d %q, want 200 %q", got.Status, got.Echo.Source, spiffeID("frontend"))
		}
		if diff := cmp.Diff([]string{"shop/orders-a"}, a.enrolled()); diff != "" {
			t.Errorf("node-a enrolment after restart (-want +got):\n%s", diff)
		}
		if got := c.tcxPrograms(ordersA); len(got) != 1 {
			t.Errorf("orders-a after restart: %d programs at TCX ingress (%v), want 1 (re-adopted, not stacked)", len(got), got)
		}
	})

	t.Run("pod deleted", func(t *testing.T) {
		a := c.agents["node-c"]
		if n, _ := a.metric("portcullis_agent_enrolled_pods"); n != 1 {
			t.Fatalf("node-c enrolled pods before delete: got %v, want 1", n)
		}
		// orders-c as a caller: node-b knows it through the IP cache.
		reader := c.mint(otherClient, "Orders.Read")
		if got := c.call(ordersC, "GET", ordersB.url("/orders/1"), reader); got.Status != 200 || got.Echo.Source != spiffeID("orders") {
			t.Fatalf("orders-c → orders-b before delete: got %d %q (%s), want 200 %q", got.Status, got.Echo.Source, got.Err, spiffeID("orders"))
		}
		c.deletePod(ordersC)
		waitFor(t, "node-c unenrols orders-c", func() (bool, string) {
			n, _ := a.metric("portcullis_agent_enrolled_pods")
			m := a.bpfMaps()
			return n == 0 && len(m.GetEnrolled()) == 0, fmt.Sprintf("metric %v, enrolment map %v", n, m.GetEnrolled())
		})
		// Nothing of the pod stays in the datapath: its port is no
		// longer captured (the app answers directly, no verifier
		// header), and no socket record names its identity.
		hc := &http.Client{Timeout: 5 * time.Second}
		resp, err := hc.Get(ordersC.url("/orders/1"))
		if err != nil {
			t.Fatalf("GET orders-c after unenrolment: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET orders-c without token after unenrolment: got %d, want 200 (uncaptured)", resp.StatusCode)
		}
		if got := c.tcxPrograms(ordersC); len(got) != 0 {
			t.Errorf("orders-c after deletion: programs %v at TCX ingress, want none", got)
		}
		for _, s := range a.bpfMaps().GetSockets() {
			if strings.Contains(s.GetIdentity(), "orders") {
				t.Errorf("node-c still has a socket record of %s", s.GetIdentity())
			}
		}
		// The other nodes forget its address: its calls are anonymous now.
		waitFor(t, "node-b forgets orders-c's address", func() (bool, string) {
			got := c.call(ordersC, "GET", ordersB.url("/orders/1"), reader)
			return got.Status == 200 && got.Echo.Source == "anonymous", fmt.Sprintf("%d %q %s", got.Status, got.Echo.Source, got.Err)
		})
		for _, node := range []string{"node-a", "node-b"} {
			if diff := cmp.Diff([]string{"shop/orders-" + node[len("node-"):]}, c.agents[node].enrolled()); diff != "" {
				t.Errorf("%s enrolment changed (-want +got):\n%s", node, diff)
			}
		}
	})

	t.Run("namespace enforce label", func(t *testing.T) {
		// portcullis.dev/enforce: enabled on the namespace enrols every pod
		// of it, selected by a policy or not; removing it releases them.
		// Never captured, even then: a host-network pod selected by the
		// policy, and the agent's own pod (config podName) in an enforced
		// namespace.
		c.addPod(podSpec{Name: "hostnet", Node: "node-a", ServiceAccount: "orders", Labels: map[string]string{"app": "orders-api"},
			HostNetwork: true, StatusIP: netip.MustParseAddr("192.0.2.10")})
		c.addPod(podSpec{Namespace: "portcullis", Name: "portcullis-agent-node-a", Node: "node-a", ServiceAccount: "portcullis-agent"})
		label := func(v any) {
			t.Helper()
			patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{"portcullis.dev/enforce": v}}})
			if err != nil {
				t.Fatal(err)
			}
			for _, ns := range []string{"shop", "portcullis"} {
				if _, err := c.client.CoreV1().Namespaces().Patch(c.ctx(), ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
					t.Fatal(err)
				}
			}
		}
		enrolledOn := func(node string, want ...string) {
			t.Helper()
			waitFor(t, fmt.Sprintf("%s enrols %q", node, want), func() (bool, string) {
				got := c.agents[node].enrolled()
				slices.Sort(got)
				return slices.Equal(got, want), fmt.Sprintf("enrolled %q", got)
			})
		}
		label("enabled")
		enrolledOn("node-a", "shop/attacker", "shop/batch", "shop/frontend", "shop/orders-a")
		enrolledOn("node-b", "shop/orders-b")
		waitFor(t, "node-a reports the excluded pods", func() (bool, string) {
			got := c.agents["node-a"].attachStates()
			return got["shop/hostnet"] == "excluded: host_network" && got["portcullis/portcullis-agent-node-a"] == "excluded: self",
				fmt.Sprintf("workloads %v", got)
		})
		if got := c.tcxPrograms(frontend); len(got) != 1 {
			t.Errorf("frontend in an enforced namespace: %d programs at TCX ingress, want 1", len(got))
		}
		// Enrolled callers still call out, attributed as before.
		if got := c.call(frontend, "GET", ordersB.url("/whoami"), ""); got.Status != 200 || got.Echo.Source != spiffeID("frontend") {
			t.Errorf("enrolled frontend → orders-b: got %d %q (%s), want 200 %q", got.Status, got.Echo.Source, got.Err, spiffeID("frontend"))
		}
		label(nil)
		enrolledOn("node-a", "shop/orders-a")
		if got := c.tcxPrograms(frontend); len(got) != 0 {
			t.Errorf("frontend after the label is removed: programs %v at TCX ingress, want none", got)
		}
	})
}

// testPropagation flips the role GET /orders/* requires, 20 times, with
// kubectl apply, while every node is probed by its own keep-alive client
// (in parallel, from before kubectl starts). For each node it records the
// first request answered with the new decision and reports that time
// measured from kubectl apply returning, and from the test's own watch of
// the AccessPolicy seeing the change (≈ the API server committing it:
// kubectl itself takes 0.3–2 s on a busy 2-core machine, and the agents'
// watches often deliver before kubectl has exited).
func testPropagation(t *testing.T, c *cluster, targets []*kpod) {
	const rounds = 20
	reader := c.mint(otherClient, "Orders.Read")
	clients := make([]*http.Client, len(targets))
	for i := range clients {
		clients[i] = &http.Client{Timeout: 5 * time.Second}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gvr := schema.GroupVersionResource{Group: "portcullis.dev", Version: "v1alpha1", Resource: "accesspolicies"}
	w, err := dynamic.NewForConfigOrDie(c.env.Config()).Resource(gvr).Namespace("shop").Watch(ctx,
		metav1.ListOptions{FieldSelector: "metadata.name=orders-api", ResourceVersion: "0"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	changed := make(chan time.Time, rounds+10)
	go func() {
		for ev := range w.ResultChan() {
			if ev.Type == watch.Modified {
				changed <- time.Now()
			}
		}
	}()
	// ResourceVersion "0" replays the current object as Added first:
	// nothing to drain.

	var fromReturn, fromWatch, everyReturn, everyWatch []time.Duration
	early := 0 // node enforcing before kubectl apply had returned
	for r := range rounds {
		role, want := "Orders.Audit", 403
		if r%2 == 1 {
			role, want = "Orders.Read", 200
		}
		enforced := make([]time.Time, len(targets))
		errs := make([]error, len(targets))
		t0 := time.Now()
		var wg sync.WaitGroup
		for i, p := range targets {
			wg.Go(func() {
				for {
					got := status(clients[i], p.url("/orders/1"), reader)
					if got == want {
						enforced[i] = time.Now()
						return
					}
					if time.Since(t0) > 15*time.Second {
						errs[i] = fmt.Errorf("round %d: %s still answers %d 15s after kubectl apply started, want %d", r, p.spec.Name, got, want)
						return
					}
					time.Sleep(time.Millisecond) // probe interval; the decision has no push signal
				}
			})
		}
		c.apply(policies(role))
		t1 := time.Now()
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		var tw time.Time
		select {
		case tw = <-changed:
		case <-time.After(waitTimeout):
			t.Fatalf("round %d: the test's watch saw no change", r)
		}
		var slowR, slowW time.Duration
		for _, e := range enforced {
			if e.Before(t1) {
				early++
			}
			dr, dw := max(e.Sub(t1), 0), max(e.Sub(tw), 0)
			fromReturn, fromWatch = append(fromReturn, dr), append(fromWatch, dw)
			slowR, slowW = max(slowR, dr), max(slowW, dw)
		}
		everyReturn, everyWatch = append(everyReturn, slowR), append(everyWatch, slowW)
	}
	t.Logf("policy propagation, %d kubectl applies × %d nodes, to the first request with the new decision (negative clamped to 0):", rounds, len(targets))
	t.Logf("  from kubectl apply returning: per node p50 %v p99 %v; every node p50 %v p99 %v (%d of %d enforced before kubectl returned)",
		pct(fromReturn, 50), pct(fromReturn, 99), pct(everyReturn, 50), pct(everyReturn, 99), early, len(fromReturn))
	t.Logf("  from the change reaching a watch: per node p50 %v p99 %v; every node p50 %v p99 %v max %v",
		pct(fromWatch, 50), pct(fromWatch, 99), pct(everyWatch, 50), pct(everyWatch, 99), pct(everyWatch, 100))
	if m := slices.Max(everyReturn); m > time.Second {
		t.Errorf("slowest propagation to every node after kubectl returned: %v, want ≤ 1s", m)
	}
	if m := slices.Max(everyWatch); m > time.Second {
		t.Errorf("slowest propagation to every node after the change was watched: %v, want ≤ 1s", m)
	}
}

// pct returns the p-th percentile of d: the element at rank
// (len-1)·p/100 of the sorted samples (so with 20 samples p99 is the
// second largest), rounded to 0.1 ms.
func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)*p/100].Round(100 * time.Microsecond)
}

// status GETs url from the host with a bearer token (none when empty) and
// returns the status, 0 on a transport error.
func status(hc *http.Client, url, token string) int {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return 0
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// dialOnce opens (and closes) a TCP connection to p's app port from the
// host, within timeout.
func dialOnce(p *kpod, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(p.net.IPv4, appPort).String())
	if err != nil {
		return err
	}
	return conn.Close()
}

// waitFor polls cond until it holds, failing the test after waitTimeout
// with cond's last explanation. The agents offer no push signal for these
// states.
func waitFor(t testing.TB, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v: %s", what, waitTimeout, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
