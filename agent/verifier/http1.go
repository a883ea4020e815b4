package verifier

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/portcullis-mesh/portcullis/agent/audit"
)

// h1conn serves one HTTP/1.x client connection: requests are read, decided
// and forwarded one at a time on the connection's goroutine.
type h1conn struct {
	s  *Server
	sc *srvConn
	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer
	ci *connInfo
	// idleUntil is the idle deadline currently set on c; zero when c's read
	// deadline is anything else.
	idleUntil time.Time
	// watch bounds stalls of bodies and tunnels (StreamIdleTimeout); nil
	// when there is no limit. sw is its storage.
	watch *streamWatch
	sw    streamWatch
	// grown is set once br was replaced by a bigger buffer over a
	// MultiReader: reading c directly is then no longer safe to reason
	// about, so request bodies are not spliced.
	grown bool
	// req, rec and the parse scratch are reused for every request of the
	// connection.
	req Request
	rec audit.Record
	rqs reqScratch
	rss respScratch
}

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (h *h1conn) serve() {
	s := h.s
	h.bw = bufio.NewWriterSize(newRawIO(h.c), 4096)
	if t := s.cfg.StreamIdleTimeout; t > 0 {
		h.sw.tick, h.sw.onIdle = t/streamTicks, h.streamIdle
		h.watch = &h.sw
		defer h.watch.stop()
	}
	for first := true; ; first = false {
		if !first {
			if !s.setIdle(h.sc, true) {
				return
			}
			h.armIdle()
			_, err := h.br.Peek(1)
			if !s.setIdle(h.sc, false) || err != nil {
				if err == nil || isTimeout(err) {
					// Idle timeout or shutdown: the agent closes first.
					closeNoTimeWait(h.c)
				}
				return
			}
			// Most requests arrive whole: then no header deadline is needed
			// and the idle one (still running) bounds nothing that reads.
			if b, _ := h.br.Peek(h.br.Buffered()); !bytes.Contains(b, crlfcrlf) {
				h.c.SetReadDeadline(time.Now().Add(s.cfg.ReadHeaderTimeout))
				h.idleUntil = time.Time{}
			}
		}
		headLen, ref := h.readHead()
		if ref.status != 0 {
			h.refuseProtocol(ref, nil)
			return
		} else if ref.reason != "" {
			return // read error or timeout: nothing to answer
		}
		req, err := parseRequest(h.br, headLen, &h.rqs)
		if err != nil {
			h.refuseProtocol(refusal{http.StatusBadRequest, ReasonMalformedRequest}, nil)
			return
		}
		if req.ContentLength != 0 || len(req.Header["Upgrade"]) > 0 {
			// Bodies and upgraded streams read the client for as long as
			// they last; a bodiless request does not read it again before
			// the next iteration resets the deadline.
			h.c.SetReadDeadline(time.Time{})
			h.idleUntil = time.Time{}
		}
		if !h.handle(req) {
			return
		}
	}
}

var crlfcrlf = []byte("\r\n\r\n")

// armIdle bounds the wait for the next request by IdleTimeout. The deadline
// is moved only once it has drifted by more than a sixteenth of the
// timeout, so a busy connection updates the runtime's timer every
// IdleTimeout/16 rather than on every request; an idle connection is still
// closed between 15/16 and all of IdleTimeout after its last request.
func (h *h1conn) armIdle() {
	t := h.s.cfg.IdleTimeout
	d := time.Now().Add(t)
	if h.idleUntil.IsZero() || d.Sub(h.idleUntil) > t/16 {
		h.c.SetReadDeadline(d)
		h.idleUntil = d
	}
}

