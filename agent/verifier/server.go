package verifier

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/portcullis-mesh/portcullis/agent/audit"
	"github.com/portcullis-mesh/portcullis/agent/metrics"
	"github.com/portcullis-mesh/portcullis/identity"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("verifier: server closed")

// Server serves the captured connections of one pod.
type Server struct {
	cfg         Config
	passthrough map[uint16]bool
	strip       atomic.Pointer[map[string]bool]
	sem         chan struct{}
	// reserved counts the connections admitted from BudgetReserve.
	reserved atomic.Int32
	pool     *pool
	//lint:ignore SA1019 see initH2
	h2     *http2.Server
	h2base *http.Server
	h2t    *http.Transport
	h1t    *http.Transport

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*srvConn]struct{}
	closing   bool
	wg        sync.WaitGroup
	// drained is closed when closing is set and the last connection ends.
	drained chan struct{}
}

// ConnBudget bounds the connections of several Servers together: every
// client connection holds memory in the agent (about 22 KiB while idle),
// so per-pod limits alone would let a node's pods together hold more than
// the agent has. Safe for concurrent use.
type ConnBudget struct{ sem chan struct{} }

// NewConnBudget returns a budget of n concurrent connections (n > 0).
func NewConnBudget(n int) *ConnBudget { return &ConnBudget{sem: make(chan struct{}, n)} }

// acquire takes one connection from b, if it has room.
func (b *ConnBudget) acquire() bool {
	select {
	case b.sem <- struct{}{}:
		return true
	default:
		return false
	}
}

// release returns a connection taken by acquire.
func (b *ConnBudget) release() { <-b.sem }

// InUse is the number of connections currently holding the budget.
func (b *ConnBudget) InUse() int { return len(b.sem) }

// DefaultBudgetReserve is Config.BudgetReserve's default.
const DefaultBudgetReserve = 32

// takeBudget admits a connection under Config.Budget: from the pod's
// reserve while it has room, else from the budget. budgeted says which
// (for releaseBudget); ok is false when neither has room.
func (s *Server) takeBudget() (budgeted, ok bool) {
	if s.cfg.Budget == nil {
		return false, true
	}
	if s.reserved.Add(1) <= int32(s.cfg.BudgetReserve) {
		return false, true
	}
	s.reserved.Add(-1)
	return true, s.cfg.Budget.acquire()
}

// releaseBudget returns what takeBudget gave a connection.
func (s *Server) releaseBudget(budgeted bool) {
	switch {
	case budgeted:
		s.cfg.Budget.release()
	case s.cfg.Budget != nil:
		s.reserved.Add(-1)
	}
}

// srvConn is the server's handle on one accepted connection, for Shutdown.
type srvConn struct {
	c net.Conn
	// idle is true while an HTTP/1.1 connection waits for its next
	// request; guarded by Server.mu.
	idle bool
	// kind says how Shutdown may end it.
	kind connKind
	// budgeted: the connection holds Config.Budget, not the reserve.
	budgeted bool
}

type connKind uint8

const (
	kindNew    connKind = iota // not yet classified
	kindHTTP1                  // drained between requests
	kindHTTP2                  // drained by GOAWAY
	kindSplice                 // passthrough or upgraded: closed at the deadline
)

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:         cfg,
		passthrough: map[uint16]bool{},
		sem:         make(chan struct{}, cfg.MaxConns),
		listeners:   map[net.Listener]struct{}{},
		conns:       map[*srvConn]struct{}{},
		drained:     make(chan struct{}),
	}
	if s.cfg.Dialer == nil {
		s.cfg.Dialer = &net.Dialer{}
	}
	for _, p := range cfg.PassthroughPorts {
		s.passthrough[p] = true
	}
	s.SetStripHeaders(cfg.StripHeaders)
	s.pool = newPool(s.cfg.Dialer, s.cfg.DialTimeout, s.cfg.MaxIdleUpstreamConns, s.cfg.UpstreamIdleTimeout)
	if err := s.initH2(); err != nil {
		return nil, err
	}
	return s, nil
}

// SetStripHeaders replaces Config.StripHeaders, for configuration reloads.
func (s *Server) SetStripHeaders(names []string) {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[http.CanonicalHeaderKey(strings.TrimSpace(n))] = true
	}
	s.strip.Store(&m)
}

// Serve accepts connections on l until l fails or the server shuts down,
// and serves each on its own goroutine. It returns ErrServerClosed after
// Shutdown or Close. Serve may be called for several listeners.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// EMFILE and friends: back off like net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.cfg.Logger.Warn("accept", "error", err, "retry_in", backoff)
				t := time.NewTimer(backoff)
				<-t.C
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		backoff = 0
		select {
		case s.sem <- struct{}{}:
		default:
			s.cfg.Metrics.Connection(metrics.ConnRefusedLimit)
			closeNoTimeWait(c)
			continue
		}
		budgeted, ok := s.takeBudget()
		if !ok {
			<-s.sem
			s.cfg.Metrics.Connection(metrics.ConnRefusedNodeLimit)
			closeNoTimeWait(c)
			continue
		}
		sc := &srvConn{c: c, budgeted: budgeted}
		if !s.track(sc) {
			s.releaseBudget(budgeted)
			<-s.sem
			c.Close()
			return ErrServerClosed
		}
		go s.serveConn(sc)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

