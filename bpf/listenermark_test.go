package bpf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/portcullis-mesh/portcullis/bpf/podnet"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

// dropWait is how long a dial to a captured port waits for an answer that
// must not come: the SYN and its first retransmission (1s) are dropped.
const dropWait = 1500 * time.Millisecond

// listenSock listens on addr in the current netns, plain TCP, with SO_MARK
// mark (none when 0) and, when flag, flagged as the agent's listener in d;
// closed when the test ends.
func listenSock(t *testing.T, d *Datapath, addr string, mark uint32, flag bool) net.Listener {
	t.Helper()
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		if mark != 0 {
			if err := podnet.MarkControl(mark)(network, address, c); err != nil {
				return err
			}
		}
		if !flag {
			return nil
		}
		var err error
		if cerr := c.Control(func(fd uintptr) { err = d.flagListener(int(fd)) }); cerr != nil {
			return cerr
		}
		return err
	}}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// TestCaptureProgramListenerFlag runs the capture program with
// BPF_PROG_TEST_RUN on a SYN to a captured port, with a socket listening
// on the listener port in the test's netns (where the program looks
// sockets up): only one Listen flagged (pc_listeners) is the agent's; the
// SYN is dropped, counted as capture_foreign_listener, for any other, also
// one carrying the SO_MARK the agent's listeners had before (which
// CAP_NET_RAW is enough to set).
func TestCaptureProgramListenerFlag(t *testing.T) {
	tcp := tcpHeader(40000, testPort)
	pkts := map[string][]byte{
		"ipv4": ethFrame(ethIPv4, ipv4(protoTCP, 0, tcp)),
		"ipv6": ethFrame(ethIPv6, ipv6(nil, protoTCP, tcp)),
	}
	tests := []struct {
		name string
		mark uint32 // of the listener; 0: none
		flag bool
		// assigned: the program got as far as bpf_sk_assign, which
		// BPF_PROG_TEST_RUN refuses (the skb is not at TC ingress):
		// capture_assign_error, where a live packet is assigned.
		assigned bool
	}{
		{name: "plain listener"},
		{name: "listener with the old listener mark", mark: oldListenerMark},
		{name: "listener with the acceleration mark", mark: 0x5043},
		{name: "agent listener", flag: true, assigned: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := openTestWith(t, Config{ListenerPort: freePort(t)})
			const cookie = 0x3a4c
			if err := d.writePorts(&podState{key: "test/mark", cookie: cookie}, PortSpec{Ports: []uint16{testPort}}); err != nil {
				t.Fatal(err)
			}
			// A dual-stack wildcard socket: found for both families.
			listenSock(t, d, fmt.Sprintf(":%d", d.ListenerPort()), tt.mark, tt.flag)
			for _, kind := range []captureKind{captureEthernet, captureL3} {
				prog := loadCaptureTest(t, d, cookie, kind)
				for family, pkt := range pkts {
					var got uint32
					diff := counterDiff(t, d, func() {
						var err error
						if got, err = prog.Run(&ebpf.RunOptions{Data: pkt}); err != nil {
							t.Fatalf("run: %v", err)
						}
					})
					want := map[Counter]uint64{CaptureForeignListener: 1}
					if tt.assigned {
						want = map[Counter]uint64{CaptureAssignError: 1}
					}
					if got != tcxDrop {
						t.Errorf("%s/%s: verdict got %d, want %d (drop)", kind, family, int32(got), tcxDrop)
					}
					if d := cmp.Diff(want, diff); d != "" {
						t.Errorf("%s/%s: counter changes (-want +got):\n%s", kind, family, d)
					}
				}
			}
		})
	}
}

// dialDropped fails the test unless a connection to dst is not
// established within dropWait.
func dialDropped(t *testing.T, dst netip.AddrPort) {
	t.Helper()
	c, err := net.DialTimeout("tcp", dst.String(), dropWait)
	if err == nil {
		c.Close()
		t.Errorf("dial %s: a connection was established, want it dropped", dst)
		return
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("dial %s: got %v, want a timeout (SYN dropped)", dst, err)
	}
}

// acceptedNone fails the test if ln has a connection to accept.
func acceptedNone(t *testing.T, what string, ln net.Listener) {
	t.Helper()
	// Not time.Now(): Accept would fail on the past deadline without
	// looking at the queue. Any connection is queued by now.
	if err := ln.(*net.TCPListener).SetDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err == nil {
		t.Errorf("%s accepted a connection from %s to %s, want none", what, c.RemoteAddr(), c.LocalAddr())
		c.Close()
		return
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("%s: accept: %v", what, err)
	}
}