// readHead waits until the whole header block is buffered and checks it.
// It returns the block's length and a refusal with a status to answer, a
// refusal with only a reason when the connection just ended, or a zero
// refusal.
func (h *h1conn) readHead() (int, refusal) {
	limit := h.s.cfg.MaxHeaderBytes
	scanned := 0
	for {
		b, err := h.br.Peek(h.br.Buffered())
		if err != nil {
			return 0, refusal{reason: ReasonMalformedRequest}
		}
		from := max(0, scanned-3)
		if i := bytes.Index(b[from:], crlfcrlf); i >= 0 {
			end := from + i + len(crlfcrlf)
			if end > limit {
				return 0, refusal{http.StatusRequestHeaderFieldsTooLarge, ReasonHeadersTooLarge}
			}
			return end, headProblem(b[:end], h.s.cfg.MaxHeaderCount)
		}
		if bytes.Contains(b[from:], []byte("\n\n")) {
			return 0, refusal{http.StatusBadRequest, ReasonSmuggling}
		}
		scanned = len(b)
		if scanned >= limit {
			return 0, refusal{http.StatusRequestHeaderFieldsTooLarge, ReasonHeadersTooLarge}
		}
		if scanned == h.br.Size() {
			h.grow(limit)
		}
		if _, err := h.br.Peek(scanned + 1); err != nil {
			return 0, refusal{reason: ReasonMalformedRequest}
		}
	}
}

// grow replaces the read buffer with one of size bytes holding the same
// unread bytes. Most requests fit the initial 4 KiB; big tokens do not.
func (h *h1conn) grow(size int) {
	b, _ := h.br.Peek(h.br.Buffered())
	pre := bytes.Clone(b)
	h.br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(pre), newRawIO(h.c)), size)
	h.grown = true
}

// refuseProtocol answers a request the verifier refuses before any policy
// (smuggling shapes, limits, malformed requests), records it, and leaves the
// connection to be closed.
func (h *h1conn) refuseProtocol(ref refusal, req *http.Request) {
	dec := Decision{Status: ref.status, Reason: ref.reason}
	var method, path string
	if req != nil {
		method, path = req.Method, req.URL.Path
	}
	h.s.fillRecord(&h.rec, time.Now(), h.ci, &dec, HTTP1, method, path)
	h.rec.Status = ref.status
	h.s.observe(&h.rec, &dec, 0)
	h.c.SetWriteDeadline(time.Now().Add(h.s.cfg.ReadHeaderTimeout))
	writeRefusal1(h.bw, ref.status, ref.reason, true)
}

// handle decides and answers one request. It returns whether the connection
// may carry another request.
func (h *h1conn) handle(req *http.Request) bool {
	s := h.s
	switch {
	case req.Method == http.MethodConnect:
		h.refuseProtocol(refusal{http.StatusMethodNotAllowed, ReasonMethodNotAllowed}, req)
		return false
	case !requestTarget(req), req.Host == "" && req.ProtoAtLeast(1, 1), !httpguts.ValidHostHeader(req.Host), !cleanPath(req.URL.Path):
		h.refuseProtocol(refusal{http.StatusBadRequest, ReasonMalformedRequest}, req)
		return false
	}
	host, ok := canonicalHost(req.Host)
	if !ok {
		h.refuseProtocol(refusal{http.StatusBadRequest, ReasonMalformedRequest}, req)
		return false
	}
	req.Host = host // the policy and the application see the same name
	upgrade := upgradeOf(req)
	if upgrade != "" && httpguts.HeaderValuesContainsToken(req.Header["Upgrade"], "h2c") {
		if settings, ok := h2cSettings(req); ok {
			// Every stream of the upgraded connection is authorized on its own.
			return h.upgradeH2C(req, settings)
		}
		// Never splice an h2c upgrade: later streams would go unchecked.
		upgrade = ""
	}
	token, ntok := bearerToken(req.Header["Authorization"])
	r := &h.req
	*r = Request{
		Workload: s.cfg.Workload, Source: h.ci.source, SourceAddr: h.ci.remote, Destination: h.ci.local,
		Protocol: HTTP1, Method: req.Method, Host: req.Host, Path: req.URL.Path, Header: req.Header, Token: token,
	}
	start := time.Now()
	var dec Decision
	if ntok > 1 {
		dec = Decision{Status: http.StatusBadRequest, Reason: ReasonMultipleTokens}
	} else {
		dec = s.cfg.Authorizer.Authorize(context.Background(), r)
	}
	elapsed := time.Since(start)
	r.Header, r.Token = nil, ""
	refuse := !dec.Allow && (dec.Mode == Enforce || ntok > 1)
	s.fillRecord(&h.rec, start, h.ci, &dec, HTTP1, req.Method, req.URL.Path)
	status := refusalStatus(&dec)
	if refuse {
		h.rec.Status = status
	}
	s.observe(&h.rec, &dec, elapsed)
	if refuse {
		keep := !req.Close && req.ContentLength == 0
		if err := writeRefusal1(h.bw, status, dec.Reason, !keep); err != nil {
			return false
		}
		return keep
	}
	return h.forward(req, &dec, upgrade)
}

