package e2e

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/bpf/podnet"
)

// TestCLIDegraded runs the agent while orders-api's app holds the agent's
// listener port, so the pod cannot be enrolled: `portcullis status` says
// the datapath is degraded and exits 4, `portcullis workloads` shows the
// pod's error and exits 4 too; once the port is free and a retry enrols
// the pod, both exit 0.
func TestCLIDegraded(t *testing.T) {
	e := newEnv(t, demoPods(e2eApp))
	e.setPolicies(e.demoPolicies())
	orders := e.pods["orders-api"]
	// 15006: the agent's default listener port (config.listenerPort).
	ln, err := podnet.ListenTCP(context.Background(), orders.NetnsPath, "127.0.0.1:15006")
	if err != nil {
		t.Fatalf("take the listener port in orders-api: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	e.agent.Start()
	c := newCLI(t, e)

	r := c.run(t, "", "status")
	if out := squash(r.Stdout); r.Code != 4 || !strings.Contains(out, "Ready: yes") ||
		!strings.Contains(out, "Datapath: degraded, 0/1 workloads attached") ||
		!strings.Contains(out, "1 workload failing to enrol: shop/orders-api") {
		t.Errorf("status with orders-api failing: exit %d, stdout\n%s\nwant exit 4, ready, degraded, naming shop/orders-api (stderr %q)", r.Code, r.Stdout, r.Stderr)
	}
	r = c.run(t, "", "workloads")
	if r.Code != 4 || !strings.Contains(r.Stdout, "error (capture closed)") || !strings.Contains(r.Stdout, "shop/orders-api: ") {
		t.Errorf("workloads with orders-api failing: exit %d, stdout\n%s\nwant exit 4 and orders-api's error (capture closed)", r.Code, r.Stdout)
	}
	for _, args := range [][]string{{"status", "-o", "json"}, {"workloads", "-o", "json"}} {
		if r := c.run(t, "", args...); r.Code != 4 {
			t.Errorf("%s with orders-api failing: exit %d, want 4", strings.Join(args, " "), r.Code)
		}
	}

	// The enforcer retries; once it enrols the pod, all is well again.
	ln.Close()
	deadline := time.Now().Add(waitTimeout)
	for {
		r = c.run(t, "", "status")
		if r.Code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %v after the port was freed: exit %d, stdout\n%s", waitTimeout, r.Code, r.Stdout)
		}
		time.Sleep(200 * time.Millisecond) // the retry's backoff; only the CLI shows it
	}
	if !strings.Contains(squash(r.Stdout), "Datapath: attached, 1/1 workloads attached") {
		t.Errorf("status once enrolled: got\n%s\nwant attached, 1/1", r.Stdout)
	}
	if r := c.run(t, "", "workloads"); r.Code != 0 {
		t.Errorf("workloads once enrolled: exit %d, want 0\n%s", r.Code, r.Stdout)
	}
}

// squash turns every run of spaces into one, so that checks do not depend
// on the table's column widths.
func squash(s string) string {
	return regexp.MustCompile(` +`).ReplaceAllString(s, " ")
}
