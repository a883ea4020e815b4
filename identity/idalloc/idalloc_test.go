package idalloc

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/portcullis-mesh/portcullis/identity"
)

func TestAcquireRelease(t *testing.T) {
	a, err := New(Config{First: 10, Last: 12})
	if err != nil {
		t.Fatal(err)
	}
	acquire := func(name string, want identity.ID) {
		t.Helper()
		got, err := a.Acquire(name)
		if err != nil || got != want {
			t.Fatalf("Acquire(%s) = %d, %v; want %d", name, got, err, want)
		}
	}
	acquire("a", 10)
	acquire("b", 11)
	acquire("a", 10) // a second reference: same ID
	if got, ok := a.Name(10); !ok || got != "a" {
		t.Errorf("Name(10) = %q, %v; want a", got, ok)
	}
	if a.Release("a") {
		t.Errorf("Release(a) with a reference left: got freed, want kept")
	}
	if got, ok := a.Lookup("a"); !ok || got != 10 {
		t.Errorf("Lookup(a) after one release = %d, %v; want 10", got, ok)
	}
	if !a.Release("a") {
		t.Errorf("Release(a) of the last reference: got kept, want freed")
	}
	if _, ok := a.Name(10); ok {
		t.Errorf("Name(10) after free: still known")
	}
	// The fresh range is used before freed IDs come back.
	acquire("c", 12)
	acquire("d", 10)
	if _, err := a.Acquire("e"); !errors.Is(err, ErrExhausted) {
		t.Errorf("Acquire beyond the range: got %v, want ErrExhausted", err)
	}
	if a.Release("unknown") {
		t.Errorf("Release(unknown) reported a free")
	}
	// Freed IDs come back oldest first.
	a.Release("b")
	a.Release("c")
	acquire("f", 11)
	acquire("g", 12)
	if got, want := a.Len(), 3; got != want {
		t.Errorf("Len: got %d, want %d", got, want)
	}
}

func TestConfig(t *testing.T) {
	if _, err := New(Config{First: 5, Last: 4}); err == nil {
		t.Errorf("New(First 5, Last 4): got nil error")
	}
	a, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := a.Acquire("x"); id != 1 {
		t.Errorf("first ID with zero Config: got %d, want 1", id)
	}
	top, err := New(Config{First: 1<<32 - 2, Last: 1<<32 - 1})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []identity.ID{1<<32 - 2, 1<<32 - 1} {
		if got, err := top.Acquire(fmt.Sprint(i)); err != nil || got != want {
			t.Errorf("Acquire at the top of uint32 = %d, %v; want %d", got, err, want)
		}
	}
	if _, err := top.Acquire("overflow"); !errors.Is(err, ErrExhausted) {
		t.Errorf("Acquire past uint32: got %v, want ErrExhausted (no wrap to 0)", err)
	}
}

func TestConcurrent(t *testing.T) {
	a, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				name := fmt.Sprintf("spiffe://cluster.local/ns/n%d/sa/s", i%20)
				id, err := a.Acquire(name)
				if err != nil {
					t.Error(err)
					return
				}
				if got, ok := a.Name(id); !ok || got != name {
					t.Errorf("goroutine %d: Name(%d) = %q, want %q", g, id, got, name)
				}
				a.Release(name)
			}
		})
	}
	wg.Wait()
	if got := a.Len(); got != 0 {
		t.Errorf("Len after balanced acquire/release: got %d, want 0", got)
	}
}
