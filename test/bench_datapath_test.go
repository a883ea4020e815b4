package test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/bpf"
	"github.com/portcullis-mesh/portcullis/bpf/podnet"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

// Ports of the datapath benchmark's pod.
const (
	benchDirectPort   = 8080  // the app, reached directly
	benchCapturePort  = 8081  // the app behind Portcullis capture
	benchRedirectPort = 8082  // the app behind an iptables REDIRECT
	benchRedirectTo   = 15007 // where REDIRECT sends it (a pass-through listener)
	benchWarmup       = 500   // requests per path before measuring
)

// benchResult is what one mode measured.
type benchResult struct {
	connsPerSec float64
	p50, p99    time.Duration
}

// BenchmarkDatapath compares, on one pod behind a veth and a bridge, the
// connection setup rate and the latency of a small HTTP request on a new
// connection (a) straight to the app, (b) through Portcullis capture to a
// pass-through listener that dials the app inside the pod, (c) through an
// iptables REDIRECT (nat PREROUTING in the pod's netns) to the same kind of
// listener. The client closes with RST (SO_LINGER 0) so that no TIME_WAIT
// socket accumulates on either side whatever b.N is.
func BenchmarkDatapath(b *testing.B) {
	testenv.RequirePrivileged(b)
	if _, err := exec.LookPath("iptables"); err != nil {
		b.Fatalf("iptables is needed for the REDIRECT baseline: %v", err)
	}
	d := openDatapath(b)
	n := testenv.NewNetwork(b)
	pod := n.NewPod(b, testenv.PodOptions{AppPorts: []uint16{benchDirectPort, benchCapturePort, benchRedirectPort}})
	if err := d.Enroll(bpf.Pod{Key: "bench/app", NetnsPath: pod.NetnsPath, Ports: bpf.PortSpec{Ports: []uint16{benchCapturePort}}}); err != nil {
		b.Fatal(err)
	}
	dialer, err := podnet.NewDialer(pod.NetnsPath)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dialer.Close() })

	captureLn, err := d.Listen(context.Background(), pod.NetnsPath, netip.Addr{})
	if err != nil {
		b.Fatal(err)
	}
	passThrough(b, captureLn, dialer, func(c *net.TCPConn) (uint16, error) {
		return addrPort(c.LocalAddr()).Port(), nil // capture keeps the original destination
	})
	redirectLn, err := podnet.ListenTCP(context.Background(), pod.NetnsPath, fmt.Sprintf("0.0.0.0:%d", benchRedirectTo))
	if err != nil {
		b.Fatal(err)
	}
	passThrough(b, redirectLn, dialer, originalDstPort)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := pod.Exec(ctx, "iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", fmt.Sprint(benchRedirectPort),
		"-j", "REDIRECT", "--to-ports", fmt.Sprint(benchRedirectTo)); err != nil {
		b.Fatal(err)
	}

	modes := []struct {
		name string
		port uint16
	}{
		{"direct", benchDirectPort},
		{"capture", benchCapturePort},
		{"iptables_redirect", benchRedirectPort},
	}
	connect := make(map[string]benchResult)
	request := make(map[string]benchResult)
	for _, m := range modes {
		addr := netip.AddrPortFrom(pod.IPv4, m.port)
		// Each path must really reach the app before it is measured; the
		// rest of the warm-up lets every path start equally warm.
		if body := benchRequest(b, addr); !strings.Contains(body, fmt.Sprintf("port=%d", m.port)) {
			b.Fatalf("%s: got %q, want the app on port %d", m.name, body, m.port)
		}
		for range benchWarmup {
			benchRequest(b, addr)
		}
	}
	for _, m := range modes {
		addr := netip.AddrPortFrom(pod.IPv4, m.port)
		b.Run("connect/"+m.name, func(b *testing.B) {
			connect[m.name] = measure(b, func() { benchConnect(b, addr) })
		})
	}
	for _, m := range modes {
		addr := netip.AddrPortFrom(pod.IPv4, m.port)
		b.Run("request/"+m.name, func(b *testing.B) {
			request[m.name] = measure(b, func() { benchRequest(b, addr) })
		})
	}
	if got := mustAcceptedB(b, pod, benchCapturePort); got == 0 {
		b.Errorf("the app behind capture accepted nothing")
	}
	logTable(b, modes[0].name, []string{"direct", "capture", "iptables_redirect"}, connect, request)
}

