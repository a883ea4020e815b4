package debugapi

import (
	"sync"
	"sync/atomic"

	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
)

// DefaultKeep is the number of recent decision records a Broadcaster keeps
// when NewBroadcaster is given zero.
const DefaultKeep = 1024

// subscriberBuffer is how many records a subscriber may fall behind before
// records are dropped for it. A TailDecisions stream drains it as fast as
// the client reads; beyond that a debug client loses records, never the
// audit path.
const subscriberBuffer = 256

// Broadcaster fans decision records out to TailDecisions streams and keeps
// the most recent ones for clients that connect later. The agent calls
// Publish with every record it hands to the audit log; embedding a
// *Broadcaster in a Backend implements SubscribeDecisions.
//
// Published records are shared between subscribers and must not be modified
// after Publish.
type Broadcaster struct {
	mu   sync.Mutex
	ring []*debugv1.DecisionRecord // recent records, oldest at next when full
	next int
	full bool
	subs map[*Subscription]struct{}
}

// NewBroadcaster returns a Broadcaster that keeps the last keep records;
// zero means DefaultKeep.
func NewBroadcaster(keep int) *Broadcaster {
	if keep <= 0 {
		keep = DefaultKeep
	}
	return &Broadcaster{
		ring: make([]*debugv1.DecisionRecord, keep),
		subs: make(map[*Subscription]struct{}),
	}
}

// Publish records r and hands it to every subscriber. It never blocks: a
// subscriber whose buffer is full misses r and is told how many it missed.
func (b *Broadcaster) Publish(r *debugv1.DecisionRecord) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ring[b.next] = r
	b.next++
	if b.next == len(b.ring) {
		b.next, b.full = 0, true
	}
	for s := range b.subs {
		select {
		case s.ch <- r:
		default:
			s.dropped.Add(1)
		}
	}
}

// SubscribeDecisions returns a subscription holding the records kept so far
// and receiving every record published after them, with no gap and no
// duplicate between the two. The caller must Close it.
func (b *Broadcaster) SubscribeDecisions() *Subscription {
	s := &Subscription{b: b, ch: make(chan *debugv1.DecisionRecord, subscriberBuffer)}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.full {
		s.recent = append(s.recent, b.ring[b.next:]...)
	}
	s.recent = append(s.recent, b.ring[:b.next]...)
	b.subs[s] = struct{}{}
	return s
}

// Subscription is one reader of a Broadcaster.
type Subscription struct {
	b       *Broadcaster
	ch      chan *debugv1.DecisionRecord
	recent  []*debugv1.DecisionRecord
	dropped atomic.Uint64
	once    sync.Once
}

// Recent returns the records kept before the subscription, oldest first.
func (s *Subscription) Recent() []*debugv1.DecisionRecord { return s.recent }

// C delivers records published after the subscription. It is never closed.
func (s *Subscription) C() <-chan *debugv1.DecisionRecord { return s.ch }

// TakeDropped returns how many records were dropped for this subscriber
// since the last call.
func (s *Subscription) TakeDropped() uint64 { return s.dropped.Swap(0) }

// Close unregisters the subscription. It is safe to call more than once.
func (s *Subscription) Close() {
	s.once.Do(func() {
		if s.b == nil {
			return
		}
		s.b.mu.Lock()
		delete(s.b.subs, s)
		s.b.mu.Unlock()
	})
}
