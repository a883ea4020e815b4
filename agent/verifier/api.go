package verifier

import (
	"context"
	"net"
	"net/http"
	"net/netip"

	"github.com/portcullis-mesh/portcullis/identity"
)

// SourceResolver tells who opened a connection. In production it reads the
// eBPF socket record (same-node callers), then the IP cache (cross-node),
// else returns identity.AnonymousSource. It is called once per accepted
// connection, on the connection's goroutine, and must be safe for
// concurrent use.
type SourceResolver interface {
	Resolve(local, remote netip.AddrPort) identity.Source
}

// SourceResolverFunc adapts a function to SourceResolver.
type SourceResolverFunc func(local, remote netip.AddrPort) identity.Source

// Resolve calls f.
func (f SourceResolverFunc) Resolve(local, remote netip.AddrPort) identity.Source {
	return f(local, remote)
}

// Authorizer decides one HTTP request. It must be safe for concurrent use,
// must not block for long (it runs on the request path), and must not retain
// r or anything it points to after returning: the verifier reuses them.
type Authorizer interface {
	Authorize(ctx context.Context, r *Request) Decision
}

// AuthorizerFunc adapts a function to Authorizer.
type AuthorizerFunc func(ctx context.Context, r *Request) Decision

// Authorize calls f.
func (f AuthorizerFunc) Authorize(ctx context.Context, r *Request) Decision { return f(ctx, r) }

// L4Authorizer decides a connection on a passthrough port, where only the
// `from` part of a policy (the caller's identity) can apply.
type L4Authorizer interface {
	AuthorizeConn(ctx context.Context, c *ConnRequest) Decision
}

// L4AuthorizerFunc adapts a function to L4Authorizer.
type L4AuthorizerFunc func(ctx context.Context, c *ConnRequest) Decision

// AuthorizeConn calls f.
func (f L4AuthorizerFunc) AuthorizeConn(ctx context.Context, c *ConnRequest) Decision {
	return f(ctx, c)
}

// Dialer opens connections to the application. In production it dials from
// inside the pod's network namespace, so the connection goes over the pod's
// loopback and is not captured again. *net.Dialer satisfies it.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Protocol names the application protocol of a request. The set is closed.
type Protocol string

const (
	// HTTP1: an HTTP/1.x request.
	HTTP1 Protocol = "http/1.1"
	// HTTP2: an HTTP/2 request over cleartext (prior knowledge or upgrade).
	HTTP2 Protocol = "h2"
	// GRPC: an HTTP/2 request with content-type application/grpc*.
	GRPC Protocol = "grpc"
	// TCP: a connection on a passthrough port.
	TCP Protocol = "tcp"
)

// Request is what an Authorizer sees of one HTTP request.
type Request struct {
	// Workload is the destination pod ("namespace/name").
	Workload string
	// Source is the caller's identity, established by the datapath or the
	// IP cache, never by anything the client sent.
	Source identity.Source
	// SourceAddr is the caller's address; Destination the original
	// destination (the pod's address and port).
	SourceAddr  netip.AddrPort
	Destination netip.AddrPort
	// Protocol is HTTP1, HTTP2 or GRPC.
	Protocol Protocol
	// Method, Host and Path of the request. Host is the Host header (or
	// :authority) with one trailing dot removed from the name, as the
	// application receives it; the port is not normalised. Path is
	// percent-decoded, without the query, and never has empty, "." or ".."
	// segments, '\', '#' or control characters (such requests are refused
	// with ReasonMalformedRequest before any Authorizer).
	Method string
	Host   string
	Path   string
	// Header is the request's header as the client sent it, including
	// Authorization. Read-only.
	Header http.Header
	// Token is the raw bearer token; empty when none was presented. It must
	// never be logged.
	Token string
}

// ConnRequest is what an L4Authorizer sees of a connection.
type ConnRequest struct {
	// Workload, Source, SourceAddr and Destination as in Request.
	Workload    string
	Source      identity.Source
	SourceAddr  netip.AddrPort
	Destination netip.AddrPort
}

// Mode says whether a decision is enforced.
type Mode uint8

const (
	// Enforce (the zero value): a denial is answered with a refusal.
	Enforce Mode = iota
	// AuditOnly: the decision is recorded and the request forwarded anyway.
	AuditOnly
)

// String returns "enforce" or "audit".
func (m Mode) String() string {
	if m == AuditOnly {
		return "audit"
	}
	return "enforce"
}

