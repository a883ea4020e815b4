package policy

import "strings"

// reservedHeaders are request header names a forwardClaims entry may not
// use, lower case, '_' folded to '-', with why. The verifier writes claim
// headers next to its own, so a claim there could frame the request
// differently for the app than for the verifier (request smuggling), pose
// as the caller's identity, or carry credentials.
var reservedHeaders = map[string]string{
	// Framing and hop-by-hop (RFC 9110 §7.6.1, RFC 9112 §6-7).
	"connection":        "a hop-by-hop header",
	"keep-alive":        "a hop-by-hop header",
	"te":                "a hop-by-hop header",
	"trailer":           "a hop-by-hop header",
	"transfer-encoding": "a message framing header",
	"upgrade":           "a hop-by-hop header",
	"http2-settings":    "a hop-by-hop header",
	"expect":            "a message framing header",
	"host":              "the request's target host",
	// Who the caller is, as the verifier (or a proxy) tells the app.
	"forwarded":                "set by the verifier about the caller",
	"x-real-ip":                "read by applications as the caller's address",
	"x-client-ip":              "read by applications as the caller's address",
	"true-client-ip":           "read by applications as the caller's address",
	"x-http-method-override":   "read by applications as the request's method",
	"x-http-method":            "read by applications as the request's method",
	"x-method-override":        "read by applications as the request's method",
	"x-rewrite-url":            "read by applications as the request's target",
	"authorization":            "a credential header",
	"cookie":                   "a credential header",
	"proxy-authorization":      "a credential header",
	"x-original-forwarded-for": "read by applications as the caller's address",
	"client-ip":                "read by applications as the caller's address",
	"x-cluster-client-ip":      "read by applications as the caller's address",
	"x-envoy-external-address": "read by applications as the caller's address",
	"cf-connecting-ip":         "read by applications as the caller's address",
	"fastly-client-ip":         "read by applications as the caller's address",
}

// reservedPrefixes are reserved header name prefixes, as reservedHeaders.
var reservedPrefixes = []struct{ prefix, why string }{
	{"x-portcullis-", "reserved for the verifier's own headers"},
	{"x-forwarded-", "set by the verifier or proxies about the caller"},
	{"x-original-", "read by applications as the request's original target or caller"},
	{"proxy-", "a hop-by-hop header"},
	{"content-", "describes the request body"},
	{"grpc-", "gRPC framing and metadata"},
	{"sec-", "set only by browsers"},
}

// reservedHeader reports why a forwardClaims header name is refused, or ""
// when it may be used. Names are compared case-insensitively with '_' as
// '-', since many servers (CGI and WSGI environments, Rack, nginx with
// underscores_in_headers) read X_Forwarded_For as X-Forwarded-For.
func reservedHeader(name string) string {
	n := strings.ReplaceAll(strings.ToLower(name), "_", "-")
	if why, ok := reservedHeaders[n]; ok {
		return why
	}
	for _, p := range reservedPrefixes {
		if strings.HasPrefix(n, p.prefix) {
			return p.why
		}
	}
	return ""
}

// ReservedHeaders returns the header names (lower case, '-' for '_') and
// name prefixes a forwardClaims entry may not use, each with why. The
// verifier's own list of client headers it removes is kept consistent with
// it by a test.
func ReservedHeaders() (names, prefixes map[string]string) {
	names = make(map[string]string, len(reservedHeaders))
	for n, why := range reservedHeaders {
		names[n] = why
	}
	prefixes = make(map[string]string, len(reservedPrefixes))
	for _, p := range reservedPrefixes {
		prefixes[p.prefix] = p.why
	}
	return names, prefixes
}

// claimHeaderSuffix suggests a header name part for a claim: "oid" gives
// "Oid", "preferred_username" gives "Preferred-Username".
func claimHeaderSuffix(claim string) string {
	parts := strings.FieldsFunc(claim, func(r rune) bool {
		return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9')
	})
	for i, p := range parts {
		parts[i] = strings.ToUpper(p[:1]) + p[1:]
	}
	if len(parts) == 0 {
		return "Name"
	}
	return strings.Join(parts, "-")
}
