package ipcache

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/portcullis-mesh/portcullis/identity"
)

func src(ns, sa string) identity.Source {
	return identity.Source{ID: identity.SPIFFEID("", ns, sa), Namespace: ns, ServiceAccount: sa}
}

func TestOwnership(t *testing.T) {
	var c Cache
	ip1 := netip.MustParseAddr("10.0.0.1")
	ip2 := netip.MustParseAddr("fd00::1")
	c.Upsert("a/pod", []netip.Addr{ip1, ip2}, src("a", "sa"))

	lookup := func(addr netip.Addr, want identity.Source, wantOK bool) {
		t.Helper()
		got, ok := c.Lookup(addr)
		if ok != wantOK {
			t.Fatalf("Lookup(%s): got ok %v, want %v", addr, ok, wantOK)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("Lookup(%s) mismatch (-want +got):\n%s", addr, diff)
		}
	}
	lookup(ip1, src("a", "sa"), true)
	lookup(netip.MustParseAddr("::ffff:10.0.0.1"), src("a", "sa"), true) // v4-mapped
	lookup(ip2, src("a", "sa"), true)

	// The pod loses an address.
	c.Upsert("a/pod", []netip.Addr{ip1}, src("a", "sa"))
	lookup(ip2, identity.Source{}, false)

	// The IP is reused by a new pod before the old pod's deletion arrives:
	// the late deletion must not erase the new owner.
	c.Upsert("b/pod", []netip.Addr{ip1}, src("b", "sb"))
	c.Delete("a/pod")
	lookup(ip1, src("b", "sb"), true)

	c.Delete("b/pod")
	lookup(ip1, identity.Source{}, false)
	if got := c.Len(); got != 0 {
		t.Errorf("Len after deleting all: got %d, want 0", got)
	}
	if len(c.owned) != 0 {
		t.Errorf("owned map leaks %d owners", len(c.owned))
	}
	// Invalid addresses are ignored, and an owner with none is dropped.
	c.Upsert("c/pod", []netip.Addr{{}}, src("c", "sc"))
	if len(c.owned) != 0 || c.Len() != 0 {
		t.Errorf("Upsert with only invalid addresses stored something")
	}
}

func TestConcurrentReaders(t *testing.T) {
	var c Cache
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				for i := range 64 {
					if s, ok := c.Lookup(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})); ok && s.Namespace == "" {
						t.Errorf("torn entry for 10.0.0.%d", i)
					}
				}
			}
		})
	}
	for round := range 200 {
		for i := range 64 {
			c.Upsert(fmt.Sprintf("ns/p%d", i), []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})}, src("ns", fmt.Sprint(round)))
		}
	}
	close(stop)
	wg.Wait()
}

func BenchmarkLookup(b *testing.B) {
	var c Cache
	for i := range 10000 {
		c.Upsert(fmt.Sprint(i), []netip.Addr{netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})}, src("ns", "sa"))
	}
	addr := netip.AddrFrom4([4]byte{10, 0, 10, 10})
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := c.Lookup(addr); !ok {
				b.Fatal("miss")
			}
		}
	})
}
