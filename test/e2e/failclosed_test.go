package e2e

import (
	"context"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/bpf/podnet"
)

// TestEnrolFailureFailsClosed runs the agent while orders-api's app holds
// the agent's listener port (on loopback), so the agent cannot listen in
// the pod: the captured port takes no connection instead of reaching the
// app, the metric shows the failure, and once the port is free a retry
// enrols the pod. Then the agent is killed and restarted with the port
// taken again: the capture the first agent left stays closed (it used to be
// removed when the pod could not be enrolled again), until the port is
// free.
func TestEnrolFailureFailsClosed(t *testing.T) {
	e := newEnv(t, demoPods(e2eApp))
	e.setPolicies(readers("Enforce", "Orders.Read"))
	e.agent.Teardown = false // pins outlive the agent, as in the DaemonSet
	orders := e.pods["orders-api"]
	tok := mintTokens(t).read

	squat := func() net.Listener {
		t.Helper()
		// 15006: the agent's default listener port (config.listenerPort).
		ln, err := podnet.ListenTCP(context.Background(), orders.NetnsPath, "127.0.0.1:15006")
		if err != nil {
			t.Fatalf("take the listener port in orders-api: %v", err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
	// closed: new connections to the captured port are not established
	// and the app sees none.
	closed := func(step string) {
		t.Helper()
		before := e.stats(orders)
		d := net.Dialer{Timeout: 2 * time.Second}
		if c, err := d.Dial("tcp", orders.Addr(appPort).String()); err == nil {
			c.Close()
			t.Errorf("%s: a connection to the captured port was established", step)
		}
		if after := e.stats(orders); after.Conns != before.Conns {
			t.Errorf("%s: the app accepted %d connections, want none", step, after.Conns-before.Conns)
		}
	}
	// serves waits (bounded) for a retry to enrol the pod: a request with
	// the token is allowed, one without is refused by the verifier.
	serves := func(step string) {
		t.Helper()
		c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		deadline := time.Now().Add(waitTimeout)
		for {
			resp, _, err := tryDo(c, http.MethodGet, orders.URL(appPort, "/orders/1"), tok, nil)
			if err == nil && resp.StatusCode == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no 200 with a token within %v (last: %v, %v)", step, waitTimeout, resp, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		resp, _ := do(t, c, http.MethodGet, orders.URL(appPort, "/orders/1"), "", nil)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: without a token got %d, want 401", step, resp.StatusCode)
		}
	}
	const failed = "portcullis_agent_enrol_failed_pods"

	ln := squat()
	e.agent.Start()
	closed("first start, listener port taken")
	if got := e.agent.metric(failed); got != 1 {
		t.Errorf("%s while the port is taken: got %v, want 1", failed, got)
	}
	ln.Close()
	serves("first start, port freed")
	if got := e.agent.metricReaches(0, failed); got != 0 {
		t.Errorf("%s after the retry: got %v, want 0", failed, got)
	}

	e.agent.Kill()
	closed("agent killed")
	ln = squat()
	e.agent.Start()
	closed("restart, listener port taken")
	ln.Close()
	serves("restart, port freed")

	// Each start logged its failure at ERROR once, whatever the retries.
	e.agent.Stop()
	b, err := os.ReadFile(e.agent.logPath)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(string(b), `"level":"ERROR","msg":"enrol workload"`); got != 2 {
		t.Errorf("ERROR lines for failing enrolments over two starts: got %d, want 2", got)
	}
}