func (s *Server) track(sc *srvConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[sc] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(sc *srvConn) {
	s.mu.Lock()
	delete(s.conns, sc)
	s.mu.Unlock()
	s.wg.Done()
}

// setIdle marks an HTTP/1.1 connection idle (waiting for a request) or busy.
// It returns false when the server is shutting down and the connection must
// close instead of starting a new request.
func (s *Server) setIdle(sc *srvConn, idle bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc.idle = idle
	return !s.closing
}

func (s *Server) setKind(sc *srvConn, k connKind) {
	s.mu.Lock()
	sc.kind = k
	s.mu.Unlock()
}

// Shutdown stops accepting, closes idle connections, lets in-flight HTTP/1.1
// requests finish, sends GOAWAY on HTTP/2 connections, and waits for every
// connection to end or ctx to be done; then it closes what is left
// (upgraded and passthrough connections) and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	for sc := range s.conns {
		s.nudge(sc)
	}
	s.mu.Unlock()
	// Runs the registered http2 graceful-shutdown hook (GOAWAY); the base
	// server tracks no connections itself, so this returns at once.
	if err := s.h2base.Shutdown(ctx); err != nil {
		s.cfg.Logger.Debug("http2 graceful shutdown", "error", err)
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	defer s.pool.closeIdle()
	select {
	case <-done:
		s.closeTransports()
		return nil
	case <-ctx.Done():
		s.closeAll()
		<-done
		s.closeTransports()
		return fmt.Errorf("shutdown verifier: %w", ctx.Err())
	}
}

// Close closes every listener and connection at once.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()
	s.closeAll()
	s.wg.Wait()
	s.pool.closeIdle()
	s.closeTransports()
	return nil
}

func (s *Server) closeTransports() {
	s.h2t.CloseIdleConnections()
	s.h1t.CloseIdleConnections()
}

func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sc := range s.conns {
		sc.c.Close()
	}
}

// nudge wakes an idle HTTP/1.1 connection (or one not yet classified) so it
// notices the shutdown. Busy ones notice when their request ends. Called
// with s.mu held.
func (s *Server) nudge(sc *srvConn) {
	if (sc.kind == kindHTTP1 && sc.idle) || sc.kind == kindNew {
		sc.c.SetReadDeadline(time.Unix(1, 0))
	}
}

// connInfo is what every request on a connection shares.
type connInfo struct {
	local, remote netip.AddrPort
	source        identity.Source
	sourceID      string // source.String()
	remoteStr     string // remote.String(), for audit
	clientIP      string // X-Forwarded-For value
	forwarded     string // Forwarded value
}

func (s *Server) serveConn(sc *srvConn) {
	c := sc.c
	m := s.cfg.Metrics
	m.ConnOpened()
	defer func() {
		c.Close()
		m.ConnClosed()
		s.releaseBudget(sc.budgeted)
		<-s.sem
		s.untrack(sc)
	}()
	ci := &connInfo{local: addrPort(c.LocalAddr()), remote: addrPort(c.RemoteAddr())}
	ci.source = identity.AnonymousSource
	if s.cfg.Sources != nil {
		ci.source = s.cfg.Sources.Resolve(ci.local, ci.remote)
	}
	ci.sourceID = ci.source.String()
	ci.remoteStr = ci.remote.String()
	ip := ci.remote.Addr().Unmap()
	ci.clientIP = ip.String()
	if ip.Is6() {
		ci.forwarded = `for="[` + ci.clientIP + `]";proto=http`
	} else {
		ci.forwarded = "for=" + ci.clientIP + ";proto=http"
	}

	if s.passthrough[ci.local.Port()] {
		s.setKind(sc, kindSplice)
		s.servePassthrough(c, ci)
		return
	}

	c.SetReadDeadline(time.Now().Add(s.cfg.ReadHeaderTimeout))
	br := bufio.NewReaderSize(newRawIO(c), 4096)
	kind, err := classify(br)
	if kind != firstHTTP1 && kind != firstH2Preface {
		// Nothing was or will be sent: reset rather than leave a
		// TIME_WAIT socket on a captured tuple.
		defer closeNoTimeWait(c)
	}
	switch kind {
	case firstTLS:
		m.Connection(metrics.ConnRefusedTLS)
		s.cfg.Logger.Debug("refused tls on captured port", "port", ci.local.Port(), "source", ci.sourceID)
		return
	case firstNonHTTP:
		m.Connection(metrics.ConnRefusedNonHTTP)
		s.cfg.Logger.Debug("refused non-http bytes on captured port", "port", ci.local.Port(), "source", ci.sourceID)
		return
	case firstNone:
		if isTimeout(err) {
			m.Connection(metrics.ConnRefusedTimeout)
		}
		return
	}
	m.Connection(metrics.ConnAccepted)
	if kind == firstH2Preface {
		s.setKind(sc, kindHTTP2)
		c.SetReadDeadline(time.Time{})
		s.serveH2(c, br, ci, nil, nil)
		return
	}
	s.setKind(sc, kindHTTP1)
	h := &h1conn{s: s, sc: sc, c: c, br: br, ci: ci}
	h.serve()
}

