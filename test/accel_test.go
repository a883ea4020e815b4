package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/bpf"
	"github.com/portcullis-mesh/portcullis/bpf/podnet"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

// accelMark is an SO_MARK unique to this test process, so that parallel
// tests (each with its own datapath attached at the cgroup root) never pair
// each other's sockets.
func accelMark() uint32 {
	return 0x50430000 | uint32(os.Getpid()&0xffff)
}

// TestDatapathAccelRedirectsMarkedConnections: with AccelMark set, a
// connection from a socket carrying the mark to an application in the same
// netns moves its bytes socket to socket (TCP sends nothing), in order,
// both ways, with back-pressure and half-close intact; an unmarked
// connection, and a marked one whose peer is in another netns, stay on TCP.
func TestDatapathAccelRedirectsMarkedConnections(t *testing.T) {
	t.Parallel()
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			testenv.RequirePrivileged(t)
			mark := accelMark()
			d, err := bpf.Open(bpf.Config{PinDir: datapathPinDir(t), AccelMark: mark})
			if err != nil {
				t.Fatalf("open datapath: %v", err)
			}
			t.Cleanup(func() {
				if err := d.Teardown(); err != nil {
					t.Errorf("teardown: %v", err)
				}
			})
			n := testenv.NewNetwork(t)
			pod := n.NewPod(t, testenv.PodOptions{NoProcess: true})
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			ln, err := podnet.ListenTCP(ctx, pod.NetnsPath, ":0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			dst := netip.AddrPortFrom(fam.addr(pod), uint16(ln.Addr().(*net.TCPAddr).Port))

			// Marked, same netns: accelerated.
			before := counters(t, d)
			up, app := dialPair(t, pod.NetnsPath, ln, dst, mark)
			after := counters(t, d)
			if got := after[bpf.AccelPaired] - before[bpf.AccelPaired]; got != 1 {
				t.Errorf("accel_paired grew by %d on a marked connection, want 1", got)
			}
			const size = 8 << 20
			exchange(t, up, app, size)
			for name, c := range map[string]*net.TCPConn{"agent side": up, "application side": app} {
				if got := tcpBytesSent(t, c); got != 0 {
					t.Errorf("accelerated %s: TCP sent %d bytes, want 0 (all redirected)", name, got)
				}
			}
			halfClose(t, up, app)
			if c := counters(t, d); c[bpf.AccelTCPOnly] != after[bpf.AccelTCPOnly] || c[bpf.AccelUpdateError] != 0 {
				t.Errorf("counters %v: want no accel_tcp_only and no accel_update_error", c)
			}

			// The verifier's liveness probe of a pooled connection (a
			// non-blocking MSG_PEEK) sees an accelerated peer's bytes and
			// its close.
			up, app = dialPair(t, pod.NetnsPath, ln, dst, mark)
			if n, err := peek(t, up); n >= 0 || !errors.Is(err, unix.EAGAIN) {
				t.Errorf("peek on an idle accelerated connection: %d, %v; want EAGAIN", n, err)
			}
			if _, err := app.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if err := waitPeek(t, up, 1); err != nil {
				t.Errorf("peek after the application wrote a byte: %v", err)
			}
			if _, err := io.ReadFull(up, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			app.Close()
			if err := waitPeek(t, up, 0); err != nil {
				t.Errorf("peek after the application closed: %v", err)
			}

			// Unmarked: plain TCP.
			before = counters(t, d)
			up, app = dialPair(t, pod.NetnsPath, ln, dst, 0)
			exchange(t, up, app, 1<<20)
			if got := tcpBytesSent(t, up); got < 1<<20 {
				t.Errorf("unmarked connection: TCP sent %d bytes, want at least %d", got, 1<<20)
			}
			if got := counters(t, d)[bpf.AccelPaired] - before[bpf.AccelPaired]; got != 0 {
				t.Errorf("accel_paired grew by %d on an unmarked connection, want 0", got)
			}

			// Marked, peer in the host netns: never paired; the first
			// message finds no peer and the connection stays on TCP.
			hostLn, err := net.Listen("tcp", netip.AddrPortFrom(fam.host(n), 0).String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { hostLn.Close() })
			hostDst := netip.MustParseAddrPort(hostLn.Addr().String())
			before = counters(t, d)
			up, app = dialPair(t, pod.NetnsPath, hostLn, hostDst, mark)
			exchange(t, up, app, 1<<20)
			if got := tcpBytesSent(t, up); got < 1<<20 {
				t.Errorf("marked connection to another netns: TCP sent %d bytes, want at least %d", got, 1<<20)
			}
			c := counters(t, d)
			if got := c[bpf.AccelPaired] - before[bpf.AccelPaired]; got != 0 {
				t.Errorf("accel_paired grew by %d for a peer in another netns, want 0", got)
			}
			if got := c[bpf.AccelTCPOnly] - before[bpf.AccelTCPOnly]; got != 1 {
				t.Errorf("accel_tcp_only grew by %d for a peer in another netns, want 1", got)
			}
		})
	}
}

