package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/portcullis-mesh/portcullis/bpf"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

const (
	appPort      = 8080 // captured in the tests
	otherAppPort = 8081 // never captured
)

// TestDatapathCaptureDeliversToAgent: connections from the host netns and
// from another pod to a captured port reach the agent's listener with the
// original destination as local address, and never the app; an uncaptured
// port reaches the app.
func TestDatapathCaptureDeliversToAgent(t *testing.T) {
	t.Parallel()
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := openDatapath(t)
			n := testenv.NewNetwork(t)
			server := n.NewPod(t, testenv.PodOptions{AppPorts: []uint16{appPort, otherAppPort}})
			client := n.NewPod(t, testenv.PodOptions{})
			agent := listenAgent(t, d, server)
			if err := d.Enroll(bpf.Pod{Key: "default/server", NetnsPath: server.NetnsPath, Ports: bpf.PortSpec{Ports: []uint16{appPort}}}); err != nil {
				t.Fatal(err)
			}
			dst := netip.AddrPortFrom(fam.addr(server), appPort)

			got, local, err := hostGet(t, dst)
			if err != nil {
				t.Fatalf("host -> %s: %v", dst, err)
			}
			if got != agentReply {
				t.Errorf("host -> %s: got answer %q, want %q", dst, got, agentReply)
			}
			rec := agent.next(t)
			if want := (accepted{Local: dst, Remote: local}); rec != want {
				t.Errorf("host -> %s: agent accepted %+v, want %+v", dst, rec, want)
			}

			res, err := client.Get(dst)
			if err != nil {
				t.Fatalf("pod -> %s: %v", dst, err)
			}
			if res.Response != agentReply {
				t.Errorf("pod -> %s: got answer %q, want %q", dst, res.Response, agentReply)
			}
			rec = agent.next(t)
			if rec.Local != dst || rec.Remote != res.Local {
				t.Errorf("pod -> %s: agent saw local %s remote %s, want local %s remote %s", dst, rec.Local, rec.Remote, dst, res.Local)
			}
			if got := mustAccepted(t, server, appPort); got != 0 {
				t.Errorf("app accepted %d connections on captured port %d, want 0", got, appPort)
			}

			other := netip.AddrPortFrom(fam.addr(server), otherAppPort)
			got, _, err = hostGet(t, other)
			if err != nil {
				t.Fatalf("host -> %s: %v", other, err)
			}
			if !strings.Contains(got, fmt.Sprintf("app=%s port=%d", server.Name, otherAppPort)) {
				t.Errorf("host -> uncaptured %s: got %q, want the app's answer", other, got)
			}
			if c := counters(t, d); c[bpf.CaptureAssigned] == 0 || c[bpf.CaptureUncaptured] == 0 {
				t.Errorf("counters %v: want capture_assigned and capture_uncaptured > 0", c)
			}
		})
	}
}

// httpConn is a keep-alive HTTP/1.1 connection from the host.
type httpConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialHTTP(t *testing.T, addr netip.AddrPort) *httpConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &httpConn{c: c, r: bufio.NewReader(c)}
}

