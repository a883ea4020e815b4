package bpf

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/bpf/podnet"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

// waitTimeout bounds every wait of these tests for the kernel or a watcher.
const waitTimeout = 10 * time.Second

// waitFor polls cond until it holds, failing the test after waitTimeout.
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
			t.Fatalf("%s: not after %v", what, waitTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Addresses on the test tun device, inside the pod's netns only: the
// remote end (the source of the packets the test writes) and the pod's
// address on the tun device.
var (
	tunPeer   = netip.MustParseAddr("192.0.2.1")
	tunLocal  = netip.MustParseAddr("192.0.2.2")
	tunPeer6  = netip.MustParseAddr("2001:db8:7c::1")
	tunLocal6 = netip.MustParseAddr("2001:db8:7c::2")
)

// tunDevice is a tun device (IFF_TUN: IP packets, no link layer header,
// ARPHRD_NONE) inside a pod's netns. Packets the test writes to file
// arrive at the device's ingress, where capture runs with the packet
// starting at its IP header; packets the pod sends through it are read
// from file.
type tunDevice struct {
	name    string
	ifindex int
	file    *os.File
}

// newTun creates a tun device in the netns, up, with tunLocal/24. It goes
// away when the test ends (closing the only file descriptor of a
// non-persistent tun device deletes it).
func newTun(t *testing.T, netnsPath string) *tunDevice {
	t.Helper()
	return newTunOfType(t, netnsPath, "pctun0", -1, "none")
}

// newTunOfType is newTun with the device's ARPHRD type set to linkType
// (TUNSETLINK; -1 keeps ARPHRD_NONE), which netlink names encap. The tun
// driver still delivers IP packets (IFF_NO_PI: skb->protocol from the IP
// version), whatever the type says.
func newTunOfType(t *testing.T, netnsPath, name string, linkType int, encap string) *tunDevice {
	t.Helper()
	tun := createTun(t, netnsPath, name, linkType)
	h := testenv.Netlink(t, netnsPath)
	l, err := h.LinkByIndex(tun.ifindex)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Attrs().EncapType; got != encap {
		t.Fatalf("tun link type: got %q, want %s", got, encap)
	}
	for _, a := range []*netlink.Addr{
		{IPNet: &net.IPNet{IP: tunLocal.AsSlice(), Mask: net.CIDRMask(24, 32)}},
		{IPNet: &net.IPNet{IP: tunLocal6.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD},
	} {
		if err := h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	// The kernel adds the IPv6 local route from a work queue, after
	// AddrAdd returned (see testenv's waitIPv6Ready).
	waitFor(t, "local route of "+tunLocal6.String(), func() (bool, error) {
		routes, err := h.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{
			Table: unix.RT_TABLE_LOCAL,
			Dst:   &net.IPNet{IP: tunLocal6.AsSlice(), Mask: net.CIDRMask(128, 128)},
		}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
		return len(routes) > 0, err
	})
	return tun
}

// arphrdNetlink is ARPHRD_NETLINK (nlmon devices): a link type capture
// does not know.
const arphrdNetlink = 824

// createTun creates a tun device, down, in the netns (testenv.Tun).
func createTun(t *testing.T, netnsPath, name string, linkType int) *tunDevice {
	t.Helper()
	tun := &tunDevice{name: name, file: testenv.Tun(t, netnsPath, name, linkType)}
	tun.ifindex = ifindexOf(t, netnsPath, name)
	return tun
}

// checksum is the Internet checksum (RFC 1071) of b, starting from sum.
func checksum(sum uint32, b []byte) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// synPacket is a TCP SYN from src:sport to dst:dport (IPv4 or IPv6) with
// valid checksums, as the stack checks them after capture.
func synPacket(src, dst netip.Addr, sport, dport uint16) []byte {
	th := tcpHeader(sport, dport)
	binary.BigEndian.PutUint32(th[4:], 1000) // seq
	binary.BigEndian.PutUint16(th[14:], 65535)
	// Pseudo header (RFC 793, RFC 8200 section 8.1): addresses, protocol,
	// TCP length.
	var sum uint32
	for _, a := range [][]byte{src.AsSlice(), dst.AsSlice()} {
		for i := 0; i < len(a); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(a[i:]))
		}
	}
	sum += protoTCP + uint32(len(th))
	binary.BigEndian.PutUint16(th[16:], checksum(sum, th))
	if src.Is6() {
		pkt := ipv6(nil, protoTCP, th)
		copy(pkt[8:24], src.AsSlice())
		copy(pkt[24:40], dst.AsSlice())
		return pkt
	}
	pkt := ipv4(protoTCP, 0, th)
	copy(pkt[12:16], src.AsSlice())
	copy(pkt[16:20], dst.AsSlice())
	binary.BigEndian.PutUint16(pkt[10:], checksum(0, pkt[:20]))
	return pkt
}

// tcpFlags
const (
	flagSYN = 0x02
	flagRST = 0x04
	flagACK = 0x10
)

// answer writes a SYN from the peer to the pod's address of the same
// family as local through the tun device, and returns the TCP flags of
// the pod's answer to it, or 0 when none comes within timeout.
func (tun *tunDevice) answer(t *testing.T, local netip.Addr, sport, dport uint16, timeout time.Duration) uint8 {
	t.Helper()
	peer := tunPeer
	if local.Is6() {
		peer = tunPeer6
	}
	if _, err := tun.file.Write(synPacket(peer, local, sport, dport)); err != nil {
		t.Fatalf("write SYN: %v", err)
	}
	if err := tun.file.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	for {
		n, err := tun.file.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0
		}
		if err != nil {
			t.Fatalf("read tun: %v", err)
		}
		// Only the answer to this SYN: TCP from dport to sport (IPv6
		// without extension headers, as the stack sends it).
		var th []byte
		switch p := buf[:n]; {
		case n >= 40 && p[0]>>4 == 4 && p[9] == protoTCP:
			th = p[int(p[0]&0xf)*4:]
		case n >= 60 && p[0]>>4 == 6 && p[6] == protoTCP:
			th = p[40:]
		default:
			continue
		}
		if len(th) < 14 || binary.BigEndian.Uint16(th[0:]) != dport || binary.BigEndian.Uint16(th[2:]) != sport {
			continue
		}
		return th[13]
	}
}

