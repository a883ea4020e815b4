//lint:file-ignore SA1019 x/net/http2 server is kept on purpose; see initH2.

package verifier

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"

	"github.com/portcullis-mesh/portcullis/agent/audit"
)

// initH2 sets up both HTTP/2 sides. The server side is x/net/http2 because
// it is the only implementation that serves an already-accepted connection
// (ServeConn) and the h2c Upgrade of RFC 7540 §3.2, both of which the
// verifier needs; the upstream side is net/http's own h2c transport.
func (s *Server) initH2() error {
	cfg := &s.cfg
	s.h2 = &http2.Server{
		MaxConcurrentStreams:         cfg.MaxConcurrentStreams,
		IdleTimeout:                  cfg.IdleTimeout,
		MaxUploadBufferPerConnection: 1 << 20,
		MaxUploadBufferPerStream:     1 << 20,
	}
	if cfg.StreamIdleTimeout > 0 {
		// A client that stops reading the whole connection: streams are
		// watched one by one (h2handler.forward), the connection's writes
		// here.
		s.h2.WriteByteTimeout = cfg.StreamIdleTimeout
	}
	// The base server only carries limits and the graceful-shutdown hook
	// (GOAWAY) that ConfigureServer registers; it never serves itself.
	s.h2base = &http.Server{
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
	}
	if err := http2.ConfigureServer(s.h2base, s.h2); err != nil {
		return fmt.Errorf("configure http2 server: %w", err)
	}
	s.h2t = &http.Transport{
		Protocols: new(http.Protocols),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
			defer cancel()
			return cfg.Dialer.DialContext(ctx, network, addr)
		},
		ResponseHeaderTimeout:  cfg.ResponseHeaderTimeout,
		MaxResponseHeaderBytes: int64(cfg.MaxHeaderBytes) * 4,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: 30 * time.Second,
			PingTimeout:     10 * time.Second,
		},
	}
	s.h2t.Protocols.SetUnencryptedHTTP2(true)
	// Requests that arrived over an h2c upgrade go to the application over
	// HTTP/1.1: the client only offered HTTP/2, and without the verifier
	// the application would have answered it in HTTP/1.1 (Go's own server,
	// for one, never accepts the upgrade).
	s.h1t = &http.Transport{
		DialContext:            s.h2t.DialContext,
		MaxIdleConnsPerHost:    max(cfg.MaxIdleUpstreamConns, 0),
		IdleConnTimeout:        cfg.UpstreamIdleTimeout,
		ResponseHeaderTimeout:  cfg.ResponseHeaderTimeout,
		MaxResponseHeaderBytes: int64(cfg.MaxHeaderBytes) * 4,
		DisableCompression:     true,
		DisableKeepAlives:      cfg.MaxIdleUpstreamConns < 0,
	}
	return nil
}

// bufConn is a net.Conn whose first bytes come from a bufio.Reader that
// already peeked at them.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// serveH2 serves an HTTP/2 connection: after the prior-knowledge preface
// (still unread in br), or after an h2c upgrade of upgrade.
func (s *Server) serveH2(c net.Conn, br *bufio.Reader, ci *connInfo, upgrade *http.Request, settings []byte) {
	s.h2.ServeConn(&bufConn{Conn: c, r: br}, &http2.ServeConnOpts{
		Context:        context.Background(),
		BaseConfig:     s.h2base,
		Handler:        &h2handler{s: s, ci: ci, upstreamH1: upgrade != nil},
		UpgradeRequest: upgrade,
		Settings:       settings,
	})
}

// h2cSettings returns the decoded HTTP2-Settings of an h2c upgrade request
// the verifier can accept: one settings header named in Connection, and no
// body (the upgrade request becomes stream 1).
func h2cSettings(req *http.Request) ([]byte, bool) {
	vals := req.Header["Http2-Settings"]
	if len(vals) != 1 || req.ContentLength != 0 ||
		!httpguts.HeaderValuesContainsToken(req.Header["Connection"], "HTTP2-Settings") {
		return nil, false
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(vals[0], "="))
	if err != nil || len(b)%6 != 0 {
		return nil, false
	}
	return b, true
}