func (h *httpConn) get(t *testing.T) string {
	t.Helper()
	if err := h.c.SetDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(h.c, "GET / HTTP/1.1\r\nHost: portcullis\r\n\r\n"); err != nil {
		t.Fatalf("write request: %v", err)
	}
	resp, err := http.ReadResponse(h.r, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return string(b)
}

// TestDatapathEstablishedSurvivesAndDetachRestores: a connection made
// before enrolment keeps reaching the app; after Remove, new connections
// reach the app directly again.
func TestDatapathEstablishedSurvivesAndDetachRestores(t *testing.T) {
	t.Parallel()
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := openDatapath(t)
			n := testenv.NewNetwork(t)
			server := n.NewPod(t, testenv.PodOptions{AppPorts: []uint16{appPort}})
			agent := listenAgent(t, d, server)
			dst := netip.AddrPortFrom(fam.addr(server), appPort)
			wantApp := fmt.Sprintf("app=%s port=%d", server.Name, appPort)

			before := dialHTTP(t, dst)
			if got := before.get(t); !strings.Contains(got, wantApp) {
				t.Fatalf("before enrolment: got %q, want the app", got)
			}
			if err := d.Enroll(bpf.Pod{Key: "default/server", NetnsPath: server.NetnsPath, Ports: bpf.PortSpec{Ports: []uint16{appPort}}}); err != nil {
				t.Fatal(err)
			}
			if got := before.get(t); !strings.Contains(got, wantApp) {
				t.Errorf("established connection after enrolment: got %q, want the app", got)
			}
			if got, _, err := hostGet(t, dst); err != nil || got != agentReply {
				t.Errorf("new connection after enrolment: got %q, %v, want %q", got, err, agentReply)
			}
			agent.next(t)
			if c := counters(t, d); c[bpf.CaptureEstablished] == 0 {
				t.Errorf("capture_established = 0, want > 0")
			}

			if err := d.Remove("default/server"); err != nil {
				t.Fatal(err)
			}
			if got, _, err := hostGet(t, dst); err != nil || !strings.Contains(got, wantApp) {
				t.Errorf("after Remove: got %q, %v, want the app", got, err)
			}
			if got := before.get(t); !strings.Contains(got, wantApp) {
				t.Errorf("established connection after Remove: got %q, want the app", got)
			}
		})
	}
}

// TestDatapathFailsClosedWithoutListener: with the agent's listener closed,
// connecting to a captured port fails and the app accepts nothing.
func TestDatapathFailsClosedWithoutListener(t *testing.T) {
	t.Parallel()
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := openDatapath(t)
			n := testenv.NewNetwork(t)
			server := n.NewPod(t, testenv.PodOptions{AppPorts: []uint16{appPort}})
			client := n.NewPod(t, testenv.PodOptions{})
			// Capture everything: the all-except mode with no exclusion.
			if err := d.Enroll(bpf.Pod{Key: "default/server", NetnsPath: server.NetnsPath, Ports: bpf.PortSpec{Mode: bpf.CaptureAllExcept}}); err != nil {
				t.Fatal(err)
			}
			dst := netip.AddrPortFrom(fam.addr(server), appPort)

			agent := listenAgent(t, d, server)
			if got, _, err := hostGet(t, dst); err != nil || got != agentReply {
				t.Fatalf("with listener: got %q, %v, want %q", got, err, agentReply)
			}
			agent.next(t)
			agent.close()

			if got, _, err := hostGet(t, dst); err == nil {
				t.Errorf("host -> %s without listener: got answer %q, want the connection to fail", dst, got)
			}
			if res, err := client.GetWithin(dst, 1500*time.Millisecond); err == nil {
				t.Errorf("pod -> %s without listener: got answer %q, want the connection to fail", dst, res.Response)
			}
			if got := mustAccepted(t, server, appPort); got != 0 {
				t.Errorf("app accepted %d connections, want 0", got)
			}
			if c := counters(t, d); c[bpf.CaptureNoListener] == 0 {
				t.Errorf("capture_no_listener = 0, want > 0")
			}
		})
	}
}

