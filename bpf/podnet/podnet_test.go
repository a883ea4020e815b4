package podnet_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/bpf/podnet"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

func TestDoEntersAndRestoresNamespace(t *testing.T) {
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	want, err := netns.GetFromPath(pod.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	err = podnet.Do(pod.NetnsPath, func() error {
		inside, err := netns.Get()
		if err != nil {
			return err
		}
		defer inside.Close()
		if !inside.Equal(want) {
			t.Errorf("inside Do: netns %s, want the pod's %s", inside, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !after.Equal(before) {
		t.Errorf("after Do: netns %s, want the original %s", after, before)
	}
}

// TestListenAndDialInsideNamespace: a listener on the pod's loopback is
// reachable with the pod's Dialer and not from the host.
func TestListenAndDialInsideNamespace(t *testing.T) {
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	ln, err := podnet.ListenTCP(context.Background(), pod.NetnsPath, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello") //nolint:errcheck
			c.Close()
		}
	}()
	addr := ln.Addr().String()

	d, err := podnet.NewDialer(pod.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s in the pod: %v", addr, err)
	}
	b, err := io.ReadAll(c)
	c.Close()
	if string(b) != "hello" || err != nil {
		t.Errorf("read: got %q, %v, want %q", b, err, "hello")
	}

	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("dial %s from the host: connected, want the pod's loopback to be unreachable", addr)
	}
	if _, err := d.DialContext(ctx, "tcp", "localhost:80"); err == nil {
		t.Error("dial by name: got nil error, want names refused")
	}
}

// TestResetInbound: connections that reached the app's listener on a
// captured port from another host are reset, over IPv4 and IPv6; the
// agent's own, those to other ports and those over the pod's loopback
// (the agent's upstream connections) are not.
func TestResetInbound(t *testing.T) {
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	const captured, other = 18080, 18081
	accepted := make(chan net.Conn, 16)
	for _, port := range []int{captured, other} {
		ln, err := podnet.ListenTCP(context.Background(), pod.NetnsPath, fmt.Sprintf(":%d", port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		serveEcho(t, ln, accepted)
	}
	d, err := podnet.NewDialer(pod.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// dial connects and waits for the listener to accept, so that every
	// connection is established and owned by its server when reset runs.
	dial := func(in bool, addr netip.AddrPort) (client, server net.Conn) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		if in {
			client, err = d.DialContext(ctx, "tcp", addr.String())
		} else {
			client, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr.String())
		}
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		t.Cleanup(func() { client.Close() })
		select {
		case server = <-accepted:
		case <-ctx.Done():
			t.Fatalf("dial %s: not accepted", addr)
		}
		return client, server
	}
	victim4, _ := dial(false, netip.AddrPortFrom(pod.IPv4, captured))
	victim6, _ := dial(false, netip.AddrPortFrom(pod.IPv6, captured))
	own, ownServer := dial(false, netip.AddrPortFrom(pod.IPv4, captured))
	otherPort, _ := dial(false, netip.AddrPortFrom(pod.IPv4, other))
	loopback, _ := dial(true, netip.MustParseAddrPort(fmt.Sprintf("127.0.0.1:%d", captured)))
	self, _ := dial(true, netip.AddrPortFrom(pod.IPv4, captured))
	ownIno := inode(t, ownServer.(syscall.Conn))

	reset, err := podnet.ResetInbound(pod.NetnsPath, podnet.ResetFilter{
		Captured: func(p uint16) bool { return p == captured },
		Own:      func(ino uint32) bool { return ino == ownIno },
	})
	if err != nil {
		t.Fatal(err)
	}
	checkReset(t, reset, map[string]net.Conn{"IPv4 connection from another host": victim4, "IPv6 connection from another host": victim6})
	for name, c := range map[string]net.Conn{"own": own, "other port": otherPort, "loopback": loopback, "pod to itself": self} {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 4)
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Errorf("%s connection: write: %v", name, err)
			continue
		}
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
			t.Errorf("%s connection: echo got %q, %v, want it untouched", name, b, err)
		}
	}
}

// inode is the socket inode of c.
func inode(t *testing.T, c syscall.Conn) uint32 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.Fstat(int(fd), &st) }); err != nil || serr != nil {
		t.Fatalf("fstat: %v %v", err, serr)
	}
	return uint32(st.Ino)
}

func TestOwnSockets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	own, err := podnet.OwnSockets()
	if err != nil {
		t.Fatal(err)
	}
	if ino := inode(t, ln.(*net.TCPListener)); !own[ino] {
		t.Errorf("OwnSockets: %d entries without the listener's inode %d", len(own), ino)
	}
}