// upgradeH2C answers 101 and serves the rest of the connection as HTTP/2.
func (h *h1conn) upgradeH2C(req *http.Request, settings []byte) bool {
	h.bw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
	if h.bw.Flush() != nil {
		return false
	}
	h.s.setKind(h.sc, kindHTTP2)
	h.s.serveH2(h.c, h.br, h.ci, req, settings)
	return false
}

// h2handler decides and forwards the requests of one HTTP/2 connection.
type h2handler struct {
	s  *Server
	ci *connInfo
	// upstreamH1 forwards over HTTP/1.1 (connections that began with an
	// h2c upgrade) instead of h2c.
	upstreamH1 bool
}

func (h *h2handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s, ci := h.s, h.ci
	grpc := isGRPC(r.Header)
	proto := HTTP2
	if grpc {
		proto = GRPC
	}
	var ref refusal
	host, hostOK := canonicalHost(r.Host)
	switch {
	case r.Method == http.MethodConnect:
		ref = refusal{http.StatusMethodNotAllowed, ReasonMethodNotAllowed}
	case !cleanPath(r.URL.Path), !hostOK, !httpguts.ValidHostHeader(r.Host),
		r.URL.Path == "*" && r.Method != http.MethodOptions:
		// x/net allows only http and https in :scheme and a :path of "*"
		// or starting with "/" (requestTarget's rules for HTTP/1).
		ref = refusal{http.StatusBadRequest, ReasonMalformedRequest}
	case headerCount(r.Header) > s.cfg.MaxHeaderCount:
		ref = refusal{http.StatusRequestHeaderFieldsTooLarge, ReasonHeadersTooLarge}
	}
	r.Host = host // the policy and the application see the same name
	token, ntok := bearerToken(r.Header["Authorization"])
	if ntok > 1 && ref.status == 0 {
		ref = refusal{http.StatusBadRequest, ReasonMultipleTokens}
	}
	start := time.Now()
	var dec Decision
	if ref.status != 0 {
		dec = Decision{Status: ref.status, Reason: ref.reason}
	} else {
		dec = s.cfg.Authorizer.Authorize(r.Context(), &Request{
			Workload: s.cfg.Workload, Source: ci.source, SourceAddr: ci.remote, Destination: ci.local,
			Protocol: proto, Method: r.Method, Host: r.Host, Path: r.URL.Path, Header: r.Header, Token: token,
		})
	}
	elapsed := time.Since(start)
	refuse := ref.status != 0 || (!dec.Allow && dec.Mode == Enforce)
	var rec audit.Record
	s.fillRecord(&rec, start, ci, &dec, proto, r.Method, r.URL.Path)
	status := refusalStatus(&dec)
	if refuse {
		rec.Status = status
	}
	s.observe(&rec, &dec, elapsed)
	if refuse {
		writeRefusal2(w, grpc, status, dec.Reason)
		return
	}
	h.forward(w, r, &dec, grpc)
}

func headerCount(h http.Header) int {
	n := 0
	for _, vv := range h {
		n += len(vv)
	}
	return n
}

