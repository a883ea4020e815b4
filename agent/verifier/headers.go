package verifier

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// stripSet is the configured claim headers whose client copies are removed
// (Config.StripHeaders) and those of the configuration that decided the
// request (Decision.Strip), both keyed by canonical name.
type stripSet struct{ cfg, dec map[string]bool }

func (s stripSet) has(k string) bool { return s.cfg[k] || s.dec[k] }

// dropRequestHeader reports whether a client-sent header must not reach the
// application: hop-by-hop headers, framing (the verifier re-frames), the
// forwarding headers (every X-Forwarded-*, Forwarded, and the client
// address headers frameworks trust: the verifier sets its own), the
// request-target and method overrides applications obey, X-Portcullis-* and
// the configured claim headers. Names are compared with
// '_' as '-', because some application stacks (CGI-style environments)
// fold the two.
func dropRequestHeader(k string, strip stripSet, connTokens []string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length", "Host", "Http2-Settings",
		"Forwarded", "X-Real-Ip", "X-Client-Ip", "True-Client-Ip", "X-Original-Forwarded-For",
		"Client-Ip", "X-Cluster-Client-Ip", "X-Envoy-External-Address", "Cf-Connecting-Ip", "Fastly-Client-Ip",
		// Request-target overrides (Symfony and IIS-era frameworks, CVE-2018-14773):
		// the application would route by them, not by the path the policy saw.
		"X-Original-Url", "X-Rewrite-Url",
		// Method overrides (Rack::MethodOverride in Rails, Symfony, Laravel,
		// ASP.NET Core's UseHttpMethodOverride, Express method-override): the
		// application would run another method than the one the policy saw.
		"X-Http-Method-Override", "X-Http-Method", "X-Method-Override":
		return true
	}
	if hasPrefixFold(k, "x-portcullis-") || hasPrefixFold(k, "x-forwarded-") {
		return true
	}
	if strings.IndexByte(k, '_') >= 0 {
		n := http.CanonicalHeaderKey(strings.ReplaceAll(k, "_", "-"))
		if n != k && dropRequestHeader(n, strip, connTokens) {
			return true
		}
	}
	if strip.has(k) {
		return true
	}
	return len(connTokens) > 0 && httpguts.HeaderValuesContainsToken(connTokens, k)
}

// reservedHeader reports whether an Authorizer-supplied header name is one
// the verifier strips from every request or sets itself (framing,
// hop-by-hop, Host, forwarding and X-Portcullis-* headers): a Decision
// cannot set those.
func reservedHeader(name string) bool {
	return dropRequestHeader(http.CanonicalHeaderKey(name), stripSet{}, nil)
}

// dropTrailer reports whether a client-sent trailer field must not reach
// the application: what dropRequestHeader drops from the head, what the
// decision sets, and what RFC 9110 §6.5.1 forbids in trailers
// (Authorization, Host, Content-Type, ...: x/net's HTTP/2 server refuses
// those outright), so that an application merging trailers into headers
// sees no field the policy did not. connTokens are the client's
// Connection header values (none on HTTP/2).
func dropTrailer(k string, strip stripSet, connTokens []string, decHeaders []HeaderField) bool {
	return !httpguts.ValidTrailerHeader(k) || dropRequestHeader(k, strip, connTokens) || decisionSets(decHeaders, k)
}

// dropResponseHeader reports whether an application response header is
// hop-by-hop (or framing the verifier sets itself).
func dropResponseHeader(k string, connTokens []string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding",
		"Upgrade", "Content-Length":
		return true
	}
	return len(connTokens) > 0 && httpguts.HeaderValuesContainsToken(connTokens, k)
}

// hasPrefixFold is strings.HasPrefix ignoring ASCII case and treating '_'
// as '-'; prefix must be lower case.
func hasPrefixFold(s, prefix string) bool {
	if len(s) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		} else if c == '_' {
			c = '-'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

// validField reports whether an Authorizer-supplied header can be sent
// as is: a token name and a value without CR, LF or NUL.
func validField(f HeaderField) bool {
	return httpguts.ValidHeaderFieldName(f.Name) && httpguts.ValidHeaderFieldValue(f.Value)
}

// forwardable reports whether a Decision header can be added to the
// forwarded request: a valid field whose name is not reserved. Skipped
// fields are logged at debug level (name only: values may be claims).
func (s *Server) forwardable(f HeaderField) bool {
	var why string
	switch {
	case !validField(f):
		why = "invalid field"
	case reservedHeader(f.Name):
		why = "reserved name"
	default:
		return true
	}
	if s.cfg.Logger.Enabled(context.Background(), slog.LevelDebug) {
		s.cfg.Logger.Debug("decision header skipped", "header", f.Name, "why", why)
	}
	return false
}

// bearerToken extracts the bearer token from the Authorization values. n is
// the number of Authorization header fields; the caller refuses n > 1.
func bearerToken(vals []string) (token string, n int) {
	if len(vals) != 1 {
		return "", len(vals)
	}
	v := vals[0]
	const scheme = "bearer "
	if len(v) < len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return "", 1
	}
	return strings.TrimSpace(v[len(scheme):]), 1
}

