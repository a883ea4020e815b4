package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/portcullis-mesh/portcullis/bpf/cgroupv2"
	"github.com/portcullis-mesh/portcullis/bpf/podnet"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

// outcome is one request of a traffic loop.
type outcome struct {
	start, end time.Time
	status     int
	err        error
}

// TestPolicyChangeUnderTraffic rewrites the policy file while clients keep
// sending requests: the new decision must be in force within a second, and
// no request may fail meanwhile — neither the short ones nor a slow upload
// that started under the old policy and ends under the new one.
func TestPolicyChangeUnderTraffic(t *testing.T) {
	e, tok := protocolEnv(t)
	orders := e.pods["orders-api"]
	c := hostClient(t)

	// A slow upload, allowed under the first policy, still sending its
	// body when the policy changes.
	slowDone := make(chan outcome, 1)
	pr, pw := io.Pipe()
	go func() {
		start := time.Now()
		resp, body, err := tryDo(c, http.MethodPost, orders.URL(appPort, "/slow"), tok.read, pr)
		o := outcome{start: start, end: time.Now(), err: err}
		if resp != nil {
			o.status = resp.StatusCode
			if err == nil && !strings.Contains(body, `"bytes":1000`) {
				o.err = fmt.Errorf("app answered %s, want 1000 body bytes", body)
			}
		}
		slowDone <- o
	}()
	if _, err := pw.Write(make([]byte, 100)); err != nil {
		t.Fatalf("start slow body: %v", err)
	}
	// The decision for /slow is made (and recorded) once its header is in.
	deadline := time.Now().Add(5 * time.Second)
	for !slices.ContainsFunc(e.agent.auditLog(), func(r auditRecord) bool { return r.Path == "/slow" }) {
		if time.Now().After(deadline) {
			t.Fatal("no decision for the slow upload after 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Steady traffic: 4 keep-alive clients, bounded in time.
	stop := make(chan struct{})
	var (
		mu       sync.Mutex
		outcomes []outcome
		wg       sync.WaitGroup
	)
	warm := make(chan struct{}, 64)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				resp, _, err := tryDo(c, http.MethodGet, orders.URL(appPort, fmt.Sprintf("/orders/%d-%d", w, i)), tok.read, nil)
				o := outcome{start: start, end: time.Now(), err: err}
				if resp != nil {
					o.status = resp.StatusCode
				}
				mu.Lock()
				outcomes = append(outcomes, o)
				mu.Unlock()
				select {
				case warm <- struct{}{}:
				default:
				}
			}
		}()
	}
	for range 20 {
		select {
		case <-warm:
		case <-time.After(5 * time.Second):
			close(stop)
			wg.Wait()
			t.Fatal("traffic did not start within 5s")
		}
	}

	changed := time.Now()
	e.setPolicies(readers("Enforce", "Orders.Admin"))
	// Keep the slow body going across the change, then finish it.
	go func() {
		for range 9 {
			time.Sleep(100 * time.Millisecond)
			if _, err := pw.Write(make([]byte, 100)); err != nil {
				return
			}
		}
		pw.Close()
	}()
	time.Sleep(2 * time.Second) // traffic keeps flowing: the observation window, not a synchronisation
	close(stop)
	wg.Wait()

	slow := <-slowDone
	if slow.err != nil || slow.status != 200 {
		t.Errorf("slow upload across the change: got %d, %v; want 200", slow.status, slow.err)
	}
	var firstDeny *outcome
	for i := range outcomes {
		o := &outcomes[i]
		switch {
		case o.err != nil:
			t.Errorf("request started %v after the change failed: %v", o.start.Sub(changed), o.err)
		case o.status != 200 && o.status != 403:
			t.Errorf("request started %v after the change: got %d, want 200 or 403", o.start.Sub(changed), o.status)
		case o.status == 403 && (firstDeny == nil || o.end.Before(firstDeny.end)):
			firstDeny = o
		}
	}
	if firstDeny == nil {
		t.Fatalf("no request was refused in the 2s after the policy change (%d requests)", len(outcomes))
	}
	took := firstDeny.end.Sub(changed)
	t.Logf("%d requests; first refusal %v after the change", len(outcomes), took)
	if took > time.Second {
		t.Errorf("new policy took %v to apply, want <= 1s", took)
	}
	for _, o := range outcomes {
		if o.start.After(firstDeny.end) && o.status == 200 {
			t.Errorf("request started %v after the first refusal was allowed: the old policy came back", o.start.Sub(firstDeny.end))
		}
	}
}