// forward relays r over HTTP/2 (h2c) to the original destination,
// streaming both bodies and the trailers.
func (h *h2handler) forward(w http.ResponseWriter, r *http.Request, dec *Decision, grpc bool) {
	s, ci := h.s, h.ci
	out := &http.Request{
		Method: r.Method,
		URL: &url.URL{Scheme: "http", Host: ci.local.String(), Path: r.URL.Path, RawPath: r.URL.RawPath,
			RawQuery: r.URL.RawQuery},
		Proto: "HTTP/2.0", ProtoMajor: 2,
		Header:        make(http.Header, len(r.Header)+6),
		Body:          r.Body,
		ContentLength: r.ContentLength,
		Host:          r.Host,
	}
	if r.ContentLength == 0 {
		out.Body = http.NoBody
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	out = out.WithContext(ctx)
	proto := HTTP2
	if grpc {
		proto = GRPC
	}
	rc := http.NewResponseController(w)
	sw := newStreamWatch(s.cfg.StreamIdleTimeout, func(label string, _ [2]net.Conn) {
		// Fail the request body (the application sees an error, never a
		// short body), reset the client's stream, and abort the upstream
		// request. The handler is still running: sw.stop comes first.
		s.cfg.Metrics.StreamIdleTimeout(label)
		s.cfg.Logger.Debug("stream idle timeout", "protocol", label, "port", ci.local.Port(), "source", ci.sourceID)
		rc.SetReadDeadline(aLongTimeAgo)
		rc.SetWriteDeadline(aLongTimeAgo)
		cancel()
	})
	defer sw.stop()
	strip := stripSet{*s.strip.Load(), dec.Strip}
	var trailer http.Header
	for k := range r.Trailer { // the names the client announced
		if !dropTrailer(k, strip, nil, dec.Headers) {
			if trailer == nil {
				trailer = make(http.Header, len(r.Trailer))
			}
			trailer[k] = nil
		}
	}
	if out.Body != http.NoBody && (sw != nil || trailer != nil) {
		sw.begin(nil, nil, string(proto))
		out.Body = &h2Body{ReadCloser: r.Body, w: sw, src: r.Trailer, dst: trailer}
		out.Trailer = trailer
	}
	conn := r.Header["Connection"]
	for k, vv := range r.Header {
		if dropRequestHeader(k, strip, conn) || decisionSets(dec.Headers, k) {
			continue
		}
		out.Header[k] = vv
	}
	if httpguts.HeaderValuesContainsToken(r.Header["Te"], "trailers") {
		out.Header["Te"] = []string{"trailers"} // gRPC requires it end to end
	}
	for _, f := range dec.Headers {
		if s.forwardable(f) {
			out.Header.Add(f.Name, f.Value)
		}
	}
	out.Header["X-Portcullis-Source"] = []string{ci.sourceID}
	out.Header["X-Forwarded-For"] = []string{ci.clientIP}
	out.Header["X-Forwarded-Proto"] = []string{"http"}
	if r.Host != "" {
		out.Header["X-Forwarded-Host"] = []string{r.Host}
	}
	out.Header["Forwarded"] = []string{ci.forwarded}

	upStart := time.Now()
	rt := s.h2t
	if h.upstreamH1 {
		rt = s.h1t
		out.Proto, out.ProtoMajor, out.ProtoMinor = "HTTP/1.1", 1, 1
	}
	resp, err := rt.RoundTrip(out)
	if err != nil {
		s.cfg.Logger.Debug("forward h2", "error", err)
		writeRefusal2(w, grpc, http.StatusBadGateway, ReasonUpstreamUnavailable)
		return
	}
	defer resp.Body.Close()
	s.cfg.Metrics.ObserveUpstream(time.Since(upStart))
	wh := w.Header()
	rconn := resp.Header["Connection"]
	for k, vv := range resp.Header {
		if dropResponseHeader(k, rconn) {
			continue
		}
		wh[k] = vv
	}
	if resp.ContentLength >= 0 {
		wh["Content-Length"] = []string{strconv.FormatInt(resp.ContentLength, 10)}
	}
	for k := range resp.Trailer {
		wh.Add("Trailer", k)
	}
	w.WriteHeader(resp.StatusCode)
	sw.begin(nil, nil, string(proto))
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	buf := *bp
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			sw.mark()
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if rc.Flush() != nil {
				return
			}
			sw.mark()
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			// Reset the stream rather than end it cleanly: the client must
			// not take a truncated body (or missing grpc-status) as complete.
			panic(http.ErrAbortHandler)
		}
	}
	if !sw.end() {
		panic(http.ErrAbortHandler) // the stream is being reset
	}
	for k, vv := range resp.Trailer {
		wh[http.TrailerPrefix+k] = vv
	}
}

// aLongTimeAgo is a deadline in the past: it fails pending and later I/O.
var aLongTimeAgo = time.Unix(1, 0)

// h2Body is an HTTP/2 request body on its way to the application. Its
// reads are progress of its stream's watch (w, when not nil), and the
// transfer ends at the first error or EOF. At EOF, before the transport
// reads the outgoing trailers, it copies into dst (the outgoing request's
// Trailer, when not nil) the client's trailers from src whose names dst
// holds: those dropTrailer kept. The server fills src only before the EOF
// it returns, the transport reads dst only after, both on the goroutine
// reading the body.
type h2Body struct {
	io.ReadCloser
	w        *streamWatch
	src, dst http.Header
	done     bool // only the transport's body writer reads
}

func (b *h2Body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.w.mark()
	}
	if err != nil && !b.done {
		b.done = true
		b.w.end()
		if err == io.EOF {
			for k := range b.dst {
				b.dst[k] = b.src[k]
			}
		}
	}
	return n, err
}