// TestTunCapture: a pod with a tun device (no Ethernet header) is
// enrolled, and a connection to a captured port arriving through the tun
// device reaches the agent's listener, or is dropped without one, exactly
// as on Ethernet; an uncaptured port reaches the stack.
func TestTunCapture(t *testing.T) {
	d := openTest(t)
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	tun := newTun(t, pod.NetnsPath)
	ln, err := d.Listen(context.Background(), pod.NetnsPath, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })

	key := "test/tun"
	if err := d.Enroll(Pod{Key: key, NetnsPath: pod.NetnsPath, Ports: PortSpec{Ports: []uint16{testPort}}}); err != nil {
		t.Fatalf("Enroll with a tun device: %v", err)
	}
	info := podInfo(t, d, key)
	if !slices.Contains(info.Ifindexes, tun.ifindex) || len(info.Ifindexes) != 2 {
		t.Errorf("captured interfaces: got %v, want eth0 and the tun device (%d)", info.Ifindexes, tun.ifindex)
	}

	// Nothing listens on testPort or otherPort in the pod: a SYN-ACK can
	// only come from the agent's listener, the stack answers a RST.
	sport := uint16(40000)
	for _, local := range []netip.Addr{tunLocal, tunLocal6} {
		sport++
		diff := counterDiff(t, d, func() {
			if got := tun.answer(t, local, sport, testPort, waitTimeout); got != flagSYN|flagACK {
				t.Errorf("SYN to captured %s through %s: answer flags %#x, want SYN-ACK from the agent's listener", netip.AddrPortFrom(local, testPort), tun.name, got)
			}
		})
		if diff[CaptureAssigned] != 1 {
			t.Errorf("%s: counter changes %v: want capture_assigned 1", local, diff)
		}
		sport++
		if got := tun.answer(t, local, sport, otherPort, waitTimeout); got&flagRST == 0 {
			t.Errorf("SYN to uncaptured %s: answer flags %#x, want a RST from the stack", netip.AddrPortFrom(local, otherPort), got)
		}
	}

	ln.Close()
	for _, local := range []netip.Addr{tunLocal, tunLocal6} {
		sport++
		diff := counterDiff(t, d, func() {
			if got := tun.answer(t, local, sport, testPort, 300*time.Millisecond); got != 0 {
				t.Errorf("SYN to captured %s without listener: answer flags %#x, want none (dropped)", netip.AddrPortFrom(local, testPort), got)
			}
		})
		if diff[CaptureNoListener] != 1 {
			t.Errorf("%s: counter changes %v: want capture_no_listener 1", local, diff)
		}
	}
}