// TestAgentDeathFailsClosedAndRestartReadopts kills the agent (SIGKILL)
// and stops it (SIGTERM, pins kept): either way the captured ports take no
// connection and no byte reaches the app, while uncaptured traffic is
// untouched. Each restart re-adopts the pinned datapath: service resumes
// and every hook is attached exactly once.
func TestAgentDeathFailsClosedAndRestartReadopts(t *testing.T) {
	e := newEnv(t, demoPods(e2eApp))
	e.setPolicies(readers("Enforce", "Orders.Read"))
	e.agent.Teardown = false // the DaemonSet default: pins outlive the agent
	e.agent.Start()
	tokRead := mintTokens(t).read
	orders, attacker := e.pods["orders-api"], e.pods["attacker"]

	serves := func(step string) {
		t.Helper()
		c := hostClient(t)
		resp, body := do(t, c, http.MethodGet, orders.URL(appPort, "/orders/1"), tokRead, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: got %d, want 200: %s", step, resp.StatusCode, body)
		}
		resp, _ = do(t, c, http.MethodGet, orders.URL(appPort, "/orders/1"), "", nil)
		if resp.StatusCode != 401 {
			t.Fatalf("%s: without a token got %d, want 401", step, resp.StatusCode)
		}
	}
	hooks := func(step string) (tcx, sockops ebpf.ProgramID) {
		t.Helper()
		ids := tcxPrograms(t, orders)
		if len(ids) != 1 {
			t.Fatalf("%s: %d programs at TCX ingress of orders-api, want 1: %v", step, len(ids), ids)
		}
		return ids[0], e.sockopsAttachedOnce(t, step)
	}
	closed := func(step string) {
		t.Helper()
		before := e.stats(orders)
		from := map[string]func(ctx context.Context, network, addr string) (net.Conn, error){
			"host":     (&net.Dialer{}).DialContext,
			"attacker": e.dialer(attacker).DialContext,
		}
		// All attempts at once: each waits out its dial timeout.
		var wg sync.WaitGroup
		for name, dial := range from {
			for _, dst := range []netip.AddrPort{orders.Addr(appPort), orders.Addr(grpcPort), netip.AddrPortFrom(orders.IPv6, appPort)} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					defer cancel()
					conn, err := dial(ctx, "tcp", dst.String())
					if err == nil {
						_, _ = io.WriteString(conn, "GET /orders/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+tokRead+"\r\n\r\n")
						conn.Close()
						t.Errorf("%s: a connection from %s to %s was established", step, name, dst)
					}
				}()
			}
		}
		wg.Wait()
		after := e.stats(orders)
		if after.Conns != before.Conns || after.Requests != before.Requests || after.BodyBytes != before.BodyBytes {
			t.Errorf("%s: the app saw traffic: %+v, then %+v", step, before, after)
		}
	}

	serves("first start")
	tcx0, sock0 := hooks("first start")

	e.agent.Kill()
	closed("after SIGKILL")
	if tcx, _ := hooks("after SIGKILL"); tcx != tcx0 {
		t.Errorf("after SIGKILL: capture program changed from %d to %d with no agent", tcx0, tcx)
	}

	e.agent.Start()
	serves("after restart")
	tcx1, sock1 := hooks("after restart")
	t.Logf("capture program %d -> %d, sockops %d -> %d", tcx0, tcx1, sock0, sock1)

	e.agent.Stop()
	closed("after SIGTERM")
	hooks("after SIGTERM")

	e.agent.Start()
	serves("after second restart")
	hooks("after second restart")
}

