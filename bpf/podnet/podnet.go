// Package podnet runs socket operations inside a pod's network namespace:
// the agent's listeners that capture delivers to, and dials to the app that
// go over the pod's loopback and so are never captured again.
//
// Every operation locks its goroutine to an OS thread, switches the thread
// into the pod's netns, does the work and switches back. If switching back
// fails the thread stays locked, so the Go runtime destroys it when the
// goroutine ends instead of reusing a thread in the wrong namespace.
package podnet

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"
)

// Do runs fn on an OS thread that is in the network namespace at
// netnsPath. fn must not start goroutines that expect to be in the
// namespace: they run on other threads.
func Do(netnsPath string, fn func() error) error {
	target, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", netnsPath, err)
	}
	defer target.Close()
	return do(target, fn)
}

// DoIn is Do for a netns handle the caller holds open.
func DoIn(ns netns.NsHandle, fn func() error) error {
	return do(ns, fn)
}

func do(target netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns: %w", err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it dies with this goroutine.
		return fmt.Errorf("restore netns: %w (after: %v)", err, fnErr)
	}
	runtime.UnlockOSThread()
	return fnErr
}

// ListenTCP opens a TCP listener inside the netns at netnsPath. addr is as
// for net.Listen("tcp", addr): ":15006" gives one dual-stack socket that
// accepts IPv4 and IPv6 connections, which is what capture expects.
func ListenTCP(ctx context.Context, netnsPath, addr string) (net.Listener, error) {
	return Listen(ctx, netnsPath, &net.ListenConfig{}, addr)
}

// Listen is ListenTCP with the socket options of lc (its Control function
// runs in the netns, before bind).
func Listen(ctx context.Context, netnsPath string, lc *net.ListenConfig, addr string) (net.Listener, error) {
	var ln net.Listener
	err := Do(netnsPath, func() error {
		var err error
		ln, err = lc.Listen(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in netns %s: %w", addr, netnsPath, err)
	}
	return ln, nil
}

// Dialer connects from inside one network namespace. It keeps the namespace
// open; Close releases it. A Dialer is safe for concurrent use.
type Dialer struct {
	// Dialer holds the dial options. The zero value is a plain net.Dialer.
	Dialer net.Dialer

	path string
	ns   netns.NsHandle
}

// NewDialer returns a Dialer for the netns at netnsPath.
func NewDialer(netnsPath string) (*Dialer, error) {
	h, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", netnsPath, err)
	}
	return &Dialer{path: netnsPath, ns: h}, nil
}

// DialContext connects to addr from inside the namespace. The socket is
// created in the namespace and stays there; the calling goroutine is back
// in its own namespace when DialContext returns.
//
// addr must hold an IP address, not a name: resolving a name, and racing
// IPv4 against IPv6, would run on goroutines outside the namespace.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if _, err := netip.ParseAddrPort(addr); err != nil {
		return nil, fmt.Errorf("dial %s in netns %s: address must be ip:port: %w", addr, d.path, err)
	}
	var c net.Conn
	err := do(d.ns, func() error {
		var err error
		c, err = d.Dialer.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s in netns %s: %w", addr, d.path, err)
	}
	return c, nil
}

// Close releases the namespace handle.
func (d *Dialer) Close() error {
	return d.ns.Close()
}

// MarkControl returns a net.Dialer or net.ListenConfig Control function
// that sets SO_MARK to mark on every socket before it connects or binds
// (needs CAP_NET_ADMIN). The agent marks its upstream sockets so that the
// datapath's local acceleration (bpf.Config.AccelMark) knows them, and its
// listeners so that capture does (bpf.Config.ListenerMark).
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(mark))
		})
		if err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set SO_MARK: %w", serr)
		}
		return nil
	}
}
