// Package idalloc maps identity strings (SPIFFE IDs) to the small integer
// identity.IDs the datapath stores in BPF maps. An ID stays stable while at
// least one workload references its identity and is freed when none does;
// freed IDs are reused as late as possible (oldest freed first, and only once
// the fresh range is exhausted), so a stale record in a BPF map is unlikely
// to name a newer identity.
package idalloc

import (
	"errors"
	"fmt"
	"sync"

	"github.com/portcullis-mesh/portcullis/identity"
)

// ErrExhausted is returned by Acquire when every ID in the range is in use.
var ErrExhausted = errors.New("identity ids exhausted")

// Config configures an Allocator.
type Config struct {
	// First is the lowest ID handed out; IDs below it are reserved for
	// well-known identities. Zero means 1 (only the zero ID, "no identity",
	// is reserved).
	First identity.ID
	// Last is the highest ID handed out. Zero means 1<<24-1.
	Last identity.ID
}

type entry struct {
	id   identity.ID
	refs int
}

// Allocator hands out IDs. It is safe for concurrent use.
type Allocator struct {
	first, last identity.ID

	mu     sync.RWMutex
	byName map[string]*entry
	byID   map[identity.ID]string
	next   uint64        // next never-used ID; above last once the fresh range is used up
	free   []identity.ID // freed IDs, oldest first
}

// New returns an Allocator for cfg.
func New(cfg Config) (*Allocator, error) {
	a := &Allocator{first: cfg.First, last: cfg.Last, byName: map[string]*entry{}, byID: map[identity.ID]string{}}
	if a.first == 0 {
		a.first = 1
	}
	if a.last == 0 {
		a.last = 1<<24 - 1
	}
	if a.last < a.first {
		return nil, fmt.Errorf("new id allocator: last id %d below first %d", a.last, a.first)
	}
	a.next = uint64(a.first)
	return a, nil
}

// Acquire returns the ID of name, allocating one on first use, and counts
// one more reference to it.
func (a *Allocator) Acquire(name string) (identity.ID, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.byName[name]; ok {
		e.refs++
		return e.id, nil
	}
	var id identity.ID
	switch {
	case a.next <= uint64(a.last):
		id = identity.ID(a.next)
		a.next++
	case len(a.free) > 0:
		id = a.free[0]
		a.free = a.free[1:]
	default:
		return 0, fmt.Errorf("acquire id for %s: %w (%d in use)", name, ErrExhausted, len(a.byName))
	}
	a.byName[name] = &entry{id: id, refs: 1}
	a.byID[id] = name
	return id, nil
}

// Release drops one reference to name and frees its ID when none is left.
// It reports whether the ID was freed. Releasing an unknown name is a no-op.
func (a *Allocator) Release(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.byName[name]
	if !ok {
		return false
	}
	e.refs--
	if e.refs > 0 {
		return false
	}
	delete(a.byName, name)
	delete(a.byID, e.id)
	a.free = append(a.free, e.id)
	return true
}

// Lookup returns the ID of name without taking a reference.
func (a *Allocator) Lookup(name string) (identity.ID, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	e, ok := a.byName[name]
	if !ok {
		return 0, false
	}
	return e.id, true
}

// Name returns the identity an ID currently stands for: the reverse lookup
// the verifier does for a socket record read from a BPF map.
func (a *Allocator) Name(id identity.ID) (string, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	n, ok := a.byID[id]
	return n, ok
}

// Len returns the number of identities holding an ID.
func (a *Allocator) Len() int {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return len(a.byName)
}
