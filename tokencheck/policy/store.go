package policy

import (
	"sync"
	"sync/atomic"
	"time"
)

// Store holds the Set in force. Readers call Load on every request and
// keep the *Set for the whole request, so a request in flight finishes on
// the Set it started with. Writers call Update (or Swap with a Set they
// compiled); an invalid configuration never replaces a valid one.
type Store struct {
	cur atomic.Pointer[Set]

	mu   sync.Mutex // serialises writers and guards stat
	stat StoreStats
	now  func() time.Time
}

// StoreStats describes the Set in force, for metrics.
type StoreStats struct {
	// Generation counts successful swaps; 0 means no Set yet.
	Generation uint64
	// LastChange is when the Set in force was installed; zero before the
	// first swap.
	LastChange time.Time
	// CompileDuration is how long compiling the Set in force took; zero
	// when it was installed with Swap.
	CompileDuration time.Duration
	// LastError is the error of the latest Update, nil when it succeeded
	// (with Options.Quarantine: the problems of the Set in force).
	LastError error
	// Failures counts Updates refused since the Store was created.
	Failures uint64
	// Policies and Rules count what the Set in force holds.
	Policies int
	Rules    int
}

// NewStore returns a Store without a Set: Load returns nil, which
// captures nothing.
func NewStore() *Store {
	return &Store{now: time.Now}
}

// Load returns the Set in force, or nil before the first swap.
func (s *Store) Load() *Set { return s.cur.Load() }

// Update compiles objs and, if that succeeds, installs the result. On
// failure the Set in force is kept and the error (an *Error for invalid
// policies) is returned and remembered in Stats.
func (s *Store) Update(objs *Objects) (*Set, error) {
	return s.UpdateWithOptions(objs, Options{})
}

// UpdateWithOptions is Update with compile Options. With Quarantine, a
// Set with quarantined policies is installed and the *Error describing
// them is returned (and kept in Stats.LastError) too.
func (s *Store) UpdateWithOptions(objs *Objects, opts Options) (*Set, error) {
	start := s.now()
	set, err := CompileWithOptions(objs, opts)
	took := s.now().Sub(start)
	s.mu.Lock()
	defer s.mu.Unlock()
	if set == nil {
		s.stat.LastError = err
		s.stat.Failures++
		return nil, err
	}
	s.swapLocked(set, took)
	s.stat.LastError = err
	return set, err
}

// Swap installs a Set compiled by the caller and returns the previous
// one. A nil set is ignored: there is no way to uninstall policies by
// accident.
func (s *Store) Swap(set *Set) *Set {
	if set == nil {
		return s.Load()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.swapLocked(set, 0)
}

func (s *Store) swapLocked(set *Set, took time.Duration) *Set {
	old := s.cur.Swap(set)
	s.stat.Generation++
	s.stat.LastChange = s.now()
	s.stat.CompileDuration = took
	s.stat.LastError = nil
	s.stat.Policies = set.Policies()
	s.stat.Rules = set.Rules()
	return old
}

// Stats returns a snapshot of the Store's state.
func (s *Store) Stats() StoreStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stat
}
