package verifier

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// errStreamIdle is the result of a transfer cut by Config.StreamIdleTimeout.
var errStreamIdle = errors.New("stream idle timeout")

// streamTicks is how many times per StreamIdleTimeout a busy exchange is
// looked at: a stalled one is closed between StreamIdleTimeout and
// 1+1/streamTicks of it after its last byte moved.
const streamTicks = 4

// streamWatch closes an exchange (a request body, a response body, an
// upgraded tunnel) in which no byte moved in either direction for
// Config.StreamIdleTimeout.
//
// It costs the data path no deadline and no timer operation per read or
// write. Progress is observed, not reported: user-space copies add to an
// atomic counter, and the kernel's byte counters of both sockets
// (TCP_INFO tcpi_bytes_received and tcpi_bytes_acked) cover what moves
// with splice(2) or sits in a blocked write. One timer per client
// connection ticks every StreamIdleTimeout/streamTicks while a transfer is
// in progress and stops at the first tick that finds none, so keep-alive
// requests re-arm it at most once per tick, not once per request.
//
// The kernel counters are what let a slow but steady stream live: a
// spliced 100 MB upload or a client reading a response at a trickle moves
// no user-space counter for minutes. Locally accelerated upstream sockets
// (sockmap redirection) bypass the TCP counters, but the verifier never
// splices them (Config.NoSplice), so their bytes go through user space and
// are counted there.
type streamWatch struct {
	tick time.Duration
	// onIdle closes the exchange whose transfer used conns (client,
	// upstream; either may be nil); called once, with mu held.
	onIdle func(proto string, conns [2]net.Conn)
	// marks counts user-space progress; any goroutine of the exchange adds
	// to it.
	marks atomic.Uint64

	mu    sync.Mutex
	t     *time.Timer
	armed bool // t is running
	done  bool // fired, or stopped with its connection
	busy  int  // transfers in progress
	proto string
	// conns are the client and upstream sockets of the transfer in
	// progress; either may be nil.
	conns [2]net.Conn
	last  uint64 // progress seen at the previous tick
	quiet int    // ticks in a row without progress while busy
}

// newStreamWatch returns a watch for timeout, or nil when timeout is not
// positive (no limit). Every method accepts a nil watch.
func newStreamWatch(timeout time.Duration, onIdle func(proto string, conns [2]net.Conn)) *streamWatch {
	if timeout <= 0 {
		return nil
	}
	return &streamWatch{tick: timeout / streamTicks, onIdle: onIdle}
}

// begin starts a watched transfer between client and up (either may be
// nil) and counts as progress. Every begin needs an end.
func (w *streamWatch) begin(client, up net.Conn, proto string) {
	if w == nil {
		return
	}
	w.marks.Add(1)
	w.mu.Lock()
	w.busy++
	w.proto = proto
	w.conns = [2]net.Conn{client, up}
	if !w.armed && !w.done {
		w.armed = true
		if w.t == nil {
			w.t = time.AfterFunc(w.tick, w.onTick)
		} else {
			w.t.Reset(w.tick)
		}
	}
	w.mu.Unlock()
}

// mark records user-space progress.
func (w *streamWatch) mark() {
	if w != nil {
		w.marks.Add(1)
	}
}

// end ends a transfer begun with begin. It returns false when the watch
// fired (or was stopped) before: the exchange's connections were closed,
// and whatever the transfer achieved must not be trusted as complete.
func (w *streamWatch) end() bool {
	if w == nil {
		return true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.busy--
	if w.busy == 0 {
		w.conns = [2]net.Conn{}
	}
	return !w.done
}

// stop disarms the watch for good; onIdle is not called after it returns.
func (w *streamWatch) stop() {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
	w.conns = [2]net.Conn{}
	if w.t != nil {
		w.t.Stop()
	}
}

func (w *streamWatch) onTick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.busy == 0 || w.done {
		w.armed = false
		return
	}
	p := w.marks.Load() + kernelBytes(w.conns[0]) + kernelBytes(w.conns[1])
	if p != w.last {
		w.last, w.quiet = p, 0
	} else if w.quiet++; w.quiet >= streamTicks {
		w.armed, w.done = false, true
		w.onIdle(w.proto, w.conns)
		return
	}
	w.t.Reset(w.tick)
}

// kernelBytes returns the bytes c's socket has received plus the bytes its
// peer acknowledged: a sum that grows whenever a byte moves either way,
// whoever moved it. Zero for nil and non-socket connections.
func kernelBytes(c net.Conn) uint64 {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	var n uint64
	rc.Control(func(fd uintptr) {
		if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			n = ti.Bytes_received + ti.Bytes_acked
		}
	})
	return n
}

// markReader marks progress on every read that returned bytes.
type markReader struct {
	r io.Reader
	w *streamWatch
}

func (m markReader) Read(b []byte) (int, error) {
	n, err := m.r.Read(b)
	if n > 0 {
		m.w.mark()
	}
	return n, err
}
