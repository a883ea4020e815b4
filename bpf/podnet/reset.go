package podnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Conn is one TCP connection as sock_diag(7) lists it inside a netns.
type Conn struct {
	// Local and Remote are the connection's ends, IPv4 ones unmapped.
	Local, Remote netip.AddrPort
	// Inode is the socket's inode; 0 while it waits in a listener's
	// accept queue.
	Inode uint32

	family uint8
	id     [48]byte // struct inet_diag_sockid, cookie included
}

// ResetFilter picks the connections ResetInbound closes.
type ResetFilter struct {
	// Captured reports whether capture now covers a local port. Nil means
	// no port: nothing is reset.
	Captured func(port uint16) bool
	// Own reports whether a socket inode belongs to the caller (the
	// agent's accepted connections have captured local ports too). It is
	// called only after the connections are listed, so a caller that reads
	// its own sockets at the first call also knows those it accepted while
	// the listing ran. Nil means none does.
	Own func(inode uint32) bool
	// Before is what Established listed before capture could steer any
	// connection of these ports to the agent (before the agent listened in
	// the netns, or before the ports were captured). A connection still
	// waiting in an accept queue (inode 0) is the application's, and is
	// reset, only if it is in Before. Nil leaves every such connection
	// alone.
	Before *Snapshot
}

// Snapshot is the set of TCP connections established in a netns at one
// moment, and of the handshakes in progress then, by socket cookie (a
// connection keeps the cookie of its handshake's request socket:
// inet_csk_clone_lock copies ir_cookie).
type Snapshot struct {
	cookies map[uint64]bool
}

// Established lists the TCP connections established or being established
// in the netns at netnsPath now, for ResetFilter.Before.
func Established(netnsPath string) (*Snapshot, error) {
	s := &Snapshot{cookies: map[uint64]bool{}}
	err := Do(netnsPath, func() error {
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			conns, err := diagDump(family, 1<<tcpEstablished|1<<tcpSynRecv)
			if err != nil {
				return err
			}
			for _, c := range conns {
				s.cookies[c.cookie()] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list connections in netns %s: %w", netnsPath, err)
	}
	return s, nil
}

// Len is the number of connections and handshakes in s.
func (s *Snapshot) Len() int { return len(s.cookies) }

// has reports whether c, or the handshake it came from, was listed in s. A
// nil s lists nothing.
func (s *Snapshot) has(c Conn) bool { return s != nil && s.cookies[c.cookie()] }

// ResetInbound closes, with SOCK_DESTROY (the peer gets a RST), the TCP
// connections of the netns at netnsPath that reached an application
// listener before capture covered its port. Capture only redirects new
// connections (packets of an established socket pass), so without this a
// connection opened a moment before a policy selected the pod would stay
// unchecked for as long as it lasts. It returns the connections closed.
//
// A connection is closed when it is established, its local port is
// captured and has a listener in the netns (so it is inbound, not an
// outgoing connection that happens to use the number), its peer is another
// host (connections over the pod's loopback never pass capture: they
// include the agent's own upstream connections), and it is not Own.
// A connection still in an accept queue (inode 0) has no owner to tell it
// from one captured for the agent: it is closed only if f.Before lists it
// or its handshake. A handshake f.Before lists that is still in progress
// is dropped too (capture lets a started handshake complete to the
// application; the client's next segment then gets a RST).
func ResetInbound(netnsPath string, f ResetFilter) ([]Conn, error) {
	if f.Captured == nil {
		return nil, nil
	}
	var reset []Conn
	err := Do(netnsPath, func() error {
		var all []Conn
		var errs []error
		listening := map[uint16]bool{}
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			conns, err := diagDump(family, 1<<tcpEstablished|1<<tcpSynRecv)
			if err != nil {
				return err
			}
			all = append(all, conns...)
			ls, err := diagDump(family, 1<<tcpListen)
			if err != nil {
				return err
			}
			for _, l := range ls {
				listening[l.Local.Port()] = true
			}
		}
		for _, c := range all {
			port := c.Local.Port()
			switch {
			case !f.Captured(port), !listening[port],
				c.Remote.Addr().IsLoopback(), c.Remote.Addr() == c.Local.Addr(),
				c.Inode == 0 && !f.Before.has(c),
				c.Inode != 0 && f.Own != nil && f.Own(c.Inode):
				continue
			}
			switch err := diagDestroy(c); {
			case err == nil:
				reset = append(reset, c)
			case errors.Is(err, unix.ENOENT):
				// Closed meanwhile: nothing left to reset.
			default:
				// One that cannot be reset does not spare the others.
				errs = append(errs, fmt.Errorf("destroy %s -> %s: %w", c.Remote, c.Local, err))
			}
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return reset, fmt.Errorf("reset connections in netns %s: %w", netnsPath, err)
	}
	return reset, nil
}

// OwnSockets returns the inodes of the sockets this process holds open.
func OwnSockets() (map[uint32]bool, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, fmt.Errorf("list own file descriptors: %w", err)
	}
	own := make(map[uint32]bool, len(ents))
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		if s, ok := strings.CutPrefix(target, "socket:["); ok {
			if ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 32); err == nil {
				own[uint32(ino)] = true
			}
		}
	}
	return own, nil
}

