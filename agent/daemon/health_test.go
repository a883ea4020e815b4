package daemon

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestWatchdog(t *testing.T) {
	var mu sync.Mutex
	clock := time.Unix(1000, 0)
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }

	started := make(chan struct{}, 1)
	release := make(chan struct{})
	probed := make(chan struct{}, 1)
	w := &watchdog{
		probe:  func() { started <- struct{}{}; <-release },
		limit:  time.Minute,
		now:    now,
		probed: func() { probed <- struct{}{} },
	}
	wait := func(c chan struct{}, what string) {
		t.Helper()
		select {
		case <-c:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: not within 10s", what)
		}
	}

	if err := w.check(); err != nil {
		t.Fatalf("first check: got %v, want nil", err)
	}
	wait(started, "probe started")
	// The component does not answer: checks return at once, healthy until
	// the limit.
	advance(59 * time.Second)
	if err := w.check(); err != nil {
		t.Errorf("check after 59s without an answer: got %v, want nil", err)
	}
	advance(2 * time.Second)
	if err := w.check(); err == nil || !strings.Contains(err.Error(), "no answer nor progress for 1m1s") {
		t.Errorf("check after 61s without an answer: got %v, want no answer nor progress for 1m1s", err)
	}
	select {
	case <-started:
		t.Error("a second probe started while one was in flight")
	default:
	}

	// Once it answers, it is healthy again.
	close(release)
	wait(probed, "probe returned")
	advance(time.Hour)
	if err := w.check(); err != nil {
		t.Errorf("check after the component answered: got %v, want nil", err)
	}
	wait(started, "second probe started")
	wait(probed, "second probe returned")
}

// TestWatchdogProgress: a component that holds its lock longer than the
// limit but makes progress meanwhile (the enforcer's initial sync of a big
// node) is healthy; once progress stops, the limit counts from the last
// advance.
func TestWatchdogProgress(t *testing.T) {
	var mu sync.Mutex
	clock := time.Unix(1000, 0)
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }
	var progress atomic.Uint64

	started := make(chan struct{}, 1)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	w := &watchdog{
		probe:    func() { started <- struct{}{}; <-release },
		progress: progress.Load,
		limit:    time.Minute,
		now:      now,
	}
	if err := w.check(); err != nil {
		t.Fatalf("first check: got %v, want nil", err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("probe not started within 10s")
	}
	// Ten minutes of sync, a workload every 30 s: healthy throughout.
	for i := range 20 {
		advance(30 * time.Second)
		progress.Add(1)
		if err := w.check(); err != nil {
			t.Fatalf("check after %v of progress: got %v, want nil", time.Duration(i+1)*30*time.Second, err)
		}
	}
	// Progress stops.
	advance(59 * time.Second)
	if err := w.check(); err != nil {
		t.Errorf("check 59s after the last progress: got %v, want nil", err)
	}
	advance(2 * time.Second)
	if err := w.check(); err == nil || !strings.Contains(err.Error(), "for 1m1s") {
		t.Errorf("check 61s after the last progress: got %v, want no answer nor progress for 1m1s", err)
	}
}
