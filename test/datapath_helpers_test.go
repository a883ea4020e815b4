package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/bpf"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

// waitTimeout bounds every wait of the datapath tests.
const waitTimeout = 10 * time.Second

// agentReply is what the test agent listener sends on every connection.
const agentReply = "agent\n"

func datapathPinDir(t testing.TB) string {
	return filepath.Join(bpf.BPFFSRoot, "portcullis",
		fmt.Sprintf("e2e-%d-%s", os.Getpid(), strings.NewReplacer("/", "_").Replace(t.Name())))
}

// openDatapath opens a datapath with a pin directory unique to the test and
// tears it down when the test ends.
func openDatapath(t testing.TB) *bpf.Datapath {
	t.Helper()
	testenv.RequirePrivileged(t)
	d, err := bpf.Open(bpf.Config{PinDir: datapathPinDir(t)})
	if err != nil {
		t.Fatalf("open datapath: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Teardown(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	return d
}

// accepted is one connection seen by the agent listener.
type accepted struct {
	Local, Remote netip.AddrPort
	// Identity is what LookupConnection said at accept; ok false -> 0.
	Identity uint32
	Known    bool

	lookupMismatch string // set when LookupConn and LookupConnection disagree
}

// agentListener is the agent's in-pod listener as the tests need it: it
// records each connection, answers agentReply and closes.
type agentListener struct {
	ln       net.Listener
	accepted chan accepted
}

func listenAgent(t *testing.T, d *bpf.Datapath, pod *testenv.Pod) *agentListener {
	t.Helper()
	ln, err := d.Listen(context.Background(), pod.NetnsPath, netip.Addr{})
	if err != nil {
		t.Fatalf("agent listener: %v", err)
	}
	a := &agentListener{ln: ln, accepted: make(chan accepted, 64)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			rec := accepted{Local: addrPort(c.LocalAddr()), Remote: addrPort(c.RemoteAddr())}
			rec.Identity, rec.Known = d.LookupConn(c)
			if id, ok := d.LookupConnection(rec.Local, rec.Remote); id != rec.Identity || ok != rec.Known {
				rec.lookupMismatch = fmt.Sprintf("LookupConn = %d, %v but LookupConnection = %d, %v", rec.Identity, rec.Known, id, ok)
			}
			select {
			case a.accepted <- rec:
			default:
			}
			// Answer, then drain until the client closes: closing with
			// unread request bytes would reset the connection.
			c.SetDeadline(time.Now().Add(waitTimeout)) //nolint:errcheck // best effort
			io.WriteString(c, agentReply)              //nolint:errcheck // the client may be gone
			c.(*net.TCPConn).CloseWrite()              //nolint:errcheck
			io.Copy(io.Discard, c)                     //nolint:errcheck
			c.Close()
		}
	}()
	t.Cleanup(func() {
		a.close()
		<-done
	})
	return a
}

func (a *agentListener) close() { a.ln.Close() }

// next returns the next accepted connection or fails the test.
func (a *agentListener) next(t *testing.T) accepted {
	t.Helper()
	select {
	case rec := <-a.accepted:
		if rec.lookupMismatch != "" {
			t.Error(rec.lookupMismatch)
			rec.lookupMismatch = ""
		}
		return rec
	case <-time.After(waitTimeout):
		t.Fatal("agent listener accepted nothing")
		return accepted{}
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// hostGet connects from the test process (host netns, outside any pod) to
// addr, sends an HTTP/1.0 request and returns the answer and the local
// address.
func hostGet(t *testing.T, addr netip.AddrPort) (string, netip.AddrPort, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var dl net.Dialer
	c, err := dl.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return "", netip.AddrPort{}, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(waitTimeout)); err != nil {
		return "", netip.AddrPort{}, err
	}
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: portcullis\r\n\r\n"); err != nil {
		return "", netip.AddrPort{}, err
	}
	b, err := io.ReadAll(c)
	return string(b), addrPort(c.LocalAddr()), err
}

// family picks a pod's address of one IP family.
type family struct {
	name string
	addr func(*testenv.Pod) netip.Addr
	host func(*testenv.Network) netip.Addr
}

var families = []family{
	{"ipv4", func(p *testenv.Pod) netip.Addr { return p.IPv4 }, func(n *testenv.Network) netip.Addr { return n.Host4 }},
	{"ipv6", func(p *testenv.Pod) netip.Addr { return p.IPv6 }, func(n *testenv.Network) netip.Addr { return n.Host6 }},
}

func counters(t *testing.T, d *bpf.Datapath) map[bpf.Counter]uint64 {
	t.Helper()
	c, err := d.Counters()
	if err != nil {
		t.Fatalf("counters: %v", err)
	}
	return c
}

func mustAccepted(t *testing.T, pod *testenv.Pod, port uint16) int {
	t.Helper()
	n, err := pod.Accepted(port)
	if err != nil {
		t.Fatalf("accepted count of %s:%d: %v", pod.Name, port, err)
	}
	return n
}

// waitFor polls cond (a kernel state with no event to wait on) until it
// holds or waitTimeout passes.
func waitFor(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %v", what, waitTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
