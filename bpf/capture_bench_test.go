package bpf

import (
	"testing"
)

// BenchmarkCaptureProgram measures the capture program's own cost per
// packet with BPF_PROG_TEST_RUN (kernel-side repeat): the paths a packet
// can take, without the rest of the stack.
func BenchmarkCaptureProgram(b *testing.B) {
	d := openTestWith(b, Config{ListenerPort: freePort(b)})
	const cookie = 0xbe7c
	if err := d.writePorts(&podState{key: "test/bench", cookie: cookie}, PortSpec{Ports: []uint16{testPort}}); err != nil {
		b.Fatal(err)
	}
	prog, err := d.loadCapture(cookie, captureEthernet)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { prog.Close() })
	tcp := func(dport uint16) []byte { return tcpHeader(40000, dport) }
	for _, bc := range []struct {
		name string
		pkt  []byte
	}{
		{"udp", ethFrame(ethIPv4, ipv4(protoUDP, 0, tcp(testPort)))},
		{"ipv4_uncaptured", ethFrame(ethIPv4, ipv4(protoTCP, 0, tcp(otherPort)))},
		{"ipv4_captured_syn", ethFrame(ethIPv4, ipv4(protoTCP, 0, tcp(testPort)))},
		{"ipv6_captured_syn", ethFrame(ethIPv6, ipv6(nil, protoTCP, tcp(testPort)))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			_, per, err := prog.Benchmark(bc.pkt, b.N, b.ResetTimer)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
		})
	}
}
