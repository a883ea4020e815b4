package bpf

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// Packet builders for BPF_PROG_TEST_RUN.

func ethFrame(proto uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(b[6:12], []byte{2, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(b[12:], proto)
	return append(b, payload...)
}

// vlanFrame builds an Ethernet frame with a tag (VID 0) of each TPID in
// tpids before the payload of ethertype proto.
func vlanFrame(tpids []uint16, proto uint16, payload []byte) []byte {
	var tags []byte
	for i := 1; i < len(tpids); i++ {
		tags = binary.BigEndian.AppendUint16(tags, 0)
		tags = binary.BigEndian.AppendUint16(tags, tpids[i])
	}
	tags = binary.BigEndian.AppendUint16(tags, 0)
	tags = binary.BigEndian.AppendUint16(tags, proto)
	return ethFrame(tpids[0], append(tags, payload...))
}

func tcpHeader(sport, dport uint16) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	b[12] = 5 << 4
	b[13] = 0x02 // SYN
	return b
}

// ipv4 builds an IPv4 packet; fragOff is the raw flags+offset field.
func ipv4(proto uint8, fragOff uint16, payload []byte) []byte {
	b := make([]byte, 20, 20+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(20+len(payload)))
	binary.BigEndian.PutUint16(b[6:], fragOff)
	b[8] = 64
	b[9] = proto
	copy(b[12:16], []byte{198, 18, 0, 1})
	copy(b[16:20], []byte{198, 18, 0, 2})
	return append(b, payload...)
}

// ipv6 builds an IPv6 packet whose payload starts with the given extension
// headers (each 8 bytes, next header chained), then the transport header.
func ipv6(exts []uint8, proto uint8, payload []byte) []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	b[7] = 64
	copy(b[8:24], netip.MustParseAddr("fd00::1").AsSlice())
	copy(b[24:40], netip.MustParseAddr("fd00::2").AsSlice())
	next := proto
	if len(exts) > 0 {
		next = exts[0]
	}
	b[6] = next
	for i := range exts {
		h := make([]byte, 8)
		h[0] = proto
		if i+1 < len(exts) {
			h[0] = exts[i+1]
		}
		b = append(b, h...)
	}
	b = append(b, payload...)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	return b
}

func withIHL(ip []byte, ihl byte) []byte {
	ip[0] = 0x40 | ihl
	return ip
}

const (
	ethIPv4   = 0x0800
	ethIPv6   = 0x86dd
	ethARP    = 0x0806
	eth8021Q  = 0x8100
	eth8021AD = 0x88a8
	protoTCP  = 6
	protoUDP  = 17
	hopByHop  = 0
	destOpts  = 60
	fragment  = 44
	tcxNext   = ^uint32(0) // -1
	tcxPass   = 0
	tcxDrop   = 2
	testPort  = 8080
	otherPort = 8081
)

// freePort returns a TCP port nothing listens on in the current netns
// (where BPF_PROG_TEST_RUN looks sockets up).
func freePort(t testing.TB) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	return port
}

