package verifier

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// parseRequest builds the request whose complete header block (already
// accepted by headProblem) is the first headLen buffered bytes of br.
//
// The common shape — HTTP/1.1, origin-form target, no Transfer-Encoding —
// is parsed here with one string for the whole block (keys and values are
// substrings of it) instead of one allocation per header field; anything
// else goes to http.ReadRequest. FuzzParseRequest checks both agree.
func parseRequest(br *bufio.Reader, headLen int, sc *reqScratch) (*http.Request, error) {
	b, err := br.Peek(headLen)
	if err != nil {
		return nil, err
	}
	req, ok := parseFast(b, br, sc)
	if !ok {
		return http.ReadRequest(br)
	}
	br.Discard(headLen)
	return req, nil
}

// reqScratch and respScratch hold what parsing one head of the common shape
// allocates, for the next head of the same connection to reuse: nothing of
// an exchange outlives it (Authorizer must not retain the request), and a
// connection carries one exchange at a time. A nil scratch allocates.
type reqScratch struct {
	req  http.Request
	url  url.URL
	body fixedBody
	hs   headScratch
}

type respScratch struct {
	resp http.Response
	body fixedBody
	hs   headScratch
}

// headScratch is a header map and the backing array of its values.
type headScratch struct {
	h      http.Header
	values []string
}

// parseFast parses block, a header block ending in CRLF CRLF, whose body
// (if any) follows in br, into sc (when not nil). ok is false when the
// request is not of the common shape or is invalid; the caller then lets
// http.ReadRequest decide.
func parseFast(block []byte, br *bufio.Reader, sc *reqScratch) (req *http.Request, ok bool) {
	s := string(block)
	line, rest, _ := strings.Cut(s, "\r\n")
	method, line, ok1 := strings.Cut(line, " ")
	uri, proto, ok2 := strings.Cut(line, " ")
	if !ok1 || !ok2 || proto != "HTTP/1.1" || uri == "" || uri[0] != '/' || !validMethod(method) {
		return nil, false
	}
	var u *url.URL
	if sc != nil {
		u = &sc.url
	} else {
		u = new(url.URL)
	}
	if !plainOriginForm(uri, u) {
		pu, err := url.ParseRequestURI(uri)
		if err != nil {
			return nil, false
		}
		u = pu
	}
	var hs *headScratch
	if sc != nil {
		hs = &sc.hs
	}
	h, ok := parseFields(rest, hs)
	if !ok {
		return nil, false
	}
	if len(h["Transfer-Encoding"]) > 0 || len(h["Host"]) > 1 {
		return nil, false
	}
	var body *fixedBody
	if sc != nil {
		req, body = &sc.req, &sc.body
	} else {
		req = new(http.Request)
	}
	*req = http.Request{
		Method: method, URL: u, RequestURI: uri,
		Proto: proto, ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: http.NoBody,
	}
	if hv := h["Host"]; len(hv) == 1 {
		req.Host = hv[0]
		delete(h, "Host") // as ReadRequest does
	}
	if cl := h["Content-Length"]; len(cl) > 0 {
		// headProblem refused differing duplicates.
		n, err := strconv.ParseUint(cl[0], 10, 63)
		if err != nil || cl[0][0] == '+' {
			return nil, false
		}
		if len(cl) > 1 {
			h["Content-Length"] = cl[:1]
		}
		if n > 0 {
			req.ContentLength = int64(n)
			if body == nil {
				body = new(fixedBody)
			}
			*body = fixedBody{LimitedReader: io.LimitedReader{R: br, N: int64(n)}}
			req.Body = body
		}
	}
	req.Close = httpguts.HeaderValuesContainsToken(h["Connection"], "close")
	return req, true
}

// plainOriginForm sets u to what url.ParseRequestURI makes of uri when uri
// is the plainest origin form: a path of letters, digits, "-._~/" and an
// optional non-empty query of visible ASCII other than '#'. Nothing in such
// a path is unescaped or would be escaped, so Path is uri's path and
// RawPath stays empty. Anything else returns false (FuzzParseRequest
// compares the result with net/url's).
func plainOriginForm(uri string, u *url.URL) bool {
	path, query, hasQuery := strings.Cut(uri, "?")
	if hasQuery && query == "" {
		return false // ForceQuery
	}
	for i := 0; i < len(path); i++ {
		if !plainPathByte[path[i]] {
			return false
		}
	}
	for i := 0; i < len(query); i++ {
		if c := query[i]; c <= ' ' || c >= 0x7f || c == '#' {
			return false
		}
	}
	*u = url.URL{Path: path, RawQuery: query}
	return true
}

var plainPathByte = func() (t [256]bool) {
	for c := range t {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == '/'
	}
	return t
}()

// parseFields parses header lines (each ending in CRLF, then an empty
// line) whose names and values are substrings of rest, into hs's map and
// values when hs is not nil (what they held before is cleared).
func parseFields(rest string, hs *headScratch) (http.Header, bool) {
	n := strings.Count(rest, "\r\n") - 1 // lines minus the empty one
	if n < 0 {
		return nil, false
	}
	var h http.Header
	var values []string
	switch {
	case hs == nil:
		h, values = make(http.Header, n), make([]string, n)
	default:
		if hs.h == nil {
			hs.h = make(http.Header, n)
		}
		if cap(hs.values) < n {
			hs.values = make([]string, n)
		}
		h, values = hs.h, hs.values[:n]
		clear(h)
		clear(values)
	}
	for i := 0; i < n; i++ {
		var kv string
		kv, rest, _ = strings.Cut(rest, "\r\n")
		name, value, found := strings.Cut(kv, ":")
		if !found || !validNameString(name) {
			return nil, false
		}
		value = strings.Trim(value, " \t")
		if !validValue(value) {
			return nil, false
		}
		key := name
		if !isCanonical(name) {
			key = http.CanonicalHeaderKey(name)
		}
		if vv, seen := h[key]; seen {
			h[key] = append(vv, value)
			continue
		}
		values[i] = value
		h[key] = values[i : i+1 : i+1]
	}
	return h, true
}