// TestResetInboundAcceptQueue: a connection still waiting in the
// application's accept queue is reset only when the snapshot taken before
// capture lists it; one queued after the snapshot (as a connection
// captured for the agent would be) is left alone.
func TestResetInboundAcceptQueue(t *testing.T) {
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	const port = 18082
	ln, err := podnet.ListenTCP(context.Background(), pod.NetnsPath, fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	addr := netip.AddrPortFrom(pod.IPv4, port)
	// The listener accepts nothing until reset ran: a dial returns once
	// the handshake is done, so its server side is in the accept queue.
	dial := func() net.Conn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr.String())
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	before := dial()
	snap, err := podnet.Established(pod.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Len() != 1 {
		t.Errorf("Established: %d connections, want 1", snap.Len())
	}
	after := dial()

	filter := podnet.ResetFilter{
		Captured: func(p uint16) bool { return p == port },
		Own:      func(uint32) bool { t.Error("Own called for a queued connection"); return false },
	}
	// Without the snapshot nothing queued is touched.
	if reset, err := podnet.ResetInbound(pod.NetnsPath, filter); err != nil || len(reset) != 0 {
		t.Errorf("ResetInbound without Before: reset %v, %v; want none", reset, err)
	}
	filter.Before = snap
	reset, err := podnet.ResetInbound(pod.NetnsPath, filter)
	if err != nil {
		t.Fatal(err)
	}
	if len(reset) != 1 || reset[0].Remote.String() != before.LocalAddr().String() || reset[0].Inode != 0 {
		t.Errorf("ResetInbound: reset %+v, want only the queued connection from %s", reset, before.LocalAddr())
	}

	// Now serve: the connection queued after the snapshot echoes, the one
	// before it was reset.
	serveEcho(t, ln, nil)
	before.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := before.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection queued before the snapshot: read got %v, want ECONNRESET", err)
	}
	after.SetDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 4)
	if _, err := after.Write([]byte("ping")); err != nil {
		t.Errorf("connection queued after the snapshot: write: %v", err)
	} else if _, err := io.ReadFull(after, b); err != nil || string(b) != "ping" {
		t.Errorf("connection queued after the snapshot: echo got %q, %v, want it untouched", b, err)
	}
}

// TestResetInboundHandshake: handshakes in progress when the snapshot was
// taken (their final ACK held back by a firewall rule; capture lets a
// started handshake complete to the application) are the application's:
// one that completed into the accept queue is reset, one still in progress
// is dropped, and its client's next segment gets a RST.
func TestResetInboundHandshake(t *testing.T) {
	if _, err := exec.LookPath("iptables"); err != nil {
		if os.Getenv(testenv.RequirePrivilegedEnv) == "1" {
			t.Fatalf("iptables is needed to hold back a handshake, and %s=1 forbids skipping: %v", testenv.RequirePrivilegedEnv, err)
		}
		t.Skipf("iptables is needed to hold back a handshake: %v", err)
	}
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	const port = 18083
	ln, err := podnet.ListenTCP(context.Background(), pod.NetnsPath, fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// iptables drops, in the pod, every segment but the SYN of the
	// connections to port (from sport, if not 0): the server side stays in
	// SYN_RECV while the client, which saw the SYN-ACK, is established.
	iptables := func(op string, sport uint16) {
		t.Helper()
		args := []string{"-w", op, "INPUT", "-p", "tcp", "--dport", fmt.Sprint(port), "--tcp-flags", "SYN,ACK", "ACK", "-j", "DROP"}
		if sport != 0 {
			args = append(args, "--sport", fmt.Sprint(sport))
		}
		if out, err := pod.Exec(ctx, "iptables", args...); err != nil {
			t.Fatalf("iptables: %v: %s", err, out)
		}
	}
	dial := func() net.Conn {
		t.Helper()
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", netip.AddrPortFrom(pod.IPv4, port).String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	iptables("-A", 0)
	done, pending := dial(), dial()
	pendingPort := uint16(pending.LocalAddr().(*net.TCPAddr).Port)
	snap, err := podnet.Established(pod.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Len() != 2 {
		t.Errorf("Established: %d connections and handshakes, want the 2 handshakes", snap.Len())
	}
	iptables("-A", pendingPort)
	iptables("-D", 0)
	// Data completes done's handshake: it is then queued.
	if _, err := done.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	waitQueued(t, ln)

	reset, err := podnet.ResetInbound(pod.NetnsPath, podnet.ResetFilter{
		Captured: func(p uint16) bool { return p == port },
		Before:   snap,
	})
	if err != nil {
		t.Fatal(err)
	}
	iptables("-D", pendingPort)
	if _, err := pending.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	checkReset(t, reset, map[string]net.Conn{"handshake completed at reset": done, "handshake in progress at reset": pending})
}

// serveEcho accepts on ln until it is closed and echoes on every
// connection, handing each to accepted unless that is nil.
func serveEcho(t *testing.T, ln net.Listener, accepted chan<- net.Conn) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go io.Copy(c, c) //nolint:errcheck // echo
			if accepted != nil {
				accepted <- c
			}
		}
	}()
}

// checkReset checks that ResetInbound reset exactly the connections of
// clients, and that each of those clients then reads ECONNRESET (within
// 5s); clients are named by what they are.
func checkReset(t *testing.T, reset []podnet.Conn, clients map[string]net.Conn) {
	t.Helper()
	var got, want []string
	for _, c := range reset {
		got = append(got, c.Remote.String())
	}
	for _, c := range clients {
		want = append(want, c.LocalAddr().String())
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("ResetInbound: reset connections from %v, want from %v", got, want)
	}
	for name, c := range clients {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s: read got %v, want ECONNRESET", name, err)
		}
	}
}

// waitQueued waits (at most 5s) until ln has a connection to accept,
// without accepting it.
func waitQueued(t *testing.T, ln net.Listener) {
	t.Helper()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var perr error
	if err := rc.Control(func(fd uintptr) {
		for {
			n, perr = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 5000)
			if perr != unix.EINTR {
				return
			}
		}
	}); err != nil || perr != nil || n != 1 {
		t.Fatalf("wait for a queued connection: %d ready, %v %v", n, err, perr)
	}
}
