package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// accelWorkloads installs the workloads file with localAcceleration as
// choice says; a pod absent from choice states none.
func accelWorkloads(e *env, choice map[string]bool) {
	e.t.Helper()
	e.installWorkloads(func(p *pod) string {
		if on, ok := choice[p.Spec.Name]; ok {
			return fmt.Sprintf("  localAcceleration: %t\n", on)
		}
		return ""
	})
}

// waitLogCount waits (bounded) until the agent's log contains s n times.
func waitLogCount(a *agent, s string, n int) {
	a.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		b, err := os.ReadFile(a.logPath)
		if err == nil && strings.Count(string(b), s) >= n {
			return
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("agent log has %q fewer than %d times after %v", s, n, waitTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLocalAccelerationPerWorkload: with the node's default off, a
// workload that opts in through the workloads file is accelerated and
// one that states nothing is not; swapping their choices at run time
// swaps acceleration for new connections, with no failed request across
// the swap.
func TestLocalAccelerationPerWorkload(t *testing.T) {
	const (
		paired    = `event="accel_paired"`
		updateErr = `event="accel_update_error"`
		events    = "portcullis_datapath_events_total"
		replaced  = `"msg":"replaced verifier"`
	)
	e := newEnv(t, []podSpec{
		{Name: "orders-api", ServiceAccount: "orders", App: e2eApp, Labels: map[string]string{"tier": "api"}},
		{Name: "billing-api", ServiceAccount: "billing", App: e2eApp, Labels: map[string]string{"tier": "api"}},
	})
	e.setPolicies(strings.Replace(readers("Enforce", "Orders.Read"), "matchLabels: {app: orders-api}", "matchLabels: {tier: api}", 1))
	accelWorkloads(e, map[string]bool{"orders-api": true})
	// The node's default stays off; the mark is the test's own.
	e.agent.Extra = fmt.Sprintf("localAcceleration:\n  mark: %d\n", accelMark(t))
	e.agent.Start()
	tok := mintTokens(t)
	orders, billing := e.pods["orders-api"], e.pods["billing-api"]

	// get makes n requests, each on a new connection.
	get := func(p *pod, n int) {
		t.Helper()
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		for i := range n {
			if resp, body := do(t, c, http.MethodGet, p.URL(appPort, fmt.Sprintf("/orders/%d", i)), tok.read, nil); resp.StatusCode != 200 {
				t.Fatalf("GET %s: got %d (%s), want 200", p.Spec.Name, resp.StatusCode, body)
			}
		}
	}

	get(billing, 20)
	if got := e.agent.metric(events, paired); got != 0 {
		t.Fatalf("after requests to billing-api (no choice, node default off): accel_paired = %v, want 0", got)
	}
	get(orders, 5)
	before := e.agent.metric(events, paired)
	if before == 0 {
		t.Fatalf("after requests to orders-api (localAcceleration: true): accel_paired = 0, want > 0")
	}

	// Load on both pods, on new and on kept-alive connections, while the
	// choices swap.
	var (
		stop = make(chan struct{})
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []string
		n    int
	)
	for _, p := range []*pod{orders, billing} {
		for _, keepAlive := range []bool{false, true} {
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: !keepAlive}}
			t.Cleanup(c.CloseIdleConnections)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					resp, body, err := tryDo(c, http.MethodGet, p.URL(appPort, "/orders/1"), tok.read, nil)
					mu.Lock()
					n++
					switch {
					case err != nil:
						errs = append(errs, fmt.Sprintf("%s (keep-alive %t): %v", p.Spec.Name, keepAlive, err))
					case resp.StatusCode != 200:
						errs = append(errs, fmt.Sprintf("%s (keep-alive %t): status %d: %s", p.Spec.Name, keepAlive, resp.StatusCode, body))
					}
					mu.Unlock()
				}
			}()
		}
	}
	stopLoad := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	t.Cleanup(stopLoad)

	accelWorkloads(e, map[string]bool{"orders-api": false, "billing-api": true})
	waitLogCount(e.agent, replaced, 2) // one verifier replaced per pod
	// billing-api's new verifier dials marked connections.
	deadline := time.Now().Add(waitTimeout)
	for e.agent.metric(events, paired) == before {
		if time.Now().After(deadline) {
			t.Fatalf("accel_paired still %v %v after billing-api opted in", before, waitTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopLoad()
	mu.Lock()
	t.Logf("%d requests under load across the swap", n)
	if len(errs) > 0 {
		t.Errorf("%d of %d requests failed across the swap; first: %s", len(errs), n, errs[0])
	}
	mu.Unlock()

	// orders-api's new verifier dials unmarked connections.
	after := e.agent.metric(events, paired)
	get(orders, 20)
	if got := e.agent.metric(events, paired); got != after {
		t.Errorf("after requests to orders-api (localAcceleration: false): accel_paired %v, want still %v", got, after)
	}
	if got := e.agent.metric(events, updateErr); got != 0 {
		t.Errorf("accel_update_error = %v, want 0", got)
	}

	// The debug CLI tells an operator which pods are accelerated.
	res := newCLI(t, e).run(t, "", "workloads", "-o", "json")
	var out struct {
		Workloads []struct {
			Name               string `json:"name"`
			AttachState        string `json:"attach_state"`
			LocallyAccelerated bool   `json:"locally_accelerated"`
		} `json:"workloads"`
	}
	if err := json.Unmarshal([]byte(res.Stdout), &out); res.Code != 0 || err != nil {
		t.Fatalf("portcullis workloads -o json: exit %d, %v: %s%s", res.Code, err, res.Stdout, res.Stderr)
	}
	got := map[string]string{}
	for _, w := range out.Workloads {
		got[w.Name] = fmt.Sprintf("%s/%t", w.AttachState, w.LocallyAccelerated)
	}
	want := map[string]string{"orders-api": "attached/false", "billing-api": "attached (locally accelerated)/true"}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("portcullis workloads: %s is %q, want %q", name, got[name], w)
		}
	}
}