// requestTarget reports whether req's request-target is one whose host and
// path the policy and the application read alike (RFC 9112 §3.2):
//   - origin-form ("/path?query");
//   - absolute-form with an http or https scheme, a host and no userinfo:
//     req.Host is then the URL's host (as http.ReadRequest sets it), and
//     the application gets the same host in Host and the same path in
//     origin-form (writeRequestHead). An empty path is set to "/", which is
//     what the application receives;
//   - "*" with OPTIONS.
//
// Anything else is refused: an opaque target ("x:http://admin/secret"),
// which has no path for the policy while the application, which must
// accept absolute-form, routes by the URL inside it; another scheme; a
// scheme without an authority ("http:/admin"); "*" with another method.
func requestTarget(req *http.Request) bool {
	uri, u := req.RequestURI, req.URL
	switch {
	case uri != "" && uri[0] == '/':
		return true // the fast path's only shape; "//x" is refused by cleanPath
	case uri == "*":
		return req.Method == http.MethodOptions
	case u.Scheme != "http" && u.Scheme != "https", u.Opaque != "", u.User != nil, u.Host == "":
		return false
	case u.Path == "":
		u.Path, u.RawPath = "/", ""
	}
	return u.Path[0] == '/'
}

func refusalStatus(d *Decision) int {
	if d.Status != 0 {
		return d.Status
	}
	return http.StatusForbidden
}

// forward sends req to the original destination and relays the response.
func (h *h1conn) forward(req *http.Request, dec *Decision, upgrade string) bool {
	s := h.s
	ctx := context.Background()
	hasBody := req.ContentLength != 0
	var (
		uc   *upConn
		resp *http.Response
		err  error
	)
	// One view of the strip list for the head and the trailers.
	strip := stripSet{*s.strip.Load(), dec.Strip}
	upStart := time.Now()
	for attempt := 0; ; attempt++ {
		if attempt == 0 {
			uc, err = s.pool.get(ctx, h.ci.local)
		} else {
			uc, err = s.pool.dial(ctx, h.ci.local)
		}
		if err != nil {
			s.cfg.Logger.Debug("forward", "error", err)
			return h.badGateway(req)
		}
		h.writeRequestHead(uc.bw, req, dec, strip, upgrade)
		if hasBody {
			// Send the head now unless body bytes are already here to go
			// with it: a client waiting for 100 Continue sends none until
			// the application has seen the head.
			if h.br.Buffered() == 0 {
				err = uc.bw.Flush()
			}
			if err == nil {
				break
			}
		} else if err = uc.bw.Flush(); err == nil {
			resp, err = h.readResponse(uc, req)
		}
		if err == nil {
			break
		}
		uc.c.Close()
		if !uc.reused || attempt > 0 || !staleConnErr(err) {
			s.cfg.Logger.Debug("forward", "error", err)
			return h.badGateway(req)
		}
	}

	var bodyDone chan error
	if hasBody {
		bodyDone = make(chan error, 1)
		decHeaders := dec.Headers // not dec: that would move the caller's Decision to the heap
		h.watch.begin(h.c, uc.c, string(HTTP1))
		go func() {
			err := h.sendRequestBody(uc, req, decHeaders, strip)
			if !h.watch.end() && err == nil {
				err = errStreamIdle
			}
			bodyDone <- err
		}()
		resp, err = h.readResponse(uc, req)
		if err != nil {
			uc.c.Close()
			h.c.SetReadDeadline(time.Now()) // unblock the body copy
			<-bodyDone
			return h.badGateway(req)
		}
	}
	s.cfg.Metrics.ObserveUpstream(time.Since(upStart))

	if resp.StatusCode == http.StatusSwitchingProtocols {
		if upgrade == "" || bodyDone != nil {
			uc.c.Close()
			if bodyDone != nil {
				h.c.SetReadDeadline(time.Now())
				<-bodyDone
			}
			return h.badGateway(req)
		}
		h.writeResponseHead(resp, req, framing{upgrade: true})
		if h.bw.Flush() != nil {
			uc.c.Close()
			return false
		}
		h.s.setKind(h.sc, kindSplice)
		h.watch.begin(h.c, uc.c, protoUpgrade)
		splice(h.c, drain(h.br), uc.c, drain(uc.br), h.s.cfg.NoSplice, h.watch)
		h.watch.end()
		return false
	}

	fr := h.framingFor(resp, req)
	h.writeResponseHead(resp, req, fr)
	reusable := !resp.Close
	h.watch.begin(h.c, uc.c, string(HTTP1))
	werr, rerr := h.relayBody(resp, uc, fr)
	if !h.watch.end() && werr == nil {
		werr = errStreamIdle // both connections are closed
	}
	if rerr != nil || werr != nil {
		reusable = false
	}
	keep := !fr.closeConn && werr == nil && rerr == nil
	if bodyDone != nil {
		if err := h.waitBody(bodyDone, uc); err != nil {
			reusable, keep = false, false
		}
	}
	if reusable {
		s.pool.put(uc)
	} else {
		uc.c.Close()
	}
	return keep
}

