package verifier

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// upConn is a connection to the application for HTTP/1.1.
type upConn struct {
	c         net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	dst       netip.AddrPort
	idleSince time.Time
	// reused is true when the connection came from the pool: a failure
	// before the first response byte may then be a stale connection and a
	// bodiless request is retried once on a fresh one.
	reused bool
}

// pool keeps idle HTTP/1.1 connections per destination, most recently used
// first (LIFO keeps the working set small and warm).
type pool struct {
	dialer      Dialer
	dialTimeout time.Duration
	maxIdle     int
	idleTimeout time.Duration
	probeAfter  time.Duration

	mu     sync.Mutex
	idle   map[netip.AddrPort][]*upConn
	closed bool
}

func newPool(d Dialer, dialTimeout time.Duration, maxIdle int, idleTimeout time.Duration) *pool {
	return &pool{dialer: d, dialTimeout: dialTimeout, maxIdle: maxIdle, idleTimeout: idleTimeout,
		probeAfter: probeAfter, idle: map[netip.AddrPort][]*upConn{}}
}

// get returns a pooled connection to dst or dials a new one.
func (p *pool) get(ctx context.Context, dst netip.AddrPort) (*upConn, error) {
	now := time.Now()
	p.mu.Lock()
	list := p.idle[dst]
	for len(list) > 0 {
		uc := list[len(list)-1]
		list[len(list)-1] = nil
		list = list[:len(list)-1]
		idle := now.Sub(uc.idleSince)
		if idle > p.idleTimeout || (idle > p.probeAfter && !peerOpen(uc.c)) {
			uc.c.Close()
			continue
		}
		p.idle[dst] = list
		p.mu.Unlock()
		uc.reused = true
		return uc, nil
	}
	delete(p.idle, dst)
	p.mu.Unlock()
	return p.dial(ctx, dst)
}

func (p *pool) dial(ctx context.Context, dst netip.AddrPort) (*upConn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.dialTimeout)
	defer cancel()
	c, err := p.dialer.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return nil, fmt.Errorf("dial application %s: %w", dst, err)
	}
	rw := newRawIO(c)
	return &upConn{c: c, br: bufio.NewReaderSize(rw, 4096), bw: bufio.NewWriterSize(rw, 4096), dst: dst}, nil
}

// probeAfter is the idle time after which a pooled connection is checked
// before use. Applications close idle keep-alive connections (Node.js after
// 5s by default); a request with a body sent on such a connection could not
// be retried.
const probeAfter = time.Second

// peerOpen reports whether the application has neither closed c nor sent
// unsolicited bytes on it, with one non-blocking MSG_PEEK. Connections that
// are not plain sockets are assumed open.
func peerOpen(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	open := true
	var b [1]byte
	rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		open = n < 0 && (err == syscall.EAGAIN || err == syscall.EWOULDBLOCK)
		return true
	})
	return open
}

// put returns a connection whose last exchange completed cleanly.
func (p *pool) put(uc *upConn) {
	if p.maxIdle < 0 || uc.br.Buffered() > 0 {
		// Bytes after a complete response: the application is confused.
		uc.c.Close()
		return
	}
	now := time.Now()
	uc.idleSince = now
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		uc.c.Close()
		return
	}
	list := p.idle[uc.dst]
	// Drop the stale ones at the cold end.
	for len(list) > 0 && now.Sub(list[0].idleSince) > p.idleTimeout {
		list[0].c.Close()
		list = list[1:]
	}
	if len(list) >= p.maxIdle {
		list[0].c.Close()
		list = list[1:]
	}
	p.idle[uc.dst] = append(list, uc)
}

func (p *pool) closeIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for dst, list := range p.idle {
		for _, uc := range list {
			uc.c.Close()
		}
		delete(p.idle, dst)
	}
}
