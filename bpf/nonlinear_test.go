package bpf

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

// vnetTun is a tun device with IFF_VNET_HDR: each packet written is
// preceded by struct tun_pi (4 bytes) and struct virtio_net_hdr (10
// bytes), whose hdr_len is how much of the packet the driver puts in the
// skb's linear part; the rest goes to page fragments. So the test controls
// whether the IP and TCP headers are linear.
type vnetTun struct {
	file *os.File
}

const vnetPrefix = 4 + 10 // tun_pi, virtio_net_hdr

func newVnetTun(t *testing.T, netnsPath, name string) *vnetTun {
	t.Helper()
	f := testenv.TunFlags(t, netnsPath, name, unix.IFF_TUN|unix.IFF_VNET_HDR, -1)
	h := testenv.Netlink(t, netnsPath)
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: tunLocal.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return &vnetTun{file: f}
}

// answer writes a SYN from tunPeer to tunLocal:dport carrying size bytes,
// with the given virtio_net_hdr hdr_len, and returns the TCP flags of the
// answer, 0 for none within timeout.
func (v *vnetTun) answer(t *testing.T, sport, dport uint16, size int, hdrLen uint16, timeout time.Duration) uint8 {
	t.Helper()
	hdr := make([]byte, vnetPrefix)
	binary.BigEndian.PutUint16(hdr[2:], unix.ETH_P_IP) // tun_pi.proto
	binary.LittleEndian.PutUint16(hdr[4+2:], hdrLen)   // virtio_net_hdr.hdr_len
	if _, err := v.file.Write(append(hdr, sizedSYN(tunPeer, tunLocal, sport, dport, size)...)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := v.file.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 70000)
	for {
		m, err := v.file.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0
		}
		if err != nil {
			t.Fatal(err)
		}
		if m < vnetPrefix {
			continue
		}
		p := buf[vnetPrefix:m]
		if len(p) < 40 || p[0]>>4 != 4 || p[9] != protoTCP {
			continue
		}
		th := p[int(p[0]&0xf)*4:]
		if binary.BigEndian.Uint16(th[0:]) == dport && binary.BigEndian.Uint16(th[2:]) == sport {
			return th[13]
		}
	}
}

// TestCaptureNonLinearL3: on a device without an Ethernet header, a packet
// whose IP or TCP header is outside the skb's linear part (a tun with
// IFF_VNET_HDR and a small hdr_len, GSO) is parsed after a pull, not
// dropped as malformed: an uncaptured port reaches the stack, a captured
// one the agent's listener. bpf_skb_pull_data(skb, 0) pulled nothing and
// every such packet was dropped, whatever its port.
func TestCaptureNonLinearL3(t *testing.T) {
	d := openTest(t)
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	tun := newVnetTun(t, pod.NetnsPath, "pcvnet0")
	ln, err := d.Listen(context.Background(), pod.NetnsPath, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	if err := d.Enroll(Pod{Key: "test/vnet", NetnsPath: pod.NetnsPath, Ports: PortSpec{Ports: []uint16{testPort}}}); err != nil {
		t.Fatal(err)
	}
	sport := uint16(41000)
	// hdr_len 0 is linear (the driver copies a good amount); 10 leaves the
	// IP header, 30 the TCP header outside the linear part.
	for _, hdrLen := range []uint16{0, 10, 30} {
		for _, size := range []int{0, 8000} {
			name := fmt.Sprintf("hdr_len %d, %d bytes", hdrLen, size)
			sport++
			diff := counterDiff(t, d, func() {
				if got := tun.answer(t, sport, otherPort, size, hdrLen, waitTimeout); got&flagRST == 0 {
					t.Errorf("%s: SYN to uncaptured port %d: answer %#x, want a RST from the stack", name, otherPort, got)
				}
			})
			if diff[CaptureMalformed] != 0 {
				t.Errorf("%s: counter changes %v: want no capture_malformed", name, diff)
			}
			sport++
			diff = counterDiff(t, d, func() {
				if got := tun.answer(t, sport, testPort, size, hdrLen, waitTimeout); got != flagSYN|flagACK {
					t.Errorf("%s: SYN to captured port %d: answer %#x, want SYN-ACK from the agent's listener", name, testPort, got)
				}
			})
			if diff[CaptureAssigned] != 1 {
				t.Errorf("%s: counter changes %v: want capture_assigned 1", name, diff)
			}
		}
	}
}