// bodyGrace is how long a finished response waits for the request body
// copy to finish. It is normally done already (or finishing a flush); it
// is still running when the application answered before reading the whole
// body, and then the exchange is aborted.
const bodyGrace = 2 * time.Second

// waitBody waits for the request-body copy after the response was relayed.
// A non-nil result means both connections must be closed.
func (h *h1conn) waitBody(bodyDone chan error, uc *upConn) error {
	select {
	case err := <-bodyDone:
		return err
	default:
	}
	t := time.NewTimer(bodyGrace)
	defer t.Stop()
	select {
	case err := <-bodyDone:
		return err
	case <-t.C:
	}
	// The rest of the body cannot be resynchronised: end both connections.
	uc.c.Close()
	if cw, ok := h.c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	h.c.SetReadDeadline(time.Now())
	<-bodyDone
	return errors.New("application answered before reading the request body")
}

// drain returns (and consumes) the bytes buffered in br.
func drain(br *bufio.Reader) []byte {
	n := br.Buffered()
	if n == 0 {
		return nil
	}
	b, _ := br.Peek(n)
	b = bytes.Clone(b)
	br.Discard(n)
	return b
}

// staleConnErr reports whether err looks like a pooled connection the
// application had already closed, before any response byte arrived.
func staleConnErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (h *h1conn) badGateway(req *http.Request) bool {
	keep := !req.Close && req.ContentLength == 0
	writeRefusal1(h.bw, http.StatusBadGateway, ReasonUpstreamUnavailable, !keep)
	return keep
}

// readResponse reads the application's response head, relaying interim
// (1xx) responses other than 101 to the client.
func (h *h1conn) readResponse(uc *upConn, req *http.Request) (*http.Response, error) {
	if t := h.s.cfg.ResponseHeaderTimeout; t > 0 {
		uc.c.SetReadDeadline(time.Now().Add(t))
		defer uc.c.SetReadDeadline(time.Time{})
	}
	for {
		// Wait for the first byte here: EOF now (not io.ErrUnexpectedEOF
		// from ReadResponse) means no byte of a response came, so a stale
		// pooled connection can be told from a truncated response.
		if _, err := uc.br.Peek(1); err != nil {
			return nil, err
		}
		resp, err := parseResponse(uc.br, req, &h.rss)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, nil
		}
		if req.ProtoAtLeast(1, 1) {
			h.writeResponseHead(resp, req, framing{interim: true})
			if err := h.bw.Flush(); err != nil {
				return nil, err
			}
		}
	}
}

