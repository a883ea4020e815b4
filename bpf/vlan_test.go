package bpf

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/bpf/podnet"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

// htons converts a 16-bit value to network byte order (for AF_PACKET).
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// sizedSYN is an IPv4 SYN from src to dst carrying n bytes of payload, with
// valid checksums.
func sizedSYN(src, dst netip.Addr, sport, dport uint16, n int) []byte {
	th := tcpHeader(sport, dport)
	binary.BigEndian.PutUint32(th[4:], 1000)
	binary.BigEndian.PutUint16(th[14:], 65535)
	seg := append(th, make([]byte, n)...)
	var sum uint32
	for _, a := range [][]byte{src.AsSlice(), dst.AsSlice()} {
		for i := 0; i < len(a); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(a[i:]))
		}
	}
	sum += protoTCP + uint32(len(seg))
	binary.BigEndian.PutUint16(seg[16:], checksum(sum, seg))
	pkt := ipv4(protoTCP, 0, seg)
	copy(pkt[12:16], src.AsSlice())
	copy(pkt[16:20], dst.AsSlice())
	binary.BigEndian.PutUint16(pkt[10:], checksum(0, pkt[:20]))
	return pkt
}

// TestCaptureDropsTaggedSYN: a SYN to a captured port sent on the pod's
// L2 segment behind VLAN priority tags (VID 0) does not reach the pod's
// application. The stack strips one tag before TCX and, with no VLAN
// device in the pod, the next one after TCX (vlan_do_receive), then
// delivers the SYN to IP: without parsing behind the tags capture passed
// it, and the application answered. Nothing listens as the agent here, so
// the SYN must be dropped whatever the number of tags; a SYN to an
// uncaptured port still reaches the stack.
func TestCaptureDropsTaggedSYN(t *testing.T) {
	d := openTest(t)
	n := testenv.NewNetwork(t)
	pod := n.NewPod(t, testenv.PodOptions{NoProcess: true})
	app, err := podnet.ListenTCP(context.Background(), pod.NetnsPath, netip.AddrPortFrom(netip.IPv4Unspecified(), testPort).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	if err := d.Enroll(Pod{Key: "test/vlan", NetnsPath: pod.NetnsPath, Ports: PortSpec{Ports: []uint16{testPort}}}); err != nil {
		t.Fatal(err)
	}
	h := testenv.Netlink(t, pod.NetnsPath)
	eth, err := h.LinkByName(testenv.PodInterface)
	if err != nil {
		t.Fatal(err)
	}
	podMAC := eth.Attrs().HardwareAddr
	hostVeth, err := netlink.LinkByName(pod.HostVeth)
	if err != nil {
		t.Fatal(err)
	}
	bridge, err := netlink.LinkByName(n.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	srcMAC := bridge.Attrs().HardwareAddr
	ifindex := hostVeth.Attrs().Index

	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000}); err != nil {
		t.Fatal(err)
	}

	// answer sends the SYN behind the tags and returns the TCP flags of
	// the pod's answer, 0 for none within timeout.
	answer := func(tpids []uint16, sport, dport uint16, timeout time.Duration) uint8 {
		t.Helper()
		frame := append(append([]byte{}, podMAC...), srcMAC...)
		for _, tpid := range tpids {
			frame = binary.BigEndian.AppendUint16(frame, tpid)
			frame = binary.BigEndian.AppendUint16(frame, 0) // PCP 0, VID 0
		}
		frame = binary.BigEndian.AppendUint16(frame, ethIPv4)
		frame = append(frame, sizedSYN(n.Host4, pod.IPv4, sport, dport, 0)...)
		var addr [8]byte
		copy(addr[:], podMAC)
		if err := unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6, Addr: addr}); err != nil {
			t.Fatalf("send: %v", err)
		}
		deadline := time.Now().Add(timeout)
		buf := make([]byte, 2048)
		for time.Now().Before(deadline) {
			m, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue // SO_RCVTIMEO: look at the deadline again
			}
			p := buf[:m]
			if len(p) < 14+40 || binary.BigEndian.Uint16(p[12:]) != ethIPv4 {
				continue
			}
			ip := p[14:]
			if ip[9] != protoTCP || netip.AddrFrom4([4]byte(ip[12:16])) != pod.IPv4 {
				continue
			}
			th := ip[int(ip[0]&0xf)*4:]
			if binary.BigEndian.Uint16(th[0:]) == dport && binary.BigEndian.Uint16(th[2:]) == sport {
				return th[13]
			}
		}
		return 0
	}

	tests := []struct {
		name  string
		tpids []uint16
	}{
		{"untagged", nil},
		{"one 802.1Q tag", []uint16{eth8021Q}},
		{"two 802.1Q tags", []uint16{eth8021Q, eth8021Q}},
		{"802.1AD and 802.1Q tags", []uint16{eth8021AD, eth8021Q}},
	}
	sport := uint16(42000)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sport++
			diff := counterDiff(t, d, func() {
				if got := answer(tt.tpids, sport, testPort, 500*time.Millisecond); got != 0 {
					t.Errorf("SYN to captured port %d: the pod answered %#x, want nothing (no agent listener: dropped)", testPort, got)
				}
			})
			if diff[CaptureNoListener]+diff[CaptureMalformed] != 1 {
				t.Errorf("counter changes %v: want the SYN counted as dropped (capture_no_listener or capture_malformed)", diff)
			}
		})
	}
	// Capture only drops what it captures: behind two tags, a SYN to an
	// uncaptured port reaches the stack, which resets it.
	if got := answer([]uint16{eth8021Q, eth8021Q}, 42100, otherPort, waitTimeout); got&flagRST == 0 {
		t.Errorf("SYN to uncaptured port %d behind two tags: answer %#x, want a RST from the stack", otherPort, got)
	}
}
