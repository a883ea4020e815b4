// Package verifier is the request path of Portcullis: it serves the
// connections the datapath steers to the agent, authorizes every HTTP request
// (HTTP/1.1, h2c, gRPC, upgrades) or, on passthrough ports, every
// connection, and forwards what is allowed to the original destination.
//
// A Server serves one pod. It is given accepted connections by any
// net.Listener whose accepted connections' local address is the original
// destination (in production a listener opened inside the pod's network
// namespace, which the eBPF program assigns captured packets to). It learns
// who the caller is from a SourceResolver, asks an Authorizer for a
// Decision, and dials the application through a Dialer. These interfaces are
// the seams where the datapath, tokencheck and the policy engine plug in;
// the package itself knows nothing of tokens or policy.
//
// The HTTP/1.1 path is hand-rolled: one goroutine per connection, pooled
// upstream connections, no per-request goroutines for bodiless requests, a
// strict pre-parse of the raw header block that refuses request-smuggling
// shapes net/http would otherwise normalise (Content-Length with
// Transfer-Encoding, differing duplicate Content-Length, obs-fold, bare LF),
// then a lean parser for the common head shapes with net/http's
// (http.ReadRequest, http.ReadResponse) for everything else; fuzz tests
// hold the two to the same results.
// Bodies are re-framed, never passed through raw, so the application cannot
// be desynchronised. HTTP/2 uses golang.org/x/net/http2 on both sides.
//
// Security properties:
//   - Nothing the client sends establishes identity: X-Portcullis-* headers,
//     the configured claim headers, Forwarded, every X-Forwarded-*, the
//     client-address headers frameworks trust (X-Real-Ip, X-Client-Ip,
//     True-Client-Ip, X-Original-Forwarded-For, Client-Ip,
//     X-Cluster-Client-Ip, X-Envoy-External-Address, Cf-Connecting-Ip,
//     Fastly-Client-Ip), the URL overrides X-Original-Url and X-Rewrite-Url
//     and the method overrides X-Http-Method-Override, X-Http-Method and
//     X-Method-Override are removed, from the header block
//     and the trailers alike; the verifier sets X-Portcullis-Source,
//     X-Forwarded-For, -Proto, -Host and Forwarded itself. A Decision
//     cannot set any of them (nor framing or hop-by-hop headers).
//   - The policy sees the request the application will. An HTTP/1.1
//     request-target must be origin-form, an http or https absolute-form
//     URL with a host and no userinfo (the policy and the application both
//     get its host and path; an empty path is "/"), or "*" with OPTIONS (on
//     HTTP/2 too); anything else, such as an opaque "x:http://admin/secret"
//     that the application would route by the URL inside it, is refused
//     (400 malformed_request). A decoded path
//     with "." or ".." segments, empty segments ("//"), '\', '#' or a
//     control character is refused (400) rather than left to the
//     application to resolve, and a host name's trailing dot is removed
//     for both. ';' is an ordinary character: to an application that strips
//     matrix parameters (Tomcat, Spring) "/admin;x/y" is "/admin/y", which
//     a Deny rule for "/admin/*" misses; Allow rules fail closed on it.
//     Likewise a "_method" form or query parameter, which some frameworks
//     take as the method, cannot be removed: method rules for such
//     applications should be Allow lists of safe methods.
//   - Refusals never echo the token or any request header.
//   - An upgraded connection (WebSocket) is spliced only after the upgrade
//     request itself was authorized; an h2c upgrade is terminated here so
//     that every later stream is authorized too.
//   - TLS or non-HTTP bytes on a captured port are refused, unless the port
//     is declared passthrough, where an L4 decision (the caller's identity
//     only) applies.
//   - No phase of an HTTP exchange can be held open by a silent peer: the
//     header read (ReadHeaderTimeout), the wait between requests
//     (IdleTimeout), and bodies and upgraded tunnels in which no byte moves
//     either way (StreamIdleTimeout) are bounded; only the wait for a
//     response head is the application's business.
package verifier