// framing is how a response body is delimited towards the client.
type framing struct {
	noBody    bool // HEAD, 1xx, 204, 304
	length    int64
	chunked   bool
	closeConn bool // close-delimited body, or the client asked to close
	upgrade   bool // 101 Switching Protocols
	interim   bool // 1xx other than 101
}

func (h *h1conn) framingFor(resp *http.Response, req *http.Request) framing {
	fr := framing{length: resp.ContentLength, closeConn: req.Close}
	switch {
	case req.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent ||
		resp.StatusCode == http.StatusNotModified:
		fr.noBody = true
	case resp.ContentLength >= 0:
	case req.ProtoAtLeast(1, 1):
		fr.chunked = true
	default:
		fr.closeConn = true
	}
	return fr
}

func (h *h1conn) writeResponseHead(resp *http.Response, req *http.Request, fr framing) {
	bw := h.bw
	bw.WriteString("HTTP/1.1 ")
	if resp.Status != "" {
		bw.WriteString(resp.Status)
	} else {
		bw.WriteString(strconv.Itoa(resp.StatusCode))
	}
	bw.WriteString("\r\n")
	conn := resp.Header["Connection"]
	for k, vv := range resp.Header {
		if dropResponseHeader(k, conn) {
			continue
		}
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
	switch {
	case fr.interim:
	case fr.upgrade:
		bw.WriteString("Connection: Upgrade\r\n")
		for _, v := range resp.Header["Upgrade"] {
			writeField(bw, "Upgrade", v)
		}
	default:
		switch {
		case fr.noBody:
			if req.Method == http.MethodHead && resp.ContentLength >= 0 {
				writeLength(bw, resp.ContentLength)
			}
		case fr.chunked:
			bw.WriteString("Transfer-Encoding: chunked\r\n")
			if len(resp.Trailer) > 0 {
				for k := range resp.Trailer {
					writeField(bw, "Trailer", k)
				}
			}
		case !fr.closeConn || fr.length >= 0:
			writeLength(bw, fr.length)
		}
		if fr.closeConn {
			bw.WriteString("Connection: close\r\n")
		} else if !req.ProtoAtLeast(1, 1) {
			bw.WriteString("Connection: keep-alive\r\n")
		}
	}
	bw.WriteString("\r\n")
}

func writeField(bw *bufio.Writer, k, v string) {
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(v)
	bw.WriteString("\r\n")
}

func writeLength(bw *bufio.Writer, n int64) {
	bw.WriteString("Content-Length: ")
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), n, 10)) // no allocation
	bw.WriteString("\r\n")
}