// Reason says why a request was refused. It is a short snake_case value from
// a bounded set, because it is a metric label and appears in the
// WWW-Authenticate error_description. tokencheck.Reason values convert
// directly (Reason(tokencheck.ReasonExpired)); the verifier adds its own
// below. Never build one from request or token contents.
type Reason string

const (
	// ReasonNone: allowed.
	ReasonNone Reason = ""
	// ReasonMissingToken: no bearer token where one is required.
	ReasonMissingToken Reason = "missing_token"
	// ReasonMultipleTokens: more than one Authorization header.
	ReasonMultipleTokens Reason = "multiple_tokens"
	// ReasonNoMatchingRule: a valid token (or none needed) matched no rule of
	// the Allow policies selecting the workload.
	ReasonNoMatchingRule Reason = "no_matching_rule"
	// ReasonDeniedByPolicy: a Deny policy matched.
	ReasonDeniedByPolicy Reason = "denied_by_policy"
	// ReasonSmuggling: the header block has a request-smuggling shape
	// (Content-Length with Transfer-Encoding, differing Content-Length,
	// unsupported Transfer-Encoding, obs-fold, bare LF).
	ReasonSmuggling Reason = "smuggling"
	// ReasonMalformedRequest: not a valid HTTP request (parse error, missing
	// or duplicate Host, a host name ending in "..") or a path applications
	// would read differently from the policy (dot or empty segments, '\',
	// '#' or control characters once decoded).
	ReasonMalformedRequest Reason = "malformed_request"
	// ReasonHeadersTooLarge: over Config.MaxHeaderBytes or MaxHeaderCount.
	ReasonHeadersTooLarge Reason = "headers_too_large"
	// ReasonMethodNotAllowed: CONNECT, which would open a tunnel.
	ReasonMethodNotAllowed Reason = "method_not_allowed"
	// ReasonInternal: the authorizer could not decide (fail closed).
	ReasonInternal Reason = "internal_error"
	// ReasonUpstreamUnavailable: the request was allowed but the application
	// could not be reached (502). Not a decision: never audited.
	ReasonUpstreamUnavailable Reason = "upstream_unavailable"
)

// Decision is the Authorizer's answer.
type Decision struct {
	// Allow is the decision. With Mode AuditOnly a false Allow is recorded
	// and the request forwarded anyway.
	Allow bool
	// Status is the refusal status: 401 (no valid token) or 403 (valid token,
	// no permission). Zero with Allow false means 403.
	Status int
	// Reason is why; ReasonNone when allowed.
	Reason Reason
	// Policy ("namespace/name") and Rule (index or name) that decided; empty
	// when none did.
	Policy string
	Rule   string
	// Mode is Enforce (the zero value) or AuditOnly.
	Mode Mode
	// Token describes the validated token for the audit record; zero when
	// there is none.
	Token TokenInfo
	// Headers are added to the forwarded request (forwardClaims). Names
	// must also be listed in Strip or Config.StripHeaders so a client
	// cannot send them when the token lacks the claim. A field is skipped (and logged at
	// debug level) when its value has CR, LF or NUL, or when its name is
	// one the verifier strips or sets itself, compared case-insensitively
	// with '_' as '-': X-Portcullis-*, X-Forwarded-*, Forwarded,
	// X-Real-Ip, X-Client-Ip, True-Client-Ip, X-Original-Forwarded-For,
	// X-Original-Url, X-Rewrite-Url, Host, and the hop-by-hop and framing
	// headers (Connection, Keep-Alive, Proxy-*, Te, Trailer,
	// Transfer-Encoding, Upgrade, Content-Length, Http2-Settings). A client's
	// copy of a named header (head or trailer) never reaches the
	// application.
	Headers []HeaderField
	// Strip names, in http.CanonicalHeaderKey form, more headers whose
	// client-sent copies are removed from this request (head and
	// trailers), as Config.StripHeaders are. An Authorizer whose
	// configuration can change sets the claim header names of the very
	// configuration that decided, so that no reload opens a moment in
	// which a new claim header is forwarded from the client before
	// SetStripHeaders catches up. Nil adds none. The verifier does not
	// modify the map.
	Strip map[string]bool
}

// TokenInfo are the audit-worthy facts of a validated token.
type TokenInfo struct {
	// Issuer (`iss`), Tenant (`tid`), ObjectID (`oid`), Subject (`sub`) and
	// ClientID (`azp` or `appid`).
	Issuer   string
	Tenant   string
	ObjectID string
	Subject  string
	ClientID string
}

// HeaderField is one header to add.
type HeaderField struct {
	Name, Value string
}