// parseResponse reads the application's response head: the common shape
// (HTTP/1.1, final status, Content-Length or no body, head already
// buffered) here, anything else with http.ReadResponse. FuzzParseResponse
// checks both agree.
func parseResponse(br *bufio.Reader, req *http.Request, sc *respScratch) (*http.Response, error) {
	if b, _ := br.Peek(br.Buffered()); len(b) > 0 {
		if i := bytes.Index(b, crlfcrlf); i >= 0 && headProblem(b[:i+4], 1<<20).status == 0 {
			if resp, ok := parseResponseFast(b[:i+4], br, req, sc); ok {
				br.Discard(i + 4)
				return resp, nil
			}
		}
	}
	return http.ReadResponse(br, req)
}

// parseResponseFast parses block, a response header block, into sc (when
// not nil); ok is false when http.ReadResponse must decide.
func parseResponseFast(block []byte, br *bufio.Reader, req *http.Request, sc *respScratch) (*http.Response, bool) {
	s := string(block)
	line, rest, _ := strings.Cut(s, "\r\n")
	proto, status, ok := strings.Cut(line, " ")
	if !ok || proto != "HTTP/1.1" {
		return nil, false
	}
	status = strings.TrimLeft(status, " ")
	if len(status) < 3 || (len(status) > 3 && status[3] != ' ') {
		return nil, false
	}
	code, err := strconv.Atoi(status[:3])
	if err != nil || code < 200 || status[0] == '+' || status[0] == '-' {
		return nil, false
	}
	var hs *headScratch
	if sc != nil {
		hs = &sc.hs
	}
	h, ok := parseFields(rest, hs)
	if !ok || len(h["Transfer-Encoding"]) > 0 || len(h["Trailer"]) > 0 || len(h["Pragma"]) > 0 {
		return nil, false
	}
	var resp *http.Response
	var body *fixedBody
	if sc != nil {
		resp, body = &sc.resp, &sc.body
	} else {
		resp = new(http.Response)
	}
	*resp = http.Response{
		Status: status, StatusCode: code, Proto: proto, ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: http.NoBody, Request: req,
	}
	length := int64(-1)
	if cl := h["Content-Length"]; len(cl) > 0 {
		n, err := strconv.ParseUint(cl[0], 10, 63)
		if err != nil || cl[0][0] == '+' {
			return nil, false
		}
		for _, v := range cl[1:] {
			if v != cl[0] {
				return nil, false
			}
		}
		if len(cl) > 1 {
			h["Content-Length"] = cl[:1]
		}
		length = int64(n)
	}
	switch {
	case req != nil && req.Method == http.MethodHead:
		resp.ContentLength = length
	case code == http.StatusNoContent || code == http.StatusNotModified:
	case length < 0:
		return nil, false // close-delimited: ReadResponse knows how
	case length > 0:
		resp.ContentLength = length
		if body == nil {
			body = new(fixedBody)
		}
		*body = fixedBody{LimitedReader: io.LimitedReader{R: br, N: length}}
		resp.Body = body
	}
	if httpguts.HeaderValuesContainsToken(h["Connection"], "close") {
		resp.Close = true
		delete(h, "Connection") // as ReadResponse does
	}
	return resp, true
}

// fixedBody is a Content-Length request body read straight from the
// connection's buffer. Close does not drain: the verifier either forwards
// the whole body or closes the connection.
type fixedBody struct {
	io.LimitedReader
}

func (b *fixedBody) Read(p []byte) (int, error) {
	n, err := b.LimitedReader.Read(p)
	if err == io.EOF && b.N > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *fixedBody) Close() error { return nil }

func validMethod(m string) bool {
	return m != "" && validNameString(m)
}

func validNameString(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

// validValue mirrors net/textproto: visible ASCII, SP, HTAB and obs-text.
// Bearer tokens make values of one or two KiB, so it checks eight bytes at
// a time and looks at single bytes only in a word that holds a control
// character (usually an HTAB) or DEL.
func validValue(v string) bool {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	i := 0
	for ; i+8 <= len(v); i += 8 {
		w := uint64(v[i]) | uint64(v[i+1])<<8 | uint64(v[i+2])<<16 | uint64(v[i+3])<<24 |
			uint64(v[i+4])<<32 | uint64(v[i+5])<<40 | uint64(v[i+6])<<48 | uint64(v[i+7])<<56
		// Nonzero iff a byte is below 0x20, or (d) equals 0x7f.
		ctl := (w - 0x20*ones) &^ w & highs
		d := w ^ 0x7f*ones
		del := (d - ones) &^ d & highs
		if ctl|del != 0 && !validValueBytes(v[i:i+8]) {
			return false
		}
	}
	return validValueBytes(v[i:])
}

func validValueBytes(v string) bool {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// isCanonical reports whether a token header name is already in
// CanonicalHeaderKey form, so the common case needs no allocation.
func isCanonical(s string) bool {
	upper := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return false
		}
		upper = c == '-'
	}
	return true
}