// TestReadoptionRepointsEachKind: after a restart, each pinned link is
// switched to the new program instance of its kind, and capture through
// the tun device still parses its packets from the IP header.
func TestReadoptionRepointsEachKind(t *testing.T) {
	testenv.RequirePrivileged(t)
	pinDir := testPinDir(t)
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	tun := newTun(t, pod.NetnsPath)
	p := Pod{Key: "test/readopt", NetnsPath: pod.NetnsPath, Ports: PortSpec{Ports: []uint16{testPort}}}

	d1, err := Open(Config{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := d1.Enroll(p); err != nil {
		d1.Teardown()
		t.Fatal(err)
	}
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "watcher goroutines gone after Close", func() (bool, error) {
		return !goroutinesMatch("(*Datapath).watch", "linkSubscribeAt"), nil
	})
	d2, err := Open(Config{PinDir: pinDir})
	if err != nil {
		t.Fatalf("re-open: %v", err)
	}
	t.Cleanup(func() {
		if err := d2.Teardown(); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	})
	eth0 := ifindexOf(t, pod.NetnsPath, testenv.PodInterface)
	want := map[int]ebpf.ProgramID{
		eth0:        progID(t, d2.pods[p.Key].progs[captureEthernet]),
		tun.ifindex: progID(t, d2.pods[p.Key].progs[captureL3]),
	}
	got := make(map[int]ebpf.ProgramID)
	for ifindex := range want {
		ids := tcxIngress(t, pod.NetnsPath, ifindex)
		if len(ids) != 1 {
			t.Fatalf("ifindex %d: %d programs at tcx ingress, want 1", ifindex, len(ids))
		}
		got[ifindex] = ids[0]
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("programs by interface after re-adoption (-want +got):\n%s", diff)
	}

	ln, err := d2.Listen(context.Background(), pod.NetnsPath, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got := tun.answer(t, tunLocal, 40100, testPort, waitTimeout); got != flagSYN|flagACK {
		t.Errorf("after re-adoption, SYN to captured port through %s: answer flags %#x, want SYN-ACK", tun.name, got)
	}
}

// TestEnrollCapturesUnknownLinkTypes: an interface of a link type capture
// has no name for (ARPHRD_NETLINK here; IPoIB, nlmon or a future type on a
// node) gets the L3 instance, down or up, and connections arriving through
// it are captured like on any other interface. Before, such an interface
// that was up failed Enroll with nothing attached: the pod stayed open.
func TestEnrollCapturesUnknownLinkTypes(t *testing.T) {
	d := openTest(t)
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	down := createTun(t, pod.NetnsPath, "pcodd0", arphrdNetlink)
	odd := newTunOfType(t, pod.NetnsPath, "pcodd1", arphrdNetlink, "unknown824")
	ln, err := d.Listen(context.Background(), pod.NetnsPath, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	key := "test/odd"
	if err := d.Enroll(Pod{Key: key, NetnsPath: pod.NetnsPath, Ports: PortSpec{Ports: []uint16{testPort}}}); err != nil {
		t.Fatalf("Enroll with interfaces of an unknown link type: %v", err)
	}
	info := podInfo(t, d, key)
	if len(info.Ifindexes) != 3 || !slices.Contains(info.Ifindexes, down.ifindex) || !slices.Contains(info.Ifindexes, odd.ifindex) {
		t.Errorf("captured interfaces: got %v, want eth0, %d and %d", info.Ifindexes, down.ifindex, odd.ifindex)
	}
	d.mu.Lock()
	l3 := d.pods[key].progs[captureL3]
	d.mu.Unlock()
	if got, want := tcxIngress(t, pod.NetnsPath, odd.ifindex), []ebpf.ProgramID{progID(t, l3)}; !slices.Equal(got, want) {
		t.Errorf("programs at TCX ingress of %s: got %v, want the L3 instance %v", odd.name, got, want)
	}

	// Nothing of the pod listens on testPort or otherPort: a SYN-ACK can
	// only come from the agent's listener, the stack answers a RST.
	diff := counterDiff(t, d, func() {
		if got := odd.answer(t, tunLocal, 40200, testPort, waitTimeout); got != flagSYN|flagACK {
			t.Errorf("SYN to captured port through %s: answer flags %#x, want SYN-ACK from the agent's listener", odd.name, got)
		}
	})
	if diff[CaptureAssigned] != 1 {
		t.Errorf("counter changes %v: want capture_assigned 1", diff)
	}
	if got := odd.answer(t, tunLocal, 40201, otherPort, waitTimeout); got&flagRST == 0 {
		t.Errorf("SYN to uncaptured port through %s: answer flags %#x, want a RST from the stack", odd.name, got)
	}
	ln.Close()
	if got := odd.answer(t, tunLocal, 40202, testPort, 300*time.Millisecond); got != 0 {
		t.Errorf("SYN to captured port through %s without listener: answer flags %#x, want none (dropped)", odd.name, got)
	}
}

// TestEnrollReplacesDefunctLinks: a link the datapath holds for an
// interface but that is no longer attached there (its interface went away
// while the watcher was resubscribing and the ifindex was reused, or it
// was detached behind the datapath's back) is replaced by the next Enroll,
// not taken for "already attached".
func TestEnrollReplacesDefunctLinks(t *testing.T) {
	d := openTest(t)
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	key := "test/defunct"
	p := Pod{Key: key, NetnsPath: pod.NetnsPath, Ports: PortSpec{Ports: []uint16{testPort}}}
	if err := d.Enroll(p); err != nil {
		t.Fatal(err)
	}
	eth := ifindexOf(t, pod.NetnsPath, testenv.PodInterface)
	d.mu.Lock()
	prog := d.pods[key].progs[captureEthernet]
	err := d.pods[key].links[eth].link.Detach()
	d.mu.Unlock()
	if err != nil {
		t.Fatalf("detach behind the datapath's back: %v", err)
	}
	if got := tcxIngress(t, pod.NetnsPath, eth); len(got) != 0 {
		t.Fatalf("programs at TCX ingress after detaching: got %v, want none", got)
	}
	if err := d.Enroll(p); err != nil {
		t.Fatal(err)
	}
	if got, want := tcxIngress(t, pod.NetnsPath, eth), []ebpf.ProgramID{progID(t, prog)}; !slices.Equal(got, want) {
		t.Errorf("programs at TCX ingress of eth0 after Enroll: got %v, want capture %v", got, want)
	}
}

// TestWatchCapturesLateInterfaces: a pod enrolled with lo only is captured
// once its interface appears; the link goes when the interface does; Remove
// ends the watcher without leaking goroutines or file descriptors.
func TestWatchCapturesLateInterfaces(t *testing.T) {
	type watchErr struct {
		key string
		err error
	}
	errs := make(chan watchErr, 16)
	d := openTestWith(t, Config{OnError: func(key string, err error) {
		select {
		case errs <- watchErr{key, err}:
		default:
		}
	}})
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true, NoInterface: true})
	ln, err := d.Listen(context.Background(), pod.NetnsPath, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	fdsBefore := openFDs(t)

	key := "test/late"
	if err := d.Enroll(Pod{Key: key, NetnsPath: pod.NetnsPath, Ports: PortSpec{Ports: []uint16{testPort}}}); err != nil {
		t.Fatalf("Enroll with lo only: %v", err)
	}
	if got := podInfo(t, d, key).Ifindexes; len(got) != 0 {
		t.Fatalf("captured interfaces before the veth exists: %v", got)
	}

	pod.AddInterface(t)
	eth0 := ifindexOf(t, pod.NetnsPath, testenv.PodInterface)
	waitFor(t, "capture attached to the new interface", func() (bool, error) {
		return slices.Equal(podInfo(t, d, key).Ifindexes, []int{eth0}), nil
	})
	dst := netip.AddrPortFrom(pod.IPv4, testPort)
	accepted := make(chan netip.AddrPort, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		accepted <- netip.MustParseAddrPort(c.LocalAddr().String())
		c.Close()
	}()
	c, err := net.DialTimeout("tcp", dst.String(), waitTimeout)
	if err != nil {
		t.Fatalf("dial %s (captured, nothing else listens): %v", dst, err)
	}
	c.Close()
	select {
	case local := <-accepted:
		if local.Addr().Unmap() != dst.Addr() || local.Port() != dst.Port() {
			t.Errorf("agent accepted with local address %s, want %s", local, dst)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the agent's listener accepted nothing")
	}

	// The interface goes: so does its link (the kernel already detached it).
	if err := netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: pod.HostVeth}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "link of the deleted interface forgotten", func() (bool, error) {
		return len(podInfo(t, d, key).Ifindexes) == 0, nil
	})
	entries, err := os.ReadDir(d.podPinDir(podInfo(t, d, key).NetnsCookie))
	if err != nil || len(entries) != 0 {
		t.Errorf("pins of the pod after its interface went: %v, %v; want none", entries, err)
	}

	if err := d.Remove(key); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "watcher goroutines gone", func() (bool, error) {
		return !goroutinesMatch("(*Datapath).watch", "linkSubscribeAt"), nil
	})
	waitFor(t, "file descriptors released", func() (bool, error) {
		return openFDs(t) <= fdsBefore, nil
	})
	select {
	case e := <-errs:
		t.Errorf("OnError(%s, %v): want no watcher error", e.key, e.err)
	default:
	}
}

