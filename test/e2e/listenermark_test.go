package e2e

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/bpf/podnet"
)

// TestAppOnListenerPortGetsNothing runs the agent while orders-api's app
// listens on the agent's listener port for every address, the pod's
// included (15006 is also Istio's inbound port). The agent cannot open its
// listener, so capture is attached without one: it finds the app's socket
// on that port and, since the socket is not the agent's (no listener
// mark), drops new connections to the captured port instead of handing
// them to the app unchecked. Once the app lets go of the port, a retry
// enrols the pod and requests are verified.
func TestAppOnListenerPortGetsNothing(t *testing.T) {
	e := newEnv(t, demoPods(e2eApp))
	e.setPolicies(readers("Enforce", "Orders.Read"))
	orders := e.pods["orders-api"]
	tok := mintTokens(t).read

	// 15006: the agent's default listener port (config.listenerPort); ""
	// is every address, IPv4 and IPv6.
	squat, err := podnet.ListenTCP(context.Background(), orders.NetnsPath, ":15006")
	if err != nil {
		t.Fatalf("listen on the listener port in orders-api: %v", err)
	}
	t.Cleanup(func() { squat.Close() })
	e.agent.Start()

	const failed = "portcullis_agent_enrol_failed_pods"
	if got := e.agent.metricReaches(1, failed); got != 1 {
		t.Errorf("%s while the app holds the port: got %v, want 1", failed, got)
	}
	const events = "portcullis_datapath_events_total"
	refusedBefore := e.agent.metric(events, `event="capture_foreign_listener"`)
	before := e.stats(orders)
	d := net.Dialer{Timeout: 2 * time.Second}
	if c, err := d.Dial("tcp", orders.Addr(appPort).String()); err == nil {
		c.Close()
		t.Errorf("a connection to the captured port was established while the app holds the listener port, want it dropped")
	}
	if after := e.stats(orders); after.Conns != before.Conns {
		t.Errorf("the app accepted %d connections on its port, want none", after.Conns-before.Conns)
	}
	// Any connection handed to the app's socket is queued by now; a
	// deadline in the past would not look at the queue.
	if err := squat.(*net.TCPListener).SetDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if c, err := squat.Accept(); err == nil {
		c.Close()
		t.Errorf("the app's socket on the listener port accepted a connection from %s to %s, want none", c.RemoteAddr(), c.LocalAddr())
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("accept on the app's socket: %v", err)
	}
	if got := e.agent.metric(events, `event="capture_foreign_listener"`); got <= refusedBefore {
		t.Errorf(`%s{event="capture_foreign_listener"}: got %v, want more than %v`, events, got, refusedBefore)
	}

	squat.Close()
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(waitTimeout)
	for {
		resp, _, err := tryDo(c, http.MethodGet, orders.URL(appPort, "/orders/1"), tok, nil)
		if err == nil && resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no 200 with a token within %v of the port being freed (last: %v, %v)", waitTimeout, resp, err)
		}
		time.Sleep(50 * time.Millisecond) // the enforcer's retry backoff, seen only through requests
	}
	if resp, _ := do(t, c, http.MethodGet, orders.URL(appPort, "/orders/1"), "", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("without a token got %d, want 401", resp.StatusCode)
	}
}