// cleanPath reports whether a decoded path is one that applications and
// path-based policy read alike. It refuses:
//   - "." and ".." segments, which applications resolve;
//   - empty segments ("//"), which nginx (merge_slashes), most routers and
//     WHATWG URL parsers merge, so that a Deny for "/admin/*" would miss
//     "//admin/x";
//   - '\', a path separator for WHATWG URL parsers ("/public/..\admin");
//   - '#', which cannot appear in a request-target and which parsers such
//     as Node's cut off ("/admin#x" is "/admin" to them);
//   - NUL and other control characters, which some stacks cut at or strip.
//
// Empty segments are refused rather than merged: merging would mean
// rewriting the request-target, whose percent-encoding ("/a%2F/b") places
// empty segments differently from the decoded path, and a rewrite that got
// that wrong would reopen the gap; a 400 fails closed and is visible.
// Legitimate clients rarely send "//". ';' is left alone (it is an
// ordinary path character to most applications).
//
// One pass, no allocation: it costs about what the dot-segment check it
// replaces did.
func cleanPath(p string) bool {
	seg := 0 // start of the current segment
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c != '/' {
			if badPathByte[c] {
				return false
			}
			continue
		}
		if i > 0 && i == seg || dotSegment(p[seg:i]) {
			return false
		}
		seg = i + 1
	}
	return !dotSegment(p[seg:])
}

func dotSegment(s string) bool {
	return s == "." || s == ".."
}

var badPathByte = func() (t [256]bool) {
	for c := range t {
		t[c] = c < 0x20 || c == 0x7f || c == '#' || c == '\\'
	}
	return t
}()

// canonicalHost returns host (a Host header or :authority, already
// syntactically valid) with one trailing dot removed from its name:
// "api.example.com." and "api.example.com" are the same DNS name, nginx
// and most routers treat them alike, and host-based policy compares names
// exactly. The policy and the application both get the result, so they
// cannot disagree. ok is false for a name that is empty once the dot is
// removed or that ends with more than one dot.
func canonicalHost(host string) (canonical string, ok bool) {
	name, port := host, ""
	if i := strings.LastIndexByte(host, ':'); i >= 0 && i > strings.LastIndexByte(host, ']') {
		name, port = host[:i], host[i:]
	}
	if name == "" || name[len(name)-1] != '.' {
		return host, true
	}
	name = name[:len(name)-1]
	if name == "" || name[len(name)-1] == '.' {
		return "", false
	}
	if port == "" {
		return name, true
	}
	return name + port, true
}

// isGRPC reports whether the content type is gRPC's.
func isGRPC(h http.Header) bool {
	ct := h["Content-Type"]
	return len(ct) > 0 && strings.HasPrefix(ct[0], "application/grpc")
}

// upgradeOf returns the requested protocol upgrade, "" when none.
func upgradeOf(r *http.Request) string {
	if r.ProtoMajor != 1 || r.ProtoMinor < 1 {
		return ""
	}
	up := r.Header["Upgrade"]
	if len(up) == 0 || !httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") {
		return ""
	}
	return strings.Join(up, ", ")
}

// headProblem checks the raw header block (request line through the empty
// line, CRLF line endings) for what net/http's parser would accept or
// normalise but a proxy must refuse. It returns the refusal, or a zero
// refusal when the block is acceptable.
func headProblem(b []byte, maxCount int) refusal {
	smuggling := refusal{http.StatusBadRequest, ReasonSmuggling}
	var (
		count, hosts  int
		te, http10    bool
		cl            []byte
		clSeen        bool
		clConflicting bool
	)
	first := true
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return smuggling
		}
		if i == 0 || b[i-1] != '\r' {
			// A bare LF ends lines for some parsers and not others.
			return smuggling
		}
		line := b[:i-1]
		b = b[i+1:]
		if bytes.IndexByte(line, '\r') >= 0 {
			return smuggling
		}
		if first {
			first = false
			http10 = bytes.HasSuffix(line, []byte(" HTTP/1.0"))
			continue
		}
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return smuggling // obs-fold
		}
		count++
		if count > maxCount {
			return refusal{http.StatusRequestHeaderFieldsTooLarge, ReasonHeadersTooLarge}
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || !validName(name) {
			return refusal{http.StatusBadRequest, ReasonMalformedRequest}
		}
		switch len(name) {
		case 4:
			if bytes.EqualFold(name, []byte("host")) {
				hosts++
			}
		case 14:
			if bytes.EqualFold(name, []byte("content-length")) {
				value = bytes.TrimSpace(value)
				if len(value) == 0 {
					// An empty Content-Length means 0 to some parsers and
					// "absent" to others (TrimSpace even returns nil for it).
					return smuggling
				}
				if clSeen && !bytes.Equal(cl, value) {
					clConflicting = true
				}
				cl, clSeen = value, true
			}
		case 17:
			if bytes.EqualFold(name, []byte("transfer-encoding")) {
				if te || !bytes.EqualFold(bytes.TrimSpace(value), []byte("chunked")) {
					return smuggling
				}
				te = true
			}
		}
	}
	if clConflicting || (te && (clSeen || http10)) {
		return smuggling
	}
	if hosts > 1 {
		return refusal{http.StatusBadRequest, ReasonMalformedRequest}
	}
	return refusal{}
}

// validName reports whether a header name is a non-empty token; net/http
// accepts (and would forward) names such as "Content-Length " that some
// applications trim into something else.
func validName(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !isTokenChar(c) {
			return false
		}
	}
	return true
}
