package verifier

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		a.Close()
		t.Fatal(r.err)
	}
	t.Cleanup(func() { a.Close(); r.c.Close() })
	return a.(*net.TCPConn), r.c.(*net.TCPConn)
}

func TestRawIOMovesBytesBothWays(t *testing.T) {
	a, b := tcpPair(t)
	ra, rb := newRawIO(a), newRawIO(b)
	if _, ok := ra.(*rawIO); !ok {
		t.Fatalf("newRawIO(*net.TCPConn) = %T, want *rawIO", ra)
	}
	// More than the socket buffers hold, so that Write meets EAGAIN and
	// has to wait for the reader.
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	errc := make(chan error, 1)
	go func() {
		n, err := ra.Write(want)
		if err == nil && n != len(want) {
			err = io.ErrShortWrite
		}
		if err == nil {
			err = a.CloseWrite()
		}
		errc <- err
	}()
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(rb)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if werr := <-errc; werr != nil {
		t.Fatalf("Write: %v", werr)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want the %d written", len(got), len(want))
	}
	// After the peer's FIN, Read reports io.EOF again.
	if n, err := rb.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("Read after EOF = %d, %v; want 0, io.EOF", n, err)
	}
	// Back the other way on the same connection.
	if _, err := rb.Write([]byte("pong")); err != nil {
		t.Fatalf("Write back: %v", err)
	}
	buf := make([]byte, 8)
	a.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := io.ReadAtLeast(ra, buf, 4); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("Read back = %q, %v; want \"pong\"", buf[:n], err)
	}
}

func TestRawIOKeepsDeadlinesAndClose(t *testing.T) {
	a, b := tcpPair(t)
	ra := newRawIO(a)

	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := ra.Read(make([]byte, 1))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past the deadline: %v, want a timeout net.Error", err)
	}
	a.SetReadDeadline(time.Time{})

	// A read parked in the poller ends when the connection is closed.
	errc := make(chan error, 1)
	go func() {
		_, err := ra.Read(make([]byte, 1))
		errc <- err
	}()
	a.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read on a closed conn: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read did not return after Close")
	}

	// A reset from the peer is the errno, as errors.Is callers expect.
	c, d := tcpPair(t)
	d.SetLinger(0)
	d.Close()
	rc := newRawIO(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := rc.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Read after the peer's RST: %v, want ECONNRESET", err)
	}
	_ = b
}

func TestRawIOFallsBackForNonSockets(t *testing.T) {
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if got := newRawIO(p); got != io.ReadWriter(p) {
		t.Fatalf("newRawIO(net.Pipe) = %T, want the conn itself", got)
	}
}