// TestDatapathAttributesCallerIdentity: a connection opened by a process in
// pod A's cgroup is attributed to A's identity when the agent accepts it in
// pod B; one from a process outside any pod is not; the record goes away
// when the connection closes.
func TestDatapathAttributesCallerIdentity(t *testing.T) {
	t.Parallel()
	const identityA = 42
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := openDatapath(t)
			n := testenv.NewNetwork(t)
			a := n.NewPod(t, testenv.PodOptions{})
			b := n.NewPod(t, testenv.PodOptions{AppPorts: []uint16{appPort}})
			if err := d.RegisterIdentity(a.CgroupID, identityA); err != nil {
				t.Fatal(err)
			}
			agent := listenAgent(t, d, b)
			if err := d.Enroll(bpf.Pod{Key: "default/b", NetnsPath: b.NetnsPath, Ports: bpf.PortSpec{Ports: []uint16{appPort}}}); err != nil {
				t.Fatal(err)
			}
			dst := netip.AddrPortFrom(fam.addr(b), appPort)

			res, err := a.Get(dst)
			if err != nil {
				t.Fatalf("pod A -> %s: %v", dst, err)
			}
			rec := agent.next(t)
			if want := (accepted{Local: dst, Remote: res.Local, Identity: identityA, Known: true}); rec != want {
				t.Errorf("connection from pod A: got %+v, want %+v", rec, want)
			}
			waitFor(t, "record of the closed connection removed", func() (bool, error) {
				_, ok := d.LookupConnection(dst, res.Local)
				return !ok, nil
			})

			if _, _, err := hostGet(t, dst); err != nil {
				t.Fatalf("host -> %s: %v", dst, err)
			}
			if rec := agent.next(t); rec.Known {
				t.Errorf("connection from the host: got identity %d, want none", rec.Identity)
			}

			if err := d.UnregisterIdentity(a.CgroupID); err != nil {
				t.Fatal(err)
			}
			if _, err := a.Get(dst); err != nil {
				t.Fatalf("pod A -> %s: %v", dst, err)
			}
			if rec := agent.next(t); rec.Known {
				t.Errorf("after UnregisterIdentity: got identity %d, want none", rec.Identity)
			}
			if c := counters(t, d); c[bpf.SockopsRecorded] == 0 || c[bpf.SockopsForgotten] == 0 {
				t.Errorf("counters %v: want sockops_recorded and sockops_forgotten > 0", c)
			}
		})
	}
}