// TestWatchCapturesUnknownLinkTypes: an interface of a link type capture
// has no name for that appears after Enroll is captured (with the L3
// instance) when it comes up, and nothing is reported.
func TestWatchCapturesUnknownLinkTypes(t *testing.T) {
	errs := make(chan error, 16)
	d := openTestWith(t, Config{OnError: func(key string, err error) {
		if key == "test/report" {
			select {
			case errs <- err:
			default:
			}
		}
	}})
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	if err := d.Enroll(Pod{Key: "test/report", NetnsPath: pod.NetnsPath}); err != nil {
		t.Fatal(err)
	}
	odd := createTun(t, pod.NetnsPath, "pcodd1", arphrdNetlink)
	testenv.SetLinkUp(t, pod.NetnsPath, odd.name)
	waitFor(t, "capture on the unknown-type interface", func() (bool, error) {
		return len(tcxIngress(t, pod.NetnsPath, odd.ifindex)) == 1, nil
	})
	if got := podInfo(t, d, "test/report").Ifindexes; !slices.Contains(got, odd.ifindex) {
		t.Errorf("captured interfaces: got %v, want %d among them", got, odd.ifindex)
	}
	select {
	case err := <-errs:
		t.Errorf("OnError: %v, want no error", err)
	default:
	}
	if err := podInfo(t, d, "test/report").WatchErr; err != nil {
		t.Errorf("PodInfo.WatchErr: %v, want nil", err)
	}
}