// dialPair connects from inside the netns at netnsPath (with SO_MARK mark
// when non-zero) to dst served by ln, and returns both ends.
func dialPair(t *testing.T, netnsPath string, ln net.Listener, dst netip.AddrPort, mark uint32) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	dialer, err := podnet.NewDialer(netnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer dialer.Close()
	if mark != 0 {
		dialer.Dialer.Control = podnet.MarkControl(mark)
	}
	type res struct {
		c   net.Conn
		err error
	}
	accepted := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		accepted <- res{c, err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, err := dialer.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var r res
	select {
	case r = <-accepted:
	case <-ctx.Done():
		t.Fatalf("accept from %s: %v", dst, ctx.Err())
	}
	if r.err != nil {
		t.Fatalf("accept: %v", r.err)
	}
	t.Cleanup(func() { r.c.Close() })
	for _, x := range []net.Conn{c, r.c} {
		x.SetDeadline(time.Now().Add(waitTimeout))
	}
	return c.(*net.TCPConn), r.c.(*net.TCPConn)
}

// exchange sends size pseudo-random bytes each way at once and checks that
// each side reads exactly what the other wrote. The readers take small
// reads, so that the writers meet full receive queues (back-pressure).
func exchange(t *testing.T, a, b *net.TCPConn, size int) {
	t.Helper()
	ab, ba := pattern(1, size), pattern(2, size)
	errc := make(chan error, 4)
	write := func(c *net.TCPConn, p []byte) {
		_, err := c.Write(p)
		errc <- err
	}
	read := func(c *net.TCPConn, want []byte, name string) {
		got := make([]byte, 0, len(want))
		buf := make([]byte, 3000)
		for len(got) < len(want) {
			n, err := c.Read(buf[:min(len(buf), len(want)-len(got))])
			got = append(got, buf[:n]...)
			if err != nil {
				errc <- fmt.Errorf("%s: read after %d of %d bytes: %w", name, len(got), len(want), err)
				return
			}
		}
		if !bytes.Equal(got, want) {
			i := 0
			for i < len(got) && got[i] == want[i] {
				i++
			}
			errc <- fmt.Errorf("%s: %d bytes read differ from those written from offset %d", name, len(got), i)
			return
		}
		errc <- nil
	}
	go write(a, ab)
	go write(b, ba)
	go read(b, ab, "a->b")
	go read(a, ba, "b->a")
	for range 4 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

func pattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

// halfClose: a's FIN reaches b after everything a sent; b can still answer
// and its close reaches a after its last bytes.
func halfClose(t *testing.T, a, b *net.TCPConn) {
	t.Helper()
	if _, err := a.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	if err := a.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(b); err != nil || string(got) != "last words" {
		t.Fatalf("after the peer's CloseWrite: read %q, %v; want \"last words\" then EOF", got, err)
	}
	if _, err := b.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(a)
	if err != nil && !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("after the peer's close: %v", err)
	}
	if string(got) != "reply" {
		t.Fatalf("after the peer's close: read %q, want \"reply\"", got)
	}
}

// peek is the verifier's probe: recvfrom(MSG_PEEK|MSG_DONTWAIT) of one byte.
func peek(t *testing.T, c *net.TCPConn) (int, error) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var perr error
	if err := rc.Control(func(fd uintptr) {
		n, _, perr = unix.Recvfrom(int(fd), make([]byte, 1), unix.MSG_PEEK|unix.MSG_DONTWAIT)
	}); err != nil {
		t.Fatal(err)
	}
	return n, perr
}

// waitPeek waits, in the runtime's poller and bounded by a read deadline,
// until peek returns want bytes: 1 for data, 0 for the peer's close.
func waitPeek(t *testing.T, c *net.TCPConn, want int) error {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	defer c.SetReadDeadline(time.Now().Add(waitTimeout))
	var n int
	var perr error
	if err := rc.Read(func(fd uintptr) bool {
		n, _, perr = unix.Recvfrom(int(fd), make([]byte, 1), unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return !errors.Is(perr, unix.EAGAIN)
	}); err != nil {
		return fmt.Errorf("wait for the peer: %w", err)
	}
	if perr != nil || n != want {
		return fmt.Errorf("peek = %d, %v; want %d", n, perr, want)
	}
	return nil
}

// tcpBytesSent is tcpi_bytes_sent of c: the payload bytes TCP transmitted,
// retransmissions (tail loss probes happen even on a bridge) included.
func tcpBytesSent(t *testing.T, c *net.TCPConn) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatalf("TCP_INFO: %v", ierr)
	}
	return info.Bytes_sent
}