// tcxPrograms returns the IDs of the programs attached at TCX ingress of
// the pod's interface.
func tcxPrograms(t *testing.T, pod *testenv.Pod) []ebpf.ProgramID {
	t.Helper()
	ids, err := testenv.TCXPrograms(pod.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestDatapathRestartReadopts: Close keeps capture in force; a new Open on
// the same pins finds the pod, re-enrolling it attaches nothing twice, and
// Teardown removes everything.
func TestDatapathRestartReadopts(t *testing.T) {
	t.Parallel()
	testenv.RequirePrivileged(t)
	pinDir := datapathPinDir(t)
	n := testenv.NewNetwork(t)
	server := n.NewPod(t, testenv.PodOptions{AppPorts: []uint16{appPort}})
	pod := bpf.Pod{Key: "default/server", NetnsPath: server.NetnsPath, Ports: bpf.PortSpec{Ports: []uint16{appPort}}}
	dst := netip.AddrPortFrom(server.IPv4, appPort)

	d1, err := bpf.Open(bpf.Config{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	if d1.Capturing(pod.Key) {
		t.Errorf("Capturing before Enroll: got true, want false")
	}
	if err := d1.Enroll(pod); err != nil {
		t.Fatal(err)
	}
	if !d1.Capturing(pod.Key) {
		t.Errorf("Capturing after Enroll: got false, want true")
	}
	if err := d1.RegisterIdentity(server.CgroupID, 7); err != nil {
		t.Fatal(err)
	}
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}

	// No agent running: the captured port fails closed.
	if got, _, err := hostGet(t, dst); err == nil {
		t.Fatalf("with the agent closed and no listener: got %q, want failure", got)
	}

	d2, err := bpf.Open(bpf.Config{PinDir: pinDir})
	if err != nil {
		t.Fatalf("re-open: %v", err)
	}
	tornDown := false
	t.Cleanup(func() {
		if !tornDown {
			d2.Teardown()
		}
	})
	if !d2.Capturing(pod.Key) {
		t.Errorf("Capturing after re-adoption: got false, want true")
	}
	pods, err := d2.Pods()
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 1 || pods[0].Key != pod.Key || len(pods[0].Ifindexes) != 1 ||
		!cmp.Equal(pods[0].Ports, bpf.PortSpec{Ports: []uint16{appPort}}) {
		t.Errorf("re-adopted pods: got %+v, want %s with one interface and port %d", pods, pod.Key, appPort)
	}
	ids, err := d2.Identities()
	if err != nil {
		t.Fatal(err)
	}
	// Identity numbers belong to one agent run: Open forgets them.
	if diff := cmp.Diff(map[uint64]uint32{}, ids); diff != "" {
		t.Errorf("identities after re-open (-want +got):\n%s", diff)
	}
	if err := d2.Enroll(pod); err != nil {
		t.Fatalf("re-enroll: %v", err)
	}
	progIDs, err := d2.CaptureProgramIDs()
	if err != nil {
		t.Fatal(err)
	}
	progID := progIDs[pod.Key]
	if got := tcxPrograms(t, server); !cmp.Equal(got, []ebpf.ProgramID{progID}) {
		t.Errorf("tcx ingress programs after restart: got %v, want only the new capture program %d", got, progID)
	}
	agent := listenAgent(t, d2, server)
	if got, _, err := hostGet(t, dst); err != nil || got != agentReply {
		t.Errorf("after restart: got %q, %v, want %q", got, err, agentReply)
	}
	agent.next(t)

	if err := d2.Teardown(); err != nil {
		t.Fatal(err)
	}
	tornDown = true
	if got := tcxPrograms(t, server); len(got) != 0 {
		t.Errorf("tcx ingress programs after Teardown: got %v, want none", got)
	}
	if _, err := os.Stat(pinDir); !os.IsNotExist(err) {
		t.Errorf("pin directory after Teardown: stat error %v, want not exist", err)
	}
	if got, _, err := hostGet(t, dst); err != nil || !strings.Contains(got, "app=") {
		t.Errorf("after Teardown: got %q, %v, want the app", got, err)
	}
}

// TestDatapathEnrollRemoveManyPodsLeavesNothing enrols and removes 200
// pods, twice, then checks that no link, pin, map entry or namespace is
// left.
func TestDatapathEnrollRemoveManyPodsLeavesNothing(t *testing.T) {
	t.Parallel()
	const pods = 200
	testenv.RequirePrivileged(t)
	var names []string
	// Registered first, so it runs after the harness removed the pods.
	t.Cleanup(func() {
		for _, name := range names {
			if _, err := os.Stat(filepath.Join("/run/netns", name)); !os.IsNotExist(err) {
				t.Errorf("netns %s left behind (stat: %v)", name, err)
			}
		}
	})
	d := openDatapath(t)
	n := testenv.NewNetwork(t)
	var all []*testenv.Pod
	for range pods {
		p := n.NewPod(t, testenv.PodOptions{NoProcess: true})
		all = append(all, p)
		names = append(names, p.Name)
	}
	for round := range 2 {
		for i, p := range all {
			spec := bpf.PortSpec{Ports: []uint16{80, 443, uint16(1000 + i)}}
			if err := d.Enroll(bpf.Pod{Key: p.Name, NetnsPath: p.NetnsPath, Ports: spec}); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			if err := d.RegisterIdentity(p.CgroupID, uint32(i+1)); err != nil {
				t.Fatal(err)
			}
		}
		progIDs, err := d.CaptureProgramIDs()
		if err != nil {
			t.Fatal(err)
		}
		ids := make(map[ebpf.ProgramID]bool)
		for _, id := range progIDs {
			ids[id] = true
		}
		if got := countLinks(t, ids); got != pods || len(ids) != pods {
			t.Errorf("round %d: %d links to %d capture programs, want %d each", round, got, len(ids), pods)
		}
		entries, err := d.MapEntries()
		if err != nil {
			t.Fatal(err)
		}
		if entries["pc_pods"] != pods || entries["pc_ports"] != 3*pods || entries["pc_cgroups"] != pods {
			t.Errorf("round %d after enrolling: map entries %v", round, entries)
		}
		for _, p := range all {
			if err := d.Remove(p.Name); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			if err := d.UnregisterIdentity(p.CgroupID); err != nil {
				t.Fatal(err)
			}
		}
		// Detached at once, but a link object is freed when its last
		// reference goes, which the kernel may defer to a work queue.
		waitFor(t, fmt.Sprintf("round %d: links freed", round), func() (bool, error) {
			return countLinks(t, ids) == 0, nil
		})
		entries, err = d.MapEntries()
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(map[string]int{"pc_pods": 0, "pc_ports": 0, "pc_cgroups": 0, "pc_conns": 0}, entries); diff != "" {
			t.Errorf("round %d: map entries left (-want +got):\n%s", round, diff)
		}
		left, err := os.ReadDir(filepath.Join(d.PinDir(), "pods"))
		if err != nil {
			t.Fatal(err)
		}
		if len(left) != 0 {
			t.Errorf("round %d: %d pod pin directories left", round, len(left))
		}
		if got := tcxPrograms(t, all[0]); len(got) != 0 {
			t.Errorf("round %d: programs still attached to %s: %v", round, all[0].Name, got)
		}
	}
}

// countLinks counts the BPF links in the system that point at one of progs.
func countLinks(t *testing.T, progs map[ebpf.ProgramID]bool) int {
	t.Helper()
	n := 0
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue // the link went away meanwhile
		}
		if progs[info.Program] {
			n++
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate links: %v", err)
	}
	return n
}

// TestDatapathSYNOnTimeWaitNeverReachesApp: a new connection that reuses
// the 4-tuple of a pod-side TIME_WAIT socket of a captured port must not
// reach the app (the stack alone would hand it to the app's listener); the
// datapath drops it and counts it.
func TestDatapathSYNOnTimeWaitNeverReachesApp(t *testing.T) {
	t.Parallel()
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := openDatapath(t)
			n := testenv.NewNetwork(t)
			server := n.NewPod(t, testenv.PodOptions{AppPorts: []uint16{appPort}})
			agent := listenAgent(t, d, server)
			if err := d.Enroll(bpf.Pod{Key: "default/server", NetnsPath: server.NetnsPath, Ports: bpf.PortSpec{Ports: []uint16{appPort}}}); err != nil {
				t.Fatal(err)
			}
			dst := netip.AddrPortFrom(fam.addr(server), appPort)

			// The agent closes first, so its socket ends in TIME_WAIT.
			got, local, err := hostGet(t, dst)
			if err != nil || got != agentReply {
				t.Fatalf("first connection: got %q, %v, want %q", got, err, agentReply)
			}
			agent.next(t)
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			out, err := server.Exec(ctx, "ss", "-Htan", "state", "time-wait", "dport", "=", fmt.Sprint(local.Port()))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(out), fmt.Sprintf(":%d", local.Port())) {
				t.Fatalf("no TIME_WAIT socket for %s in the pod, the test would prove nothing:\n%s", local, out)
			}

			dl := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Timeout: 1500 * time.Millisecond}
			if c, err := dl.DialContext(ctx, "tcp", dst.String()); err == nil {
				c.Close()
				t.Errorf("second connection from %s: connected, want it dropped", local)
			}
			if n := mustAccepted(t, server, appPort); n != 0 {
				t.Errorf("app accepted %d connections, want 0", n)
			}
			if c := counters(t, d); c[bpf.CaptureTimeWaitSYN] == 0 {
				t.Errorf("capture_timewait_syn = 0, want > 0")
			}
		})
	}
}