// writeRequestHead writes the forwarded request's head: the client's
// headers minus the ones the verifier owns, then the verifier's own.
func (h *h1conn) writeRequestHead(bw *bufio.Writer, req *http.Request, dec *Decision, strip stripSet, upgrade string) {
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	uri := req.RequestURI
	if uri == "" || (uri[0] != '/' && uri != "*") {
		uri = req.URL.RequestURI() // absolute-form to origin-form
	}
	bw.WriteString(uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(req.Host)
	bw.WriteString("\r\n")
	conn := req.Header["Connection"]
	for k, vv := range req.Header {
		if dropRequestHeader(k, strip, conn) || decisionSets(dec.Headers, k) {
			continue
		}
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
	for _, f := range dec.Headers {
		if h.s.forwardable(f) {
			writeField(bw, f.Name, f.Value)
		}
	}
	writeField(bw, "X-Portcullis-Source", h.ci.sourceID)
	writeField(bw, "X-Forwarded-For", h.ci.clientIP)
	bw.WriteString("X-Forwarded-Proto: http\r\n")
	if req.Host != "" {
		writeField(bw, "X-Forwarded-Host", req.Host)
	}
	writeField(bw, "Forwarded", h.ci.forwarded)
	if upgrade != "" {
		bw.WriteString("Connection: Upgrade\r\n")
		writeField(bw, "Upgrade", upgrade)
	}
	switch {
	case req.ContentLength > 0:
		writeLength(bw, req.ContentLength)
	case req.ContentLength < 0:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
		for k := range req.Trailer {
			if !dropTrailer(k, strip, conn, dec.Headers) {
				writeField(bw, "Trailer", k)
			}
		}
	case req.Method == http.MethodPost || req.Method == http.MethodPut || req.Method == http.MethodPatch:
		bw.WriteString("Content-Length: 0\r\n")
	}
	bw.WriteString("\r\n")
}

// decisionSets reports whether the decision's headers include k (the
// client's copy is then dropped even if StripHeaders forgot it).
func decisionSets(headers []HeaderField, k string) bool {
	for i := range headers {
		if http.CanonicalHeaderKey(headers[i].Name) == k {
			return true
		}
	}
	return false
}

// sendRequestBody streams the request body to the application, re-framed:
// the same length, or chunked (with the trailers dropTrailer keeps) when
// the client chunked.
func (h *h1conn) sendRequestBody(uc *upConn, req *http.Request, decHeaders []HeaderField, strip stripSet) error {
	if req.ContentLength >= spliceMin && !h.grown && !h.s.cfg.NoSplice {
		if err := spliceN(uc.c, uc.bw, h.c, h.br, req.ContentLength); err != nil {
			uc.c.Close()
			return err
		}
		return nil
	}
	chunked := req.ContentLength < 0
	_, rerr, werr := copyBody(uc.bw, req.Body, h.br, chunked, h.watch)
	if rerr == nil && werr == nil && chunked {
		conn := req.Header["Connection"]
		werr = writeLastChunk(uc.bw, req.Trailer, func(k string) bool { return dropTrailer(k, strip, conn, decHeaders) })
	}
	if werr == nil {
		werr = uc.bw.Flush()
	}
	if rerr != nil || werr != nil {
		uc.c.Close() // abort: the application must not see a short body as complete
		if rerr != nil {
			return rerr
		}
		return werr
	}
	return nil
}

// relayBody streams the response body to the client.
func (h *h1conn) relayBody(resp *http.Response, uc *upConn, fr framing) (werr, rerr error) {
	upBuf := uc.br
	if fr.noBody {
		return h.bw.Flush(), nil
	}
	if !fr.chunked && fr.length >= spliceMin && !h.s.cfg.NoSplice {
		// resp.Body is bypassed, not closed: closing would read on.
		if err := spliceN(h.c, h.bw, uc.c, upBuf, fr.length); err != nil {
			return err, err
		}
		return nil, nil
	}
	_, rerr, werr = copyBody(h.bw, resp.Body, upBuf, fr.chunked, h.watch)
	if rerr != nil || werr != nil {
		// Not resp.Body.Close: net/http's chunked body reads on to its
		// end, and an endless stream (server-sent events) never ends. The
		// caller closes the connection instead.
		return werr, rerr
	}
	if fr.chunked {
		werr = writeLastChunk(h.bw, resp.Trailer, dropResponseTrailer)
	}
	if werr == nil {
		werr = h.bw.Flush()
	}
	resp.Body.Close() // at EOF: reads nothing more
	return werr, rerr
}

// spliceMin is the body length from which a Content-Length body is moved
// socket to socket with splice(2) (inside io.Copy between TCP connections)
// instead of through a user-space buffer.
const spliceMin = 64 << 10

// spliceN moves exactly n body bytes from src to dst: first what dstBuf
// holds (the head), then what srcBuf already buffered, then the rest
// straight from socket to socket.
func spliceN(dst net.Conn, dstBuf *bufio.Writer, src net.Conn, srcBuf *bufio.Reader, n int64) error {
	if k := min(int64(srcBuf.Buffered()), n); k > 0 {
		b, _ := srcBuf.Peek(int(k))
		if _, err := dstBuf.Write(b); err != nil {
			return err
		}
		srcBuf.Discard(int(k))
		n -= k
	}
	if err := dstBuf.Flush(); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	m, err := io.Copy(dst, io.LimitReader(src, n))
	if err == nil && m < n {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// copyBody copies src to dst, optionally as chunks, flushing whenever the
// source has nothing more buffered (so streams stay live) — and only then,
// so a small response goes out in one write with its head. src's underlying
// buffer, when known, tells whether more bytes are already available. Reads
// and flushes mark progress on w.
func copyBody(dst *bufio.Writer, src io.Reader, srcBuf *bufio.Reader, chunked bool, w *streamWatch) (n int64, rerr, werr error) {
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	buf := *bp
	for {
		m, err := src.Read(buf)
		if m > 0 {
			w.mark()
			n += int64(m)
			if chunked {
				dst.Write(strconv.AppendInt(dst.AvailableBuffer(), int64(m), 16))
				dst.WriteString("\r\n")
				dst.Write(buf[:m])
				_, werr = dst.WriteString("\r\n")
			} else {
				_, werr = dst.Write(buf[:m])
			}
			if werr == nil && (srcBuf == nil || srcBuf.Buffered() == 0) && err == nil {
				werr = dst.Flush()
				w.mark()
			}
			if werr != nil {
				return n, nil, werr
			}
		}
		if err == io.EOF {
			return n, nil, nil
		}
		if err != nil {
			return n, err, nil
		}
	}
}

// writeLastChunk ends a chunked body with the trailer fields drop keeps.
func writeLastChunk(bw *bufio.Writer, trailer http.Header, drop func(k string) bool) error {
	bw.WriteString("0\r\n")
	for k, vv := range trailer {
		if drop(k) {
			continue
		}
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
	_, err := bw.WriteString("\r\n")
	return err
}

func dropResponseTrailer(k string) bool { return dropResponseHeader(k, nil) }

// protoUpgrade labels stream idle timeouts of upgraded (spliced) HTTP/1.1
// connections.
const protoUpgrade = "upgrade"

// streamIdle is the watch's onIdle: it ends a stalled exchange. The client
// is reset (nothing it is owed can still arrive), the application sees its
// connection end before the body did.
func (h *h1conn) streamIdle(proto string, conns [2]net.Conn) {
	h.s.cfg.Metrics.StreamIdleTimeout(proto)
	h.s.cfg.Logger.Debug("stream idle timeout", "protocol", proto, "port", h.ci.local.Port(), "source", h.ci.sourceID)
	if conns[0] != nil {
		closeNoTimeWait(conns[0])
	}
	if conns[1] != nil {
		conns[1].Close()
	}
}

// fillRecord fills rec for one decision.
func (s *Server) fillRecord(rec *audit.Record, at time.Time, ci *connInfo, dec *Decision, p Protocol, method, path string) {
	*rec = audit.Record{
		Time: at, Decision: audit.Deny, Reason: string(dec.Reason), Policy: dec.Policy, Rule: dec.Rule,
		Mode: audit.Enforce, Source: ci.sourceID, SourceAddr: ci.remoteStr, Workload: s.cfg.Workload,
		Port: ci.local.Port(), Protocol: string(p), Method: method, Path: path,
		Issuer: dec.Token.Issuer, Tenant: dec.Token.Tenant, ObjectID: dec.Token.ObjectID,
		Subject: dec.Token.Subject, ClientID: dec.Token.ClientID,
	}
	if dec.Allow {
		rec.Decision = audit.Allow
	}
	if dec.Mode == AuditOnly {
		rec.Mode = audit.AuditOnly
	}
}

// observe sends rec to the audit log and counts the decision.
func (s *Server) observe(rec *audit.Record, dec *Decision, elapsed time.Duration) {
	if s.cfg.Audit != nil {
		s.cfg.Audit.Log(rec)
	}
	s.cfg.Metrics.ObserveRequest(string(rec.Decision), string(dec.Reason), dec.Policy, string(rec.Mode), elapsed)
}