// tcxPrograms returns the IDs of the programs attached at TCX ingress of
// the pod's interface.
func tcxPrograms(t *testing.T, p *pod) []ebpf.ProgramID {
	t.Helper()
	ids, err := testenv.TCXPrograms(p.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// sockopsAttachedOnce checks that the program of the agent's pinned
// sockops link is attached to the cgroup root exactly once, and returns
// its ID.
func (e *env) sockopsAttachedOnce(t *testing.T, step string) ebpf.ProgramID {
	t.Helper()
	l, err := link.LoadPinnedLink(filepath.Join(e.agent.pinDir, "link_sockops"), nil)
	if err != nil {
		t.Fatalf("%s: load pinned sockops link: %v", step, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatalf("%s: sockops link info: %v", step, err)
	}
	root, err := cgroupv2.Root()
	if err != nil {
		t.Fatal(err)
	}
	cg, err := os.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(cg.Fd()), Attach: ebpf.AttachCGroupSockOps})
	if err != nil {
		t.Fatalf("%s: query sockops programs: %v", step, err)
	}
	n := 0
	for _, p := range res.Programs {
		if p.ID == info.Program {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%s: sockops program %d attached %d times to %s, want once", step, info.Program, n, root)
	}
	return info.Program
}

// TestWorkloadsChangeAtRuntime adds and removes the protected pod from the
// workloads file while the agent runs: capture starts and stops without a
// restart, a connection the app accepted before enrolment and one still
// waiting in an app's accept queue are reset (they would otherwise go on
// unchecked), and a connection that was established before unenrolment
// keeps working.
func TestWorkloadsChangeAtRuntime(t *testing.T) {
	e := newEnv(t, demoPods(e2eApp))
	// queuePort is captured too; its listener (the test's, in the pod)
	// never accepts.
	const queuePort = 8099
	e.setPolicies(strings.Replace(readers("Enforce", "Orders.Read"), "ports: [8080, 9090]", "ports: [8080, 9090, 8099]", 1))
	e.writeWorkloads("frontend", "attacker")
	e.agent.Start()
	orders := e.pods["orders-api"]
	pid := e.agent.PID()
	queueLn, err := podnet.ListenTCP(context.Background(), orders.NetnsPath, fmt.Sprintf(":%d", queuePort))
	if err != nil {
		t.Fatal(err)
	}
	defer queueLn.Close()

	// status makes one request without a token on a new connection.
	status := func() int {
		t.Helper()
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, _, err := tryDo(c, http.MethodGet, orders.URL(appPort, "/orders/1"), "", nil)
		if err != nil {
			t.Fatalf("GET without a token: %v", err)
		}
		return resp.StatusCode
	}
	// eventually waits (bounded; the workload watcher has no signal the
	// test can see) until a new connection gets want.
	eventually := func(step string, want int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			got := status()
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: a request without a token still got %d after 5s, want %d", step, got, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	if got := status(); got != 200 {
		t.Fatalf("orders-api not enrolled: got %d, want 200 from the app itself", got)
	}
	// A keep-alive connection straight to the app, before capture.
	early, err := net.DialTimeout("tcp", orders.Addr(appPort).String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	early.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(early)
	fmt.Fprintf(early, "GET /orders/1 HTTP/1.1\r\nHost: orders\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("keep-alive request straight to the app: %v %v, want 200", resp, err)
	} else {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	// A connection the app has not accepted yet: its handshake is done.
	queued, err := net.DialTimeout("tcp", orders.Addr(queuePort).String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer queued.Close()
	e.writeWorkloads()
	eventually("after enrolling orders-api", 401)
	// Enrolment reset them, so they cannot carry requests to the app unchecked.
	early.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := br.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection accepted by the app before enrolment: read got %d, %v; want it reset", n, err)
	}
	queued.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := queued.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection in the accept queue before enrolment: read got %d, %v; want it reset", n, err)
	}
	// Counted once the whole reset pass is done, which may be after the
	// clients saw their resets.
	if got := e.agent.metricReaches(2, "portcullis_agent_preexisting_connections_reset_total"); got != 2 {
		t.Errorf("portcullis_agent_preexisting_connections_reset_total: got %v, want 2", got)
	}

	// An allowed keep-alive connection through the verifier, then unenrol.
	tok := mintTokens(t)
	c := hostClient(t)
	resp, _ := do(t, c, http.MethodGet, orders.URL(appPort, "/orders/2"), tok.read, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("with a token: got %d, want 200", resp.StatusCode)
	}
	e.writeWorkloads("frontend", "attacker")
	eventually("after removing orders-api", 200)
	// The keep-alive connection accepted by the verifier stays usable.
	resp, body, err := tryDo(c, http.MethodGet, orders.URL(appPort, "/orders/3"), tok.read, nil)
	if err != nil || resp.StatusCode != 200 {
		code := 0
		if resp != nil {
			code = resp.StatusCode
		}
		t.Errorf("established connection after unenrolment: got %d, %v (%s); want 200", code, err, body)
	}
	if e.agent.PID() != pid || !e.agent.running() {
		t.Errorf("the agent restarted or exited")
	}
}

// TestGracefulDrain: on SIGTERM the agent stops accepting new connections
// (they are dropped, never passed to the app) but lets a request in flight
// finish, then exits 0.
func TestGracefulDrain(t *testing.T) {
	e := newEnv(t, demoPods(e2eApp))
	e.setPolicies(readers("Enforce", "Orders.Read"))
	e.agent.Teardown = false
	e.agent.Start()
	orders := e.pods["orders-api"]
	tok := mintTokens(t)
	c := hostClient(t)

	pr, pw := io.Pipe()
	done := make(chan outcome, 1)
	go func() {
		resp, body, err := tryDo(c, http.MethodPost, orders.URL(appPort, "/slow"), tok.read, pr)
		o := outcome{err: err}
		if resp != nil {
			o.status = resp.StatusCode
			if err == nil && !strings.Contains(body, `"bytes":1000`) {
				o.err = fmt.Errorf("app answered %s, want 1000 body bytes", body)
			}
		}
		done <- o
	}()
	if _, err := pw.Write(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !slices.ContainsFunc(e.agent.auditLog(), func(r auditRecord) bool { return r.Path == "/slow" }) {
		if time.Now().After(deadline) {
			t.Fatal("no decision for the slow upload after 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	before := e.stats(orders)
	e.agent.signal(syscall.SIGTERM)
	// While the agent drains (it says so in its log, just before it
	// closes its listeners), new connections are no longer accepted.
	e.agent.waitLog("agent shutting down")
	refused := false
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", orders.Addr(appPort).String())
		cancel()
		if err != nil {
			refused = true
			break
		}
		conn.Close() // accepted in the instant before the listener closed
	}
	if !refused {
		t.Error("new connections are still accepted while the agent drains")
	}
	if e.agent.wait(0) {
		t.Fatal("the agent exited with a request in flight")
	}
	for range 9 {
		if _, err := pw.Write(make([]byte, 100)); err != nil {
			t.Fatalf("slow body during the drain: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	pw.Close()
	if o := <-done; o.err != nil || o.status != 200 {
		t.Errorf("request in flight during the drain: got %d, %v; want 200", o.status, o.err)
	}
	if !e.agent.wait(10 * time.Second) {
		t.Fatal("agent did not exit within 10s after its last request")
	}
	if st := e.agent.cmd.ProcessState; !st.Success() {
		t.Errorf("agent exited with %v, want 0", st)
	}
	after := e.stats(orders)
	if after.Conns != before.Conns {
		t.Errorf("the app accepted %d connections during the drain, want 0", after.Conns-before.Conns)
	}
}
