package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a Logger.
type Config struct {
	// Writer receives the JSON lines. Nil means io.Discard (records still
	// reach subscribers).
	Writer io.Writer
	// BufferSize is how many records may wait to be written. Zero means 8192.
	BufferSize int
	// AllowSampling keeps one allowed record in every AllowSampling; denies
	// are never sampled. Zero or one means every allow is recorded;
	// negative means none is.
	AllowSampling int
	// DenyWait bounds how long Log blocks for a deny when the buffer is full
	// before dropping (and counting) it. Zero means 50ms; negative means
	// never block.
	DenyWait time.Duration
	// FlushInterval is how long the writer gathers records into one write
	// once the first is queued, so a busy node does one write per batch
	// instead of one per request. Zero means 10ms; negative means write as
	// soon as the queue is drained.
	FlushInterval time.Duration
	// SubscriberBuffer is the per-subscriber queue length; a subscriber that
	// falls further behind loses records (counted). Zero means 256.
	SubscriberBuffer int
	// Logger reports write errors. Nil means they are only counted.
	Logger *slog.Logger
}

// Stats are the Logger's counters since it was created.
type Stats struct {
	// Written is the number of records written to the Writer.
	Written uint64
	// DroppedAllows and DroppedDenies count records lost because the buffer
	// was full.
	DroppedAllows uint64
	DroppedDenies uint64
	// SampledOut counts allows skipped by AllowSampling (not a loss).
	SampledOut uint64
	// SubscriberDrops counts records a slow subscriber did not receive.
	SubscriberDrops uint64
	// WriteErrors counts failed writes to the Writer.
	WriteErrors uint64
}

// Logger writes records asynchronously. Log is safe for concurrent use.
type Logger struct {
	cfg     Config
	ch      chan Record
	done    chan struct{}
	closing chan struct{}
	hurry   chan struct{}
	once    sync.Once

	sample atomic.Uint64

	written, droppedAllows, droppedDenies, sampledOut, subDrops, writeErrs atomic.Uint64

	subMu      sync.Mutex
	subs       map[*Subscription]struct{}
	subsClosed bool
}

// maxBatch bounds how many records one Write carries.
const maxBatch = 1024

// ErrClosed is returned by Subscribe after Close.
var ErrClosed = errors.New("audit logger closed")

// New starts a Logger. Call Close to flush and stop it.
func New(cfg Config) *Logger {
	if cfg.Writer == nil {
		cfg.Writer = io.Discard
	}
	if cfg.BufferSize <= 0 {
		cfg.BufferSize = 8192
	}
	if cfg.DenyWait == 0 {
		cfg.DenyWait = 50 * time.Millisecond
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = 10 * time.Millisecond
	}
	if cfg.SubscriberBuffer <= 0 {
		cfg.SubscriberBuffer = 256
	}
	l := &Logger{
		cfg:     cfg,
		ch:      make(chan Record, cfg.BufferSize),
		done:    make(chan struct{}),
		closing: make(chan struct{}),
		hurry:   make(chan struct{}, 1),
		subs:    map[*Subscription]struct{}{},
	}
	go l.run()
	return l
}

// Log queues r. It never blocks for an allow; for a deny it blocks at most
// Config.DenyWait when the buffer is full. Records logged after Close are
// dropped and counted.
func (l *Logger) Log(r *Record) {
	if r.Decision != Deny && (l.cfg.AllowSampling > 1 || l.cfg.AllowSampling < 0) {
		if l.cfg.AllowSampling < 0 || l.sample.Add(1)%uint64(l.cfg.AllowSampling) != 1 {
			l.sampledOut.Add(1)
			return
		}
	}
	select {
	case <-l.closing:
		l.drop(r)
		return
	default:
	}
	select {
	case l.ch <- *r:
		if len(l.ch) >= cap(l.ch)/2 {
			select {
			case l.hurry <- struct{}{}:
			default:
			}
		}
		return
	default:
	}
	if r.Decision != Deny || l.cfg.DenyWait < 0 {
		l.drop(r)
		return
	}
	t := time.NewTimer(l.cfg.DenyWait)
	defer t.Stop()
	select {
	case l.ch <- *r:
	case <-t.C:
		l.drop(r)
	case <-l.closing:
		l.drop(r)
	}
}

func (l *Logger) drop(r *Record) {
	if r.Decision == Deny {
		l.droppedDenies.Add(1)
	} else {
		l.droppedAllows.Add(1)
	}
}