// loadCaptureTest loads the capture program of kind for cookie, closed
// when the test ends.
func loadCaptureTest(t testing.TB, d *Datapath, cookie uint64, kind captureKind) *ebpf.Program {
	t.Helper()
	prog, err := d.loadCapture(cookie, kind)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// counterDiff runs fn and returns how much each counter grew meanwhile.
func counterDiff(t *testing.T, d *Datapath, fn func()) map[Counter]uint64 {
	t.Helper()
	before, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	fn()
	after, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	diff := make(map[Counter]uint64)
	for c, v := range after {
		if v != before[c] {
			diff[c] = v - before[c]
		}
	}
	return diff
}

// TestCaptureProgramVerdicts runs the capture program on crafted packets
// with BPF_PROG_TEST_RUN. There is no agent listener in the test's netns, so
// captured new connections must be dropped.
//
// Both instances run every packet: the Ethernet one, and the one for
// devices without an Ethernet header, which reads from the network header.
// BPF_PROG_TEST_RUN always builds an Ethernet frame (the network header
// follows the 14 bytes), so both must agree; TestTunCapture covers a
// packet that starts at its network header.
func TestCaptureProgramVerdicts(t *testing.T) {
	d := openTestWith(t, Config{ListenerPort: freePort(t)})
	const cookie = 0x5eed
	st := &podState{key: "test/verdicts", cookie: cookie}
	if err := d.writePorts(st, PortSpec{Ports: []uint16{testPort}}); err != nil {
		t.Fatal(err)
	}
	listener := d.cfg.ListenerPort

	tcp := func(dport uint16) []byte { return tcpHeader(40000, dport) }
	tests := []struct {
		name        string
		notEnrolled bool
		pkt         []byte
		want        uint32
		counted     []Counter // counters that must grow by one, no others
	}{
		{name: "arp", pkt: ethFrame(ethARP, make([]byte, 28)), want: tcxNext},
		{name: "udp to captured port", pkt: ethFrame(ethIPv4, ipv4(protoUDP, 0, tcp(testPort))), want: tcxNext},
		{name: "tcp to uncaptured port", pkt: ethFrame(ethIPv4, ipv4(protoTCP, 0, tcp(otherPort))), want: tcxNext, counted: []Counter{CaptureUncaptured}},
		{name: "tcp to listener port", pkt: ethFrame(ethIPv4, ipv4(protoTCP, 0, tcp(listener))), want: tcxNext, counted: []Counter{CaptureUncaptured}},
		{name: "tcp to captured port without listener", pkt: ethFrame(ethIPv4, ipv4(protoTCP, 0, tcp(testPort))), want: tcxDrop, counted: []Counter{CaptureNoListener}},
		{name: "not enrolled", notEnrolled: true, pkt: ethFrame(ethIPv4, ipv4(protoTCP, 0, tcp(testPort))), want: tcxNext, counted: []Counter{CaptureNotEnrolled}},
		{name: "ipv4 first fragment to captured port", pkt: ethFrame(ethIPv4, ipv4(protoTCP, 0x2000, tcp(testPort))), want: tcxDrop, counted: []Counter{CaptureMalformed}},
		{name: "ipv4 later fragment", pkt: ethFrame(ethIPv4, ipv4(protoTCP, 0x0010, tcp(testPort))), want: tcxNext},
		{name: "ipv4 header length beyond packet", pkt: ethFrame(ethIPv4, withIHL(ipv4(protoTCP, 0, tcp(testPort)), 15)), want: tcxDrop, counted: []Counter{CaptureMalformed}},
		{name: "ipv4 header length below minimum", pkt: ethFrame(ethIPv4, withIHL(ipv4(protoTCP, 0, tcp(testPort)), 4)), want: tcxDrop, counted: []Counter{CaptureMalformed}},
		{name: "ipv4 tcp header missing", pkt: ethFrame(ethIPv4, ipv4(protoTCP, 0, nil)), want: tcxDrop, counted: []Counter{CaptureMalformed}},
		{name: "ipv6 tcp to captured port", pkt: ethFrame(ethIPv6, ipv6(nil, protoTCP, tcp(testPort))), want: tcxDrop, counted: []Counter{CaptureNoListener}},
		{name: "ipv6 tcp to uncaptured port", pkt: ethFrame(ethIPv6, ipv6(nil, protoTCP, tcp(otherPort))), want: tcxNext, counted: []Counter{CaptureUncaptured}},
		{name: "ipv6 tcp behind extension headers", pkt: ethFrame(ethIPv6, ipv6([]uint8{hopByHop, destOpts}, protoTCP, tcp(testPort))), want: tcxDrop, counted: []Counter{CaptureNoListener}},
		{name: "ipv6 too many extension headers", pkt: ethFrame(ethIPv6, ipv6([]uint8{destOpts, destOpts, destOpts, destOpts, destOpts, destOpts, destOpts}, protoTCP, tcp(testPort))), want: tcxDrop, counted: []Counter{CaptureMalformed}},
		{name: "ipv6 udp behind extension header", pkt: ethFrame(ethIPv6, ipv6([]uint8{destOpts}, protoUDP, tcp(testPort))), want: tcxNext},
		{name: "ipv6 first fragment to captured port", pkt: ethFrame(ethIPv6, ipv6([]uint8{fragment}, protoTCP, tcp(testPort))), want: tcxDrop, counted: []Counter{CaptureMalformed}},
		// Tagged frames: at TCX the stack has stripped one tag at most, and
		// strips a VID-0 tag after TCX (vlan_do_receive), delivering the
		// packet behind it. TCP to a captured port behind tags is dropped.
		{name: "tcp to captured port behind two 802.1Q tags", pkt: vlanFrame([]uint16{eth8021Q, eth8021Q}, ethIPv4, ipv4(protoTCP, 0, tcp(testPort))), want: tcxDrop, counted: []Counter{CaptureMalformed}},
		{name: "tcp to captured port behind 802.1AD and 802.1Q tags", pkt: vlanFrame([]uint16{eth8021AD, eth8021Q}, ethIPv4, ipv4(protoTCP, 0, tcp(testPort))), want: tcxDrop, counted: []Counter{CaptureMalformed}},
		{name: "ipv6 tcp to captured port behind a tag", pkt: vlanFrame([]uint16{eth8021Q}, ethIPv6, ipv6([]uint8{destOpts}, protoTCP, tcp(testPort))), want: tcxDrop, counted: []Counter{CaptureMalformed}},
		{name: "tcp to uncaptured port behind two tags", pkt: vlanFrame([]uint16{eth8021Q, eth8021Q}, ethIPv4, ipv4(protoTCP, 0, tcp(otherPort))), want: tcxNext, counted: []Counter{CaptureUncaptured}},
		{name: "udp behind two tags", pkt: vlanFrame([]uint16{eth8021Q, eth8021Q}, ethIPv4, ipv4(protoUDP, 0, tcp(testPort))), want: tcxNext},
		{name: "arp behind a tag", pkt: vlanFrame([]uint16{eth8021Q}, ethARP, make([]byte, 28)), want: tcxNext},
		{name: "tcp to captured port behind four tags", pkt: vlanFrame([]uint16{eth8021Q, eth8021Q, eth8021Q, eth8021Q}, ethIPv4, ipv4(protoTCP, 0, tcp(testPort))), want: tcxDrop, counted: []Counter{CaptureMalformed}},
		{name: "five tags", pkt: vlanFrame([]uint16{eth8021Q, eth8021Q, eth8021Q, eth8021Q, eth8021Q}, ethIPv4, ipv4(protoUDP, 0, tcp(testPort))), want: tcxDrop, counted: []Counter{CaptureMalformed}},
		{name: "truncated tag", pkt: ethFrame(eth8021Q, []byte{0, 0}), want: tcxDrop, counted: []Counter{CaptureMalformed}},
	}
	for _, kind := range []captureKind{captureEthernet, captureL3} {
		prog := loadCaptureTest(t, d, cookie, kind)
		notEnrolled := loadCaptureTest(t, d, cookie+1, kind)
		for _, tt := range tests {
			t.Run(kind.String()+"/"+tt.name, func(t *testing.T) {
				p := prog
				if tt.notEnrolled {
					p = notEnrolled
				}
				var got uint32
				diff := counterDiff(t, d, func() {
					var err error
					if got, err = p.Run(&ebpf.RunOptions{Data: tt.pkt}); err != nil {
						t.Fatalf("run: %v", err)
					}
				})
				if got != tt.want {
					t.Errorf("verdict: got %d, want %d", int32(got), int32(tt.want))
				}
				want := map[Counter]uint64{}
				for _, c := range tt.counted {
					want[c] = 1
				}
				if d := cmp.Diff(want, diff); d != "" {
					t.Errorf("counter changes (-want +got):\n%s", d)
				}
			})
		}
	}
}

// skbContext is the start of struct __sk_buff up to data_end, the one
// field set: BPF_PROG_TEST_RUN puts only the first data_end bytes of the
// packet in the skb's linear part, the rest in page fragments.
type skbContext struct {
	_       [20]uint32 // len .. data
	DataEnd uint32
}

// TestCaptureProgramNonLinearHeaders: a TCP header outside the linear part
// of the skb is parsed, not taken for a malformed packet. The L3 instance
// reads relative to the network header, which only reaches the linear
// part: it must pull the skb and read again.
func TestCaptureProgramNonLinearHeaders(t *testing.T) {
	d := openTestWith(t, Config{ListenerPort: freePort(t)})
	const cookie = 0x11ea
	if err := d.writePorts(&podState{key: "test/nonlinear", cookie: cookie}, PortSpec{Ports: []uint16{testPort}}); err != nil {
		t.Fatal(err)
	}
	tcp := func(dport uint16) []byte { return tcpHeader(40000, dport) }
	tests := []struct {
		name    string
		pkt     []byte
		linear  uint32 // bytes in the linear part: the IP header, which BPF_PROG_TEST_RUN needs there
		want    uint32
		counted Counter
	}{
		{"ipv4 captured", ethFrame(ethIPv4, ipv4(protoTCP, 0, tcp(testPort))), 14 + 20, tcxDrop, CaptureNoListener},
		{"ipv4 uncaptured", ethFrame(ethIPv4, ipv4(protoTCP, 0, tcp(otherPort))), 14 + 20, tcxNext, CaptureUncaptured},
		{"ipv6 captured behind extension header", ethFrame(ethIPv6, ipv6([]uint8{destOpts}, protoTCP, tcp(testPort))), 14 + 40, tcxDrop, CaptureNoListener},
		{"ipv6 uncaptured", ethFrame(ethIPv6, ipv6(nil, protoTCP, tcp(otherPort))), 14 + 40, tcxNext, CaptureUncaptured},
	}
	probe := loadCaptureTest(t, d, cookie, captureEthernet)
	_, err := probe.Run(&ebpf.RunOptions{Data: tests[0].pkt, Context: skbContext{DataEnd: uint32(len(tests[0].pkt))}})
	if errors.Is(err, unix.EINVAL) {
		// Linux 6.19 ("bpf: Craft non-linear skbs in BPF_PROG_TEST_RUN").
		t.Skip("this kernel's BPF_PROG_TEST_RUN cannot build non-linear skbs (ctx data_end)")
	}
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	for _, kind := range []captureKind{captureEthernet, captureL3} {
		prog := loadCaptureTest(t, d, cookie, kind)
		for _, tt := range tests {
			t.Run(kind.String()+"/"+tt.name, func(t *testing.T) {
				var got uint32
				diff := counterDiff(t, d, func() {
					var err error
					got, err = prog.Run(&ebpf.RunOptions{Data: tt.pkt, Context: skbContext{DataEnd: tt.linear}})
					if err != nil {
						t.Fatalf("run: %v", err)
					}
				})
				if got != tt.want {
					t.Errorf("verdict: got %d, want %d", int32(got), int32(tt.want))
				}
				if diff := cmp.Diff(map[Counter]uint64{tt.counted: 1}, diff); diff != "" {
					t.Errorf("counter changes (-want +got):\n%s", diff)
				}
			})
		}
	}
}