// TestDatapathUpdatePortsSwitchesCapture: UpdatePorts changes which ports
// are captured, across both modes, and Pods reports the spec in force.
func TestDatapathUpdatePortsSwitchesCapture(t *testing.T) {
	t.Parallel()
	d := openDatapath(t)
	n := testenv.NewNetwork(t)
	server := n.NewPod(t, testenv.PodOptions{AppPorts: []uint16{appPort, otherAppPort}})
	agent := listenAgent(t, d, server)
	const key = "default/server"
	if err := d.Enroll(bpf.Pod{Key: key, NetnsPath: server.NetnsPath, Ports: bpf.PortSpec{Ports: []uint16{appPort}}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name         string
		spec         bpf.PortSpec
		wantCaptured map[uint16]bool
	}{
		{"listed other port", bpf.PortSpec{Ports: []uint16{otherAppPort}}, map[uint16]bool{appPort: false, otherAppPort: true}},
		{"all except app port", bpf.PortSpec{Mode: bpf.CaptureAllExcept, Ports: []uint16{appPort}}, map[uint16]bool{appPort: false, otherAppPort: true}},
		{"all", bpf.PortSpec{Mode: bpf.CaptureAllExcept}, map[uint16]bool{appPort: true, otherAppPort: true}},
		{"nothing", bpf.PortSpec{}, map[uint16]bool{appPort: false, otherAppPort: false}},
	}
	for _, tt := range tests {
		if err := d.UpdatePorts(key, tt.spec); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		pods, err := d.Pods()
		if err != nil {
			t.Fatal(err)
		}
		if len(pods) != 1 || !cmp.Equal(pods[0].Ports, tt.spec, cmpopts.EquateEmpty()) {
			t.Errorf("%s: Pods() = %+v, want ports %+v", tt.name, pods, tt.spec)
		}
		for port, captured := range tt.wantCaptured {
			got, _, err := hostGet(t, netip.AddrPortFrom(server.IPv4, port))
			if err != nil {
				t.Fatalf("%s: port %d: %v", tt.name, port, err)
			}
			if gotCaptured := got == agentReply; gotCaptured != captured {
				t.Errorf("%s: port %d captured = %v, want %v (answer %q)", tt.name, port, gotCaptured, captured, got)
			}
			if got == agentReply {
				agent.next(t)
			}
		}
	}
	entries, err := d.MapEntries()
	if err != nil {
		t.Fatal(err)
	}
	if entries["pc_ports"] != 0 {
		t.Errorf("pc_ports holds %d entries after the last update to no ports, want 0 (old generations left)", entries["pc_ports"])
	}
}

// TestDatapathAttributesNestedCgroups: a process in a container cgroup
// below the pod's cgroup is attributed to the pod; when both are
// registered, the deepest registration wins.
func TestDatapathAttributesNestedCgroups(t *testing.T) {
	t.Parallel()
	const podIdentity, containerIdentity = 100, 101
	d := openDatapath(t)
	n := testenv.NewNetwork(t)
	a := n.NewPod(t, testenv.PodOptions{ContainerCgroup: "app"})
	b := n.NewPod(t, testenv.PodOptions{})
	agent := listenAgent(t, d, b)
	if err := d.Enroll(bpf.Pod{Key: "default/b", NetnsPath: b.NetnsPath, Ports: bpf.PortSpec{Ports: []uint16{appPort}}}); err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(b.IPv4, appPort)
	if err := d.RegisterIdentity(a.CgroupID, podIdentity); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Get(dst); err != nil {
		t.Fatal(err)
	}
	if rec := agent.next(t); rec.Identity != podIdentity || !rec.Known {
		t.Errorf("pod cgroup registered: got identity %d (known %v), want %d", rec.Identity, rec.Known, podIdentity)
	}
	if err := d.RegisterIdentity(a.ProcessCgroupID, containerIdentity); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Get(dst); err != nil {
		t.Fatal(err)
	}
	if rec := agent.next(t); rec.Identity != containerIdentity {
		t.Errorf("both registered: got identity %d, want the deepest, %d", rec.Identity, containerIdentity)
	}
}

// TestDatapathEnrollsPodsWithTunnels: a pod with a tun device (as VPN
// clients create; the kernel's fallback tunnels tunl0, gre0... are the same
// kind of device) is enrolled, with capture on both interfaces.
func TestDatapathEnrollsPodsWithTunnels(t *testing.T) {
	t.Parallel()
	d := openDatapath(t)
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := pod.Exec(ctx, "ip", "tuntap", "add", "dev", "tun0", "mode", "tun"); err != nil {
		t.Fatal(err)
	}
	if err := d.Enroll(bpf.Pod{Key: "default/tunnel", NetnsPath: pod.NetnsPath, Ports: bpf.PortSpec{Ports: []uint16{appPort}}}); err != nil {
		t.Fatalf("Enroll with a tunnel: %v", err)
	}
	pods, err := d.Pods()
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 1 || len(pods[0].Ifindexes) != 2 {
		t.Errorf("enrolled pods: got %+v, want one with eth0 and tun0 captured", pods)
	}
}
