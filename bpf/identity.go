package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
)

// RegisterIdentity names the workload that owns a cgroup: connections
// opened by processes in the cgroup, or in any cgroup below it, are
// attributed to identity (the deepest registered cgroup wins). cgroupID is
// cgroupv2.ID of the directory. identity must not be 0. Registrations, and
// the connections recorded with them, do not survive a restart: Open
// empties them, since identity numbers are the caller's and belong to one
// run; register every workload again after Open.
func (d *Datapath) RegisterIdentity(cgroupID uint64, identity uint32) error {
	if identity == 0 {
		return fmt.Errorf("register identity of cgroup %d: identity 0 is reserved", cgroupID)
	}
	if err := d.objs.PcCgroups.Put(cgroupID, identity); err != nil {
		return fmt.Errorf("register identity %d of cgroup %d: %w", identity, cgroupID, err)
	}
	return nil
}

// UnregisterIdentity forgets a cgroup. Unknown cgroups are ignored.
// Connection records already made stay until their connections close.
func (d *Datapath) UnregisterIdentity(cgroupID uint64) error {
	if err := d.objs.PcCgroups.Delete(cgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unregister cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// Identities returns the registered cgroups: cgroup ID -> identity.
func (d *Datapath) Identities() (map[uint64]uint32, error) {
	out := make(map[uint64]uint32)
	var (
		k uint64
		v uint32
	)
	iter := d.objs.PcCgroups.Iterate()
	for iter.Next(&k, &v) {
		out[k] = v
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("iterate identities: %w", err)
	}
	return out, nil
}

// Connection is a connection opened by a registered workload.
type Connection struct {
	// Caller is the connecting socket's address, Callee where it connected
	// to (before any capture: the original destination).
	Caller, Callee netip.AddrPort
	Identity       uint32
	// CgroupID is the registered cgroup that matched the caller.
	CgroupID uint64
}

// LookupConnection returns the identity of the workload on this node that
// opened the TCP connection between remote (the caller) and local (the
// accepted socket's local address, which capture keeps equal to the
// original destination). ok is false when the caller is not a registered
// workload of this node (another node, the host, an unregistered process)
// or the connection is already closed: look it up right after accept.
func (d *Datapath) LookupConnection(local, remote netip.AddrPort) (identity uint32, ok bool) {
	var v portcullisPcConn
	if err := d.objs.PcConns.Lookup(connKey(remote, local), &v); err != nil {
		return 0, false
	}
	return v.Identity, true
}

// LookupConn is LookupConnection for a TCP connection the agent accepted:
// local and remote come from the socket. ok is false for other kinds of
// connections.
func (d *Datapath) LookupConn(c net.Conn) (identity uint32, ok bool) {
	local, lok := c.LocalAddr().(*net.TCPAddr)
	remote, rok := c.RemoteAddr().(*net.TCPAddr)
	if !lok || !rok {
		return 0, false
	}
	return d.LookupConnection(local.AddrPort(), remote.AddrPort())
}

// Connections dumps the recorded connections (for the debug CLI).
func (d *Datapath) Connections() ([]Connection, error) {
	var (
		k   portcullisPcConnKey
		v   portcullisPcConn
		out []Connection
	)
	iter := d.objs.PcConns.Iterate()
	for iter.Next(&k, &v) {
		out = append(out, Connection{
			Caller:   netip.AddrPortFrom(unpackAddr(k.Saddr), k.Sport),
			Callee:   netip.AddrPortFrom(unpackAddr(k.Daddr), k.Dport),
			Identity: v.Identity,
			CgroupID: v.CgroupId,
		})
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("iterate connections: %w", err)
	}
	return out, nil
}

// connKey builds a struct pc_conn_key: 16-byte addresses with IPv4 as
// IPv4-mapped IPv6, stored as the kernel's network-order bytes.
func connKey(caller, callee netip.AddrPort) portcullisPcConnKey {
	return portcullisPcConnKey{
		Saddr: packAddr(caller.Addr()),
		Daddr: packAddr(callee.Addr()),
		Sport: caller.Port(),
		Dport: callee.Port(),
	}
}

func packAddr(a netip.Addr) [4]uint32 {
	b := a.Unmap().As16() // As16 maps IPv4 to ::ffff:a.b.c.d
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

func unpackAddr(w [4]uint32) netip.Addr {
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[4*i:], w[i])
	}
	return netip.AddrFrom16(b).Unmap()
}