// TestCaptureRefusesAppListener: the pod's own application listens on the
// listener port and the agent does not (its listener is missing, or could
// not be opened because of that socket). A connection to a captured port
// is dropped, over IPv4 and IPv6, instead of being handed to the app's
// socket unchecked; neither that socket nor the app's own socket on the
// captured port accept anything. An SO_MARK on the app's socket (the one
// the agent's listeners carried before, which CAP_NET_RAW suffices to set)
// changes nothing.
func TestCaptureRefusesAppListener(t *testing.T) {
	d := openTest(t)
	n := testenv.NewNetwork(t)
	for _, bind := range []string{"wildcard", "pod address", "wildcard with the old listener mark"} {
		t.Run(bind, func(t *testing.T) {
			pod := n.NewPod(t, testenv.PodOptions{NoProcess: true})
			squat := []net.Listener{listenIn(t, pod.NetnsPath, "", testPort)} // the app's own port
			switch bind {
			case "wildcard with the old listener mark":
				// What a root process of the pod with CAP_NET_RAW can do.
				lc := net.ListenConfig{Control: podnet.MarkControl(oldListenerMark)}
				ln, err := podnet.Listen(context.Background(), pod.NetnsPath, &lc, fmt.Sprintf(":%d", d.ListenerPort()))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ln.Close() })
				squat = append(squat, ln)
			case "wildcard":
				squat = append(squat, listenIn(t, pod.NetnsPath, "", d.ListenerPort()))
			default:
				squat = append(squat, listenIn(t, pod.NetnsPath, pod.IPv4.String(), d.ListenerPort()),
					listenIn(t, pod.NetnsPath, pod.IPv6.String(), d.ListenerPort()))
			}
			key := "test/squat-" + pod.Name
			if err := d.Enroll(Pod{Key: key, NetnsPath: pod.NetnsPath, Ports: PortSpec{Ports: []uint16{testPort}}}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Remove(key) })
			diff := counterDiff(t, d, func() {
				for _, ip := range []netip.Addr{pod.IPv4, pod.IPv6} {
					dialDropped(t, netip.AddrPortFrom(ip, testPort))
				}
			})
			if diff[CaptureForeignListener] < 2 || diff[CaptureAssigned] != 0 {
				t.Errorf("counter changes %v: want capture_foreign_listener >= 2 (a SYN per family) and no capture_assigned", diff)
			}
			for _, ln := range squat {
				acceptedNone(t, "the app's socket on "+ln.Addr().String(), ln)
			}
		})
	}
}

