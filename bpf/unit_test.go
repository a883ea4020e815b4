package bpf

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCounterNames(t *testing.T) {
	if len(counterNames) != numCounters {
		t.Fatalf("got %d counter names, want %d (enum pc_counter)", len(counterNames), numCounters)
	}
	seen := make(map[string]bool)
	for _, c := range Counters() {
		name := c.String()
		if name == "" || seen[name] || strings.ToLower(name) != name {
			t.Errorf("counter %d: bad or duplicate name %q", c, name)
		}
		seen[name] = true
	}
}

func TestPortSpecValidate(t *testing.T) {
	many := make([]uint16, MaxPorts+1)
	for i := range many {
		many[i] = uint16(i + 1)
	}
	tests := []struct {
		name    string
		spec    PortSpec
		wantErr bool
	}{
		{"zero value captures nothing", PortSpec{}, false},
		{"listed", PortSpec{Ports: []uint16{80, 443}}, false},
		{"all except none", PortSpec{Mode: CaptureAllExcept}, false},
		{"port zero", PortSpec{Ports: []uint16{0}}, true},
		{"too many", PortSpec{Ports: many}, true},
		{"unknown mode", PortSpec{Mode: 7}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.validate()
			if (err != nil) != tt.wantErr {
				t.Errorf("validate: got %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

func TestPortSpecCovers(t *testing.T) {
	tests := []struct {
		spec PortSpec
		port uint16
		want bool
	}{
		{PortSpec{}, 80, false},
		{PortSpec{Ports: []uint16{80, 443}}, 443, true},
		{PortSpec{Ports: []uint16{80, 443}}, 8080, false},
		{PortSpec{Mode: CaptureAllExcept}, 80, true},
		{PortSpec{Mode: CaptureAllExcept, Ports: []uint16{15006}}, 15006, false},
		{PortSpec{Mode: CaptureAllExcept, Ports: []uint16{15006}}, 8080, true},
	}
	for _, tt := range tests {
		if got := tt.spec.Covers(tt.port); got != tt.want {
			t.Errorf("%+v.Covers(%d): got %v, want %v", tt.spec, tt.port, got, tt.want)
		}
	}
}

func TestPortSpecNormalized(t *testing.T) {
	got := PortSpec{Mode: CaptureAllExcept, Ports: []uint16{443, 80, 443}}.normalized()
	want := PortSpec{Mode: CaptureAllExcept, Ports: []uint16{80, 443}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("normalized (-want +got):\n%s", diff)
	}
}

// TestConnKeyLayout checks the Go side of struct pc_conn_key: IPv4 as
// IPv4-mapped IPv6 in network byte order, whatever form the caller uses.
func TestConnKeyLayout(t *testing.T) {
	tests := []struct {
		addr string
		want [16]byte
	}{
		{"198.18.0.1", [16]byte{10: 0xff, 11: 0xff, 12: 198, 13: 18, 14: 0, 15: 1}},
		{"::ffff:198.18.0.1", [16]byte{10: 0xff, 11: 0xff, 12: 198, 13: 18, 14: 0, 15: 1}},
		{"fd00::2", [16]byte{0: 0xfd, 15: 2}},
	}
	for _, tt := range tests {
		a := netip.MustParseAddr(tt.addr)
		w := packAddr(a)
		if got := unpackAddr(w); got != a.Unmap() {
			t.Errorf("%s: round trip got %s, want %s", tt.addr, got, a.Unmap())
		}
		if got := netip.AddrFrom16(tt.want).Unmap(); unpackAddr(w) != got {
			t.Errorf("%s: packed as %s, want bytes %v", tt.addr, unpackAddr(w), tt.want)
		}
	}
	k := connKey(netip.MustParseAddrPort("198.18.0.1:40000"), netip.MustParseAddrPort("198.18.0.2:8080"))
	if k.Sport != 40000 || k.Dport != 8080 {
		t.Errorf("ports: got %d -> %d, want 40000 -> 8080", k.Sport, k.Dport)
	}
}

func TestEnrollRejectsInvalidPods(t *testing.T) {
	d := openTest(t)
	tests := []struct {
		name string
		pod  Pod
	}{
		{"empty key", Pod{NetnsPath: "/proc/self/ns/net"}},
		{"key too long", Pod{Key: strings.Repeat("k", maxKeyLen+1), NetnsPath: "/proc/self/ns/net"}},
		{"bad ports", Pod{Key: "a/b", NetnsPath: "/proc/self/ns/net", Ports: PortSpec{Ports: []uint16{0}}}},
		{"missing netns", Pod{Key: "a/b", NetnsPath: "/nonexistent/netns"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := d.Enroll(tt.pod); err == nil {
				t.Errorf("Enroll(%+v): got nil error, want one", tt.pod)
			}
		})
	}
	if err := d.UpdatePorts("no/such", PortSpec{}); err == nil {
		t.Error("UpdatePorts of an unknown pod: got nil error")
	}
}