// closeNoTimeWait closes c with SO_LINGER 0: a reset instead of a FIN, so
// the agent does not keep a TIME_WAIT socket on the captured 4-tuple, which
// would make the datapath drop a client's reuse of that tuple for 60s. Only
// for connections with nothing unsent: a reset discards unsent data.
func closeNoTimeWait(c net.Conn) {
	if tc, ok := c.(interface{ SetLinger(int) error }); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case nil:
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

type firstBytes uint8

const (
	firstNone firstBytes = iota // nothing arrived (timeout or EOF)
	firstTLS
	firstNonHTTP
	firstH2Preface
	firstHTTP1
)

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// classify looks at the first bytes without consuming them. An HTTP/1.x
// request starts with a method token and a space; TLS with a handshake
// record (0x16 0x03); HTTP/2 with the connection preface.
func classify(br *bufio.Reader) (firstBytes, error) {
	b, err := br.Peek(1)
	if err != nil {
		return firstNone, err
	}
	if b[0] == 0x16 {
		return firstTLS, nil
	}
	for n := 1; n <= 24; n++ {
		b, err := br.Peek(n)
		if err != nil {
			return firstNonHTTP, err
		}
		c := b[n-1]
		if c == ' ' {
			if n == 1 {
				return firstNonHTTP, nil
			}
			if string(b) == "PRI " {
				p, err := br.Peek(len(h2Preface))
				if err != nil || string(p) != h2Preface {
					return firstNonHTTP, err
				}
				return firstH2Preface, nil
			}
			return firstHTTP1, nil
		}
		if !isTokenChar(c) {
			return firstNonHTTP, nil
		}
	}
	return firstNonHTTP, nil
}

func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// servePassthrough applies the L4 decision and splices the bytes.
func (s *Server) servePassthrough(c net.Conn, ci *connInfo) {
	ctx := context.Background()
	dec := Decision{Reason: ReasonNoMatchingRule}
	start := time.Now()
	if s.cfg.L4Authorizer != nil {
		dec = s.cfg.L4Authorizer.AuthorizeConn(ctx, &ConnRequest{
			Workload: s.cfg.Workload, Source: ci.source, SourceAddr: ci.remote, Destination: ci.local,
		})
	}
	elapsed := time.Since(start)
	var rec audit.Record
	s.fillRecord(&rec, start, ci, &dec, TCP, "", "")
	refuse := !dec.Allow && dec.Mode == Enforce
	s.observe(&rec, &dec, elapsed)
	if refuse {
		s.cfg.Metrics.Connection(metrics.ConnRefusedL4)
		return
	}
	s.cfg.Metrics.Connection(metrics.ConnPassthrough)
	dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	up, err := s.cfg.Dialer.DialContext(dctx, "tcp", ci.local.String())
	cancel()
	if err != nil {
		s.cfg.Logger.Debug("dial application", "error", err, "port", ci.local.Port())
		return
	}
	defer up.Close()
	// No stream idle timeout: idle database connections and the like are
	// the norm on passthrough ports.
	splice(c, nil, up, nil, s.cfg.NoSplice, nil)
}

// splice copies both ways until both directions end, first flushing bytes
// already buffered in the readers. Copies between TCP connections use
// splice(2) inside io.Copy, unless userSpace (Config.NoSplice); those in
// user space mark progress on w (nil: none).
func splice(a net.Conn, abuf []byte, b net.Conn, bbuf []byte, userSpace bool, w *streamWatch) {
	done := make(chan struct{}, 2)
	half := func(dst, src net.Conn, pre []byte) {
		defer func() { done <- struct{}{} }()
		if len(pre) > 0 {
			if _, err := dst.Write(pre); err != nil {
				src.Close()
				return
			}
		}
		var err error
		if userSpace {
			bp := copyBufPool.Get().(*[]byte)
			// The anonymous structs hide ReaderFrom and WriterTo, the
			// paths to splice(2).
			var r io.Reader = struct{ io.Reader }{src}
			if w != nil {
				r = markReader{src, w}
			}
			_, err = io.CopyBuffer(struct{ io.Writer }{dst}, r, *bp)
			copyBufPool.Put(bp)
		} else {
			_, err = io.Copy(dst, src)
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
			cw.CloseWrite()
		} else {
			dst.Close()
			src.Close()
		}
	}
	go half(b, a, abuf)
	go half(a, b, bbuf)
	<-done
	<-done
}