// listenIn listens on host:port in the netns, unmarked, as an application
// of the pod would; closed when the test ends.
func listenIn(t *testing.T, netnsPath, host string, port uint16) net.Listener {
	t.Helper()
	ln, err := podnet.ListenTCP(context.Background(), netnsPath, net.JoinHostPort(host, fmt.Sprint(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// TestCaptureAssignsAgentListener: the agent's listener (Listen, on the
// pod's IPv4 address) and an application socket on the same port for the
// pod's IPv6 address and for loopback coexist. An IPv4 connection to a
// captured port reaches the agent's listener with the original destination
// as local address; an IPv6 one finds the app's socket and is dropped; the
// app's sockets accept nothing.
func TestCaptureAssignsAgentListener(t *testing.T) {
	d := openTest(t)
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	agent, err := d.Listen(context.Background(), pod.NetnsPath, pod.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close() })
	app := []net.Listener{
		listenIn(t, pod.NetnsPath, pod.IPv6.String(), d.ListenerPort()),
		listenIn(t, pod.NetnsPath, "127.0.0.1", d.ListenerPort()),
		listenIn(t, pod.NetnsPath, "", testPort), // the app's own port
	}
	const key = "test/agent-listener"
	if err := d.Enroll(Pod{Key: key, NetnsPath: pod.NetnsPath, Ports: PortSpec{Ports: []uint16{testPort}}}); err != nil {
		t.Fatal(err)
	}

	dst := netip.AddrPortFrom(pod.IPv4, testPort)
	diff := counterDiff(t, d, func() {
		c, err := net.DialTimeout("tcp", dst.String(), waitTimeout)
		if err != nil {
			t.Fatalf("dial %s: %v", dst, err)
		}
		defer c.Close()
		if err := agent.(*net.TCPListener).SetDeadline(time.Now().Add(waitTimeout)); err != nil {
			t.Fatal(err)
		}
		ac, err := agent.Accept()
		if err != nil {
			t.Fatalf("the agent's listener accepted nothing: %v", err)
		}
		defer ac.Close()
		if got := netip.MustParseAddrPort(ac.LocalAddr().String()); got != dst {
			t.Errorf("agent accepted with local address %s, want %s", got, dst)
		}
	})
	if diff[CaptureAssigned] != 1 || diff[CaptureForeignListener] != 0 {
		t.Errorf("IPv4: counter changes %v: want capture_assigned 1, no capture_foreign_listener", diff)
	}

	diff = counterDiff(t, d, func() { dialDropped(t, netip.AddrPortFrom(pod.IPv6, testPort)) })
	if diff[CaptureForeignListener] == 0 || diff[CaptureAssigned] != 0 {
		t.Errorf("IPv6: counter changes %v: want capture_foreign_listener, no capture_assigned", diff)
	}
	for _, ln := range app {
		acceptedNone(t, "the app's socket on "+ln.Addr().String(), ln)
	}
}

// TestReadoptionListenerFlag: the flags of a previous run's listeners do
// not count after a restart (pc_listeners is not pinned, and the re-adopted
// capture links are re-pointed to programs using the new run's map): a
// listener the old datapath opened is refused, one the new datapath opens
// is used.
func TestReadoptionListenerFlag(t *testing.T) {
	testenv.RequirePrivileged(t)
	pinDir := testPinDir(t)
	d1, err := Open(Config{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	const key = "test/remark"
	if err := d1.Enroll(Pod{Key: key, NetnsPath: pod.NetnsPath, Ports: PortSpec{Ports: []uint16{testPort}}}); err != nil {
		t.Fatal(err)
	}
	old, err := d1.Listen(context.Background(), pod.NetnsPath, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { old.Close() })
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}

	d2, err := Open(Config{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d2.Teardown(); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	})
	dst := netip.AddrPortFrom(pod.IPv4, testPort)
	diff := counterDiff(t, d2, func() { dialDropped(t, dst) })
	if diff[CaptureForeignListener] == 0 {
		t.Errorf("with the old agent's listener: counter changes %v, want capture_foreign_listener", diff)
	}
	acceptedNone(t, "the previous run's listener", old)
	old.Close()

	ln, err := d2.Listen(context.Background(), pod.NetnsPath, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := net.DialTimeout("tcp", dst.String(), waitTimeout)
	if err != nil {
		t.Fatalf("dial %s with the new agent's listener: %v", dst, err)
	}
	c.Close()
}

// TestListenFlagsSockets: Listen's sockets are flagged in pc_listeners,
// for IPv4, IPv6 and the dual-stack wildcard, and are plain TCP (MPTCP
// listens through a subflow socket the flag is not on).
func TestListenFlagsSockets(t *testing.T) {
	d := openTest(t)
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	for _, addr := range []netip.Addr{{}, pod.IPv4, pod.IPv6} {
		ln, err := d.Listen(context.Background(), pod.NetnsPath, addr)
		if err != nil {
			t.Fatalf("Listen on %v: %v", addr, err)
		}
		raw, err := ln.(*net.TCPListener).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var (
			flag       uint8
			proto      int
			lerr, serr error
		)
		if err := raw.Control(func(fd uintptr) {
			lerr = d.objs.PcListeners.Lookup(int32(fd), &flag)
			proto, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PROTOCOL)
		}); err != nil || serr != nil {
			t.Fatalf("getsockopt SO_PROTOCOL: %v %v", err, serr)
		}
		if got, want := netip.MustParseAddrPort(ln.Addr().String()).Port(), d.ListenerPort(); got != want {
			t.Errorf("Listen on %v: port %d, want %d", addr, got, want)
		}
		ln.Close()
		if lerr != nil || flag != 1 {
			t.Errorf("Listen on %v: flag %d (%v), want 1", addr, flag, lerr)
		}
		if proto != syscall.IPPROTO_TCP {
			t.Errorf("Listen on %v: protocol %d, want TCP (%d)", addr, proto, syscall.IPPROTO_TCP)
		}
	}
}

// oldListenerMark is the SO_MARK an earlier capture program required of the
// agent's listeners (CAP_NET_RAW suffices to set it): a listener carrying
// it without the storage flag must get nothing.
const oldListenerMark = 0x504c