// TestOpenClearsIdentityMaps: identity numbers of a previous agent run are
// not trusted after a restart (the new agent numbers workloads afresh),
// while capture is re-adopted.
func TestOpenClearsIdentityMaps(t *testing.T) {
	testenv.RequirePrivileged(t)
	pinDir := testPinDir(t)
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	p := Pod{Key: "test/identities", NetnsPath: pod.NetnsPath, Ports: PortSpec{Ports: []uint16{testPort}}}

	d1, err := Open(Config{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := d1.Enroll(p); err != nil {
		d1.Teardown()
		t.Fatal(err)
	}
	if err := d1.RegisterIdentity(pod.CgroupID, 7); err != nil {
		t.Fatal(err)
	}
	conn := connKey(netip.MustParseAddrPort("198.18.0.1:40000"), netip.MustParseAddrPort("198.18.0.2:8080"))
	if err := d1.objs.PcConns.Put(conn, portcullisPcConn{Identity: 7, CgroupId: pod.CgroupID}); err != nil {
		t.Fatal(err)
	}
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}

	d2, err := Open(Config{PinDir: pinDir})
	if err != nil {
		t.Fatalf("re-open: %v", err)
	}
	t.Cleanup(func() {
		if err := d2.Teardown(); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	})
	entries, err := d2.MapEntries()
	if err != nil {
		t.Fatal(err)
	}
	if entries[portcullisMapPcCgroups] != 0 || entries[portcullisMapPcConns] != 0 {
		t.Errorf("identity maps after re-open: %v, want pc_cgroups and pc_conns empty", entries)
	}
	if !d2.Capturing(p.Key) || len(podInfo(t, d2, p.Key).Ifindexes) != 1 {
		t.Errorf("capture after re-open: Capturing %v, pod %+v; want re-adopted", d2.Capturing(p.Key), podInfo(t, d2, p.Key))
	}
}

func podInfo(t *testing.T, d *Datapath, key string) PodInfo {
	t.Helper()
	pods, err := d.Pods()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if p.Key == key {
			return p
		}
	}
	t.Fatalf("pod %s not enrolled", key)
	return PodInfo{}
}

func ifindexOf(t *testing.T, netnsPath, name string) int {
	t.Helper()
	var ifindex int
	err := podnet.Do(netnsPath, func() error {
		iface, err := net.InterfaceByName(name)
		if err != nil {
			return err
		}
		ifindex = iface.Index
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ifindex
}

func tcxIngress(t *testing.T, netnsPath string, ifindex int) []ebpf.ProgramID {
	t.Helper()
	var ids []ebpf.ProgramID
	err := podnet.Do(netnsPath, func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		for _, p := range res.Programs {
			ids = append(ids, p.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	if p == nil {
		t.Fatal("program not loaded")
	}
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("program without id")
	}
	return id
}

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// goroutinesMatch reports whether a goroutine's stack mentions any of the
// function names.
func goroutinesMatch(funcs ...string) bool {
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	for _, f := range funcs {
		if strings.Contains(stacks, f) {
			return true
		}
	}
	return false
}