// TCP states as sock_diag numbers them (include/net/tcp_states.h).
const (
	tcpEstablished = 1
	tcpSynRecv     = 3
	tcpListen      = 10
)

// sock_diag message types (linux/sock_diag.h).
const (
	sockDiagByFamily = 20
	sockDestroy      = 21
)

const (
	sizeofDiagReq = 56 // struct inet_diag_req_v2
	sizeofDiagMsg = 72 // struct inet_diag_msg
)

// diagRequest builds one inet_diag_req_v2 message.
func diagRequest(typ, flags uint16, family uint8, states uint32, id *[48]byte) []byte {
	b := make([]byte, unix.SizeofNlMsghdr+sizeofDiagReq)
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], flags|unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(b[8:], 1) // sequence
	r := b[unix.SizeofNlMsghdr:]
	r[0], r[1] = family, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(r[4:], states)
	if id != nil {
		copy(r[8:], id[:])
	}
	return b
}

// diagExchange sends req on a new NETLINK_SOCK_DIAG socket of the current
// thread's netns and hands every message of the answer to fn until DONE
// (dumps) or the ACK (requests).
func diagExchange(req []byte, fn func(typ uint16, data []byte) error) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return fmt.Errorf("open sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send sock_diag request: %w", err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("read sock_diag answer: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("parse sock_diag answer: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return errors.New("short sock_diag error message")
				}
				if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
					return unix.Errno(-e)
				}
				return nil // the ACK
			default:
				if err := fn(m.Header.Type, m.Data); err != nil {
					return err
				}
			}
		}
	}
}

// diagDump lists the TCP sockets of one family in the given states.
func diagDump(family uint8, states uint32) ([]Conn, error) {
	var out []Conn
	err := diagExchange(diagRequest(sockDiagByFamily, unix.NLM_F_DUMP, family, states, nil), func(typ uint16, d []byte) error {
		if typ != sockDiagByFamily || len(d) < sizeofDiagMsg {
			return fmt.Errorf("unexpected sock_diag message type %d (%d bytes)", typ, len(d))
		}
		c := Conn{family: d[0], Inode: binary.NativeEndian.Uint32(d[68:])}
		copy(c.id[:], d[4:52])
		sport, dport := binary.BigEndian.Uint16(c.id[0:]), binary.BigEndian.Uint16(c.id[2:])
		var src, dst netip.Addr
		if c.family == unix.AF_INET {
			src, dst = netip.AddrFrom4([4]byte(c.id[4:8])), netip.AddrFrom4([4]byte(c.id[20:24]))
		} else {
			src, dst = netip.AddrFrom16([16]byte(c.id[4:20])), netip.AddrFrom16([16]byte(c.id[20:36]))
		}
		// IPv4 peers of a dual-stack socket show as v4-mapped: unmap them.
		c.Local, c.Remote = netip.AddrPortFrom(src.Unmap(), sport), netip.AddrPortFrom(dst.Unmap(), dport)
		out = append(out, c)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list tcp sockets (family %d): %w", family, err)
	}
	return out, nil
}

// cookie is the socket's cookie, as sock_diag lists it (idiag_cookie).
func (c Conn) cookie() uint64 { return binary.NativeEndian.Uint64(c.id[40:48]) }

// diagDestroy closes exactly the socket c lists: its id carries the
// socket's cookie, so a new connection that reuses the addresses is never
// hit.
func diagDestroy(c Conn) error {
	return diagExchange(diagRequest(sockDestroy, unix.NLM_F_ACK, c.family, ^uint32(0), &c.id), func(uint16, []byte) error { return nil })
}
