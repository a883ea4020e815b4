package daemon

import (
	"fmt"
	"sync"
	"time"
)

// enforcerStallLimit is how long the enforcer may go without answering
// before /healthz fails and the kubelet restarts the agent. A wedged
// enforcer enrols no new pod and applies no policy change, and only a
// restart recovers it; the limit is far above the longest legitimate wait
// (one enrolment's listen timeout is 5 s) so that a slow but working
// agent, whose restart would cut every proxied connection of the node, is
// never killed.
const enforcerStallLimit = 2 * time.Minute

// watchdog tells whether a component still answers, without ever making
// its caller wait: check starts a probe (a call that takes the component's
// lock) when none is in flight, and fails once one has been in flight
// longer than limit without the component making progress.
type watchdog struct {
	probe func()
	limit time.Duration
	now   func() time.Time
	// progress, when set, is a counter the component advances as it works
	// while holding its lock (the enforcer's initial sync enrols every pod
	// of the node in turn, which can take longer than limit on a big
	// node). While it advances, a probe in flight is not a stall: the
	// limit counts from the last advance. Nil: the limit counts from the
	// probe's start.
	progress func() uint64
	// probed, when set, is called after each probe returns (tests).
	probed func()

	mu      sync.Mutex
	pending time.Time // when the probe in flight started, or progress last advanced; zero when none
	seen    uint64    // progress when pending was set
}

func (w *watchdog) check() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.pending.IsZero() {
		if w.progress != nil {
			if p := w.progress(); p != w.seen {
				w.pending, w.seen = w.now(), p
				return nil
			}
		}
		if d := w.now().Sub(w.pending); d > w.limit {
			return fmt.Errorf("no answer nor progress for %s", d.Round(time.Second))
		}
		return nil
	}
	w.pending = w.now()
	if w.progress != nil {
		w.seen = w.progress()
	}
	go func() {
		w.probe()
		w.mu.Lock()
		w.pending = time.Time{}
		w.mu.Unlock()
		if w.probed != nil {
			w.probed()
		}
	}()
	return nil
}