// Stats returns the counters.
func (l *Logger) Stats() Stats {
	return Stats{
		Written:         l.written.Load(),
		DroppedAllows:   l.droppedAllows.Load(),
		DroppedDenies:   l.droppedDenies.Load(),
		SampledOut:      l.sampledOut.Load(),
		SubscriberDrops: l.subDrops.Load(),
		WriteErrors:     l.writeErrs.Load(),
	}
}

// Close stops accepting records, writes what is buffered and returns when
// done or when ctx ends, whichever is first. Subscriptions are closed.
func (l *Logger) Close(ctx context.Context) error {
	l.once.Do(func() { close(l.closing) })
	select {
	case <-l.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("close audit logger: %w", ctx.Err())
	}
}

func (l *Logger) run() {
	defer close(l.done)
	defer l.closeSubs()
	buf := make([]byte, 0, 64<<10)
	batch := make([]Record, 0, 64)
	for {
		var first Record
		select {
		case first = <-l.ch:
		case <-l.closing:
			// Write what was queued before Close.
			for {
				batch = l.take(batch[:0])
				if len(batch) == 0 {
					return
				}
				buf = l.flush(buf, batch)
			}
		}
		if l.cfg.FlushInterval > 0 {
			// Let records queue up without waking this goroutine for each
			// one; Log hurries it when the queue is half full.
			t := time.NewTimer(l.cfg.FlushInterval)
			select {
			case <-t.C:
			case <-l.hurry:
			case <-l.closing:
			}
			t.Stop()
		}
		batch = append(batch[:0], first)
		for {
			batch = l.take(batch)
			buf = l.flush(buf, batch)
			if len(batch) < maxBatch {
				break
			}
			batch = batch[:0]
		}
	}
}

// take appends queued records to batch, without blocking, up to maxBatch.
func (l *Logger) take(batch []Record) []Record {
	for len(batch) < maxBatch {
		select {
		case r := <-l.ch:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

func (l *Logger) flush(buf []byte, batch []Record) []byte {
	if len(batch) == 0 {
		return buf
	}
	buf = buf[:0]
	for i := range batch {
		buf = batch[i].AppendJSON(buf)
	}
	if _, err := l.cfg.Writer.Write(buf); err != nil {
		l.writeErrs.Add(1)
		if l.cfg.Logger != nil {
			l.cfg.Logger.Warn("audit write", "error", err, "records", len(batch))
		}
	} else {
		l.written.Add(uint64(len(batch)))
	}
	l.fanOut(batch)
	if cap(buf) > 1<<20 {
		buf = make([]byte, 0, 64<<10)
	}
	return buf
}

// Subscription receives every record written after Subscribe returned.
type Subscription struct {
	l       *Logger
	c       chan Record
	dropped atomic.Uint64
}

// C returns the channel of records. It is closed by Close or when the Logger
// closes.
func (s *Subscription) C() <-chan Record { return s.c }

// Dropped returns how many records this subscriber missed by being slow.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close ends the subscription and closes its channel. It is idempotent.
func (s *Subscription) Close() {
	s.l.subMu.Lock()
	defer s.l.subMu.Unlock()
	if _, ok := s.l.subs[s]; ok {
		delete(s.l.subs, s)
		close(s.c)
	}
}

// Subscribe registers a subscriber with a queue of Config.SubscriberBuffer
// records.
func (l *Logger) Subscribe() (*Subscription, error) {
	l.subMu.Lock()
	defer l.subMu.Unlock()
	if l.subsClosed {
		return nil, ErrClosed
	}
	s := &Subscription{l: l, c: make(chan Record, l.cfg.SubscriberBuffer)}
	l.subs[s] = struct{}{}
	return s, nil
}

// fanOut offers batch to every subscriber without blocking.
func (l *Logger) fanOut(batch []Record) {
	l.subMu.Lock()
	defer l.subMu.Unlock()
	for s := range l.subs {
		for i := range batch {
			select {
			case s.c <- batch[i]:
			default:
				s.dropped.Add(1)
				l.subDrops.Add(1)
			}
		}
	}
}

func (l *Logger) closeSubs() {
	l.subMu.Lock()
	defer l.subMu.Unlock()
	l.subsClosed = true
	for s := range l.subs {
		delete(l.subs, s)
		close(s.c)
	}
}
