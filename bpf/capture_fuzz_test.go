package bpf

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// modelVerdict is what pc_capture_in must answer for frame, restated in Go
// from lib/capture.h, for a pod whose captured ports are given, when no
// socket matches and no agent listener exists (the test's netns).
func modelVerdict(frame []byte, listener uint16, captured map[uint16]bool) uint32 {
	l3 := frame[14:]
	var (
		dport uint16
		frag  bool
	)
	// Up to 4 VLAN tags are skipped; TCP to a captured port behind them
	// is dropped, which is the verdict without a listener anyway.
	isVLAN := func(p uint16) bool { return p == eth8021Q || p == eth8021AD }
	proto := binary.BigEndian.Uint16(frame[12:14])
	for range 4 {
		if !isVLAN(proto) {
			break
		}
		if len(l3) < 4 {
			return tcxDrop
		}
		proto = binary.BigEndian.Uint16(l3[2:4])
		l3 = l3[4:]
	}
	if isVLAN(proto) {
		return tcxDrop
	}
	switch proto {
	case ethIPv4:
		if len(l3) < 20 {
			return tcxDrop
		}
		if l3[9] != protoTCP {
			return tcxNext
		}
		fragOff := binary.BigEndian.Uint16(l3[6:8])
		if fragOff&0x3fff != 0 {
			frag = true
			if fragOff&0x1fff != 0 {
				return tcxNext
			}
		}
		ihl := int(l3[0]&0xf) * 4
		if ihl < 20 || len(l3) < ihl+14 {
			return tcxDrop
		}
		dport = binary.BigEndian.Uint16(l3[ihl+2:])
	case ethIPv6:
		if len(l3) < 40 {
			return tcxDrop
		}
		isExt := func(nh byte) bool { return nh == hopByHop || nh == 43 || nh == destOpts || nh == fragment }
		nh, off := l3[6], 40
		for range 6 {
			if !isExt(nh) {
				break
			}
			if len(l3) < off+2 {
				return tcxDrop
			}
			next := l3[off]
			if nh == fragment {
				if len(l3) < off+4 {
					return tcxDrop
				}
				frag = true
				if binary.BigEndian.Uint16(l3[off+2:])&0xfff8 != 0 {
					return tcxNext
				}
				off += 8
			} else {
				off += (int(l3[off+1]) + 1) * 8
			}
			nh = next
		}
		if isExt(nh) {
			return tcxDrop
		}
		if nh != protoTCP {
			return tcxNext
		}
		if len(l3) < off+14 {
			return tcxDrop
		}
		dport = binary.BigEndian.Uint16(l3[off+2:])
	default:
		return tcxNext
	}
	if dport == listener || !captured[dport] {
		return tcxNext
	}
	_ = frag // a captured fragment is dropped, and so is everything else: no listener
	return tcxDrop
}

// FuzzCaptureProgram runs the capture program (BPF_PROG_TEST_RUN) on
// arbitrary frames and compares its verdict with modelVerdict: the kernel
// parser must neither let a captured new connection through nor drop
// traffic it has no business with.
func FuzzCaptureProgram(f *testing.F) {
	tcp := func(dport uint16) []byte { return tcpHeader(40000, dport) }
	for _, seed := range [][]byte{
		ethFrame(ethIPv4, ipv4(protoTCP, 0, tcp(testPort))),
		ethFrame(ethIPv4, ipv4(protoTCP, 0x2000, tcp(testPort))),
		ethFrame(ethIPv4, ipv4(protoUDP, 0, tcp(testPort))),
		ethFrame(ethIPv6, ipv6(nil, protoTCP, tcp(testPort))),
		ethFrame(ethIPv6, ipv6([]uint8{hopByHop, fragment, destOpts}, protoTCP, tcp(otherPort))),
		ethFrame(ethARP, make([]byte, 28)),
		vlanFrame([]uint16{eth8021Q, eth8021AD}, ethIPv4, ipv4(protoTCP, 0, tcp(testPort))),
	} {
		f.Add(seed)
	}
	d := openTestWith(f, Config{ListenerPort: freePort(f)})
	const cookie = 0xf0227
	if err := d.writePorts(&podState{key: "test/fuzz", cookie: cookie}, PortSpec{Ports: []uint16{testPort, 443}}); err != nil {
		f.Fatal(err)
	}
	// Both instances: BPF_PROG_TEST_RUN puts the network header after the
	// 14 bytes of the frame, where the L3 instance finds it too.
	progs := map[captureKind]*ebpf.Program{
		captureEthernet: loadCaptureTest(f, d, cookie, captureEthernet),
		captureL3:       loadCaptureTest(f, d, cookie, captureL3),
	}
	captured := map[uint16]bool{testPort: true, 443: true}

	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > 1500 {
			return
		}
		want := modelVerdict(frame, d.cfg.ListenerPort, captured)
		for kind, prog := range progs {
			got, err := prog.Run(&ebpf.RunOptions{Data: frame})
			if errors.Is(err, unix.EINVAL) {
				return // BPF_PROG_TEST_RUN refuses some short frames outright
			}
			if err != nil {
				t.Fatalf("run %s: %v", kind, err)
			}
			if got != want {
				t.Errorf("%s: frame %x: verdict %d, model says %d", kind, frame, int32(got), int32(want))
			}
		}
	})
}