// measure runs op b.N times and reports the rate and latency percentiles.
func measure(b *testing.B, op func()) benchResult {
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		t0 := time.Now()
		op()
		lat = append(lat, time.Since(t0))
	}
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	r := benchResult{
		connsPerSec: float64(b.N) / elapsed.Seconds(),
		p50:         lat[len(lat)*50/100],
		p99:         lat[len(lat)*99/100],
	}
	b.ReportMetric(r.connsPerSec, "conns/s")
	b.ReportMetric(float64(r.p50.Microseconds()), "p50_µs")
	b.ReportMetric(float64(r.p99.Microseconds()), "p99_µs")
	return r
}

func benchDial(b *testing.B, addr netip.AddrPort) *net.TCPConn {
	c, err := net.DialTimeout("tcp", addr.String(), 2*time.Second)
	if err != nil {
		b.Fatalf("dial %s: %v", addr, err)
	}
	tc := c.(*net.TCPConn)
	if err := tc.SetLinger(0); err != nil {
		b.Fatal(err)
	}
	return tc
}

// benchConnect opens and closes one connection.
func benchConnect(b *testing.B, addr netip.AddrPort) {
	benchDial(b, addr).Close()
}

// benchRequest sends one small HTTP request on a new connection and reads
// the answer.
func benchRequest(b testing.TB, addr netip.AddrPort) string {
	c, err := net.DialTimeout("tcp", addr.String(), 2*time.Second)
	if err != nil {
		b.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	if err := c.(*net.TCPConn).SetLinger(0); err != nil {
		b.Fatal(err)
	}
	if err := c.SetDeadline(time.Now().Add(waitTimeout)); err != nil {
		b.Fatal(err)
	}
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: bench\r\n\r\n"); err != nil {
		b.Fatalf("write to %s: %v", addr, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		b.Fatalf("read from %s: %v", addr, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		b.Fatalf("read body from %s: %v", addr, err)
	}
	return string(body)
}

// passThrough serves ln: each connection is joined to the app port that
// target names, dialed inside the pod (over lo, so never captured).
func passThrough(b *testing.B, ln net.Listener, dialer *podnet.Dialer, target func(*net.TCPConn) (uint16, error)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*net.TCPConn)
				port, err := target(tc)
				if err != nil {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				up, err := dialer.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
				cancel()
				if err != nil {
					return
				}
				defer up.Close()
				half := make(chan struct{})
				go func() {
					io.Copy(up, tc)                //nolint:errcheck // ends on close or reset
					up.(*net.TCPConn).CloseWrite() //nolint:errcheck
					close(half)
				}()
				io.Copy(tc, up) //nolint:errcheck
				tc.CloseWrite() //nolint:errcheck
				<-half
			}()
		}
	}()
	b.Cleanup(func() {
		ln.Close()
		<-done
	})
}

// originalDstPort reads the pre-NAT destination port of a REDIRECTed IPv4
// connection (SO_ORIGINAL_DST, a struct sockaddr_in).
func originalDstPort(c *net.TCPConn) (uint16, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		port uint16
		gerr error
	)
	err = rc.Control(func(fd uintptr) {
		// The 16-byte sockaddr_in fits the IPv6Mreq buffer.
		mreq, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if err != nil {
			gerr = err
			return
		}
		port = binary.BigEndian.Uint16(mreq.Multiaddr[2:4])
	})
	if err != nil {
		return 0, err
	}
	return port, gerr
}

func mustAcceptedB(b *testing.B, pod *testenv.Pod, port uint16) int {
	n, err := pod.Accepted(port)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

func logTable(b *testing.B, base string, order []string, connect, request map[string]benchResult) {
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-18s %12s %7s %12s %7s %12s %7s %10s %7s\n", "mode", "connect/s", "ratio", "conn p99", "ratio", "request p50", "ratio", "req p99", "ratio")
	for _, m := range order {
		c, r := connect[m], request[m]
		bc, br := connect[base], request[base]
		fmt.Fprintf(&sb, "%-18s %12.0f %7.2f %12v %7.2f %12v %7.2f %10v %7.2f\n", m,
			c.connsPerSec, ratio(c.connsPerSec, bc.connsPerSec),
			c.p99, ratio(float64(c.p99), float64(bc.p99)),
			r.p50, ratio(float64(r.p50), float64(br.p50)),
			r.p99, ratio(float64(r.p99), float64(br.p99)))
	}
	// Printed, not logged: the log of a benchmark that only runs
	// sub-benchmarks is not shown.
	fmt.Print(sb.String())
}

func ratio(v, base float64) float64 {
	if base == 0 {
		return 0
	}
	return v / base
}
