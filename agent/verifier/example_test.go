package verifier_test

import (
	"context"
	"log"
	"net"
	"net/netip"

	"github.com/portcullis-mesh/portcullis/agent/verifier"
	"github.com/portcullis-mesh/portcullis/identity"
)

// A verifier for one pod: every caller is anonymous, requests need the
// bearer token "let-me-in", and allowed requests get a claim header.
func Example() {
	srv, err := verifier.New(verifier.Config{
		Workload: "shop/orders-api",
		Sources: verifier.SourceResolverFunc(func(local, remote netip.AddrPort) identity.Source {
			return identity.AnonymousSource
		}),
		Authorizer: verifier.AuthorizerFunc(func(ctx context.Context, r *verifier.Request) verifier.Decision {
			switch r.Token {
			case "":
				return verifier.Decision{Status: 401, Reason: verifier.ReasonMissingToken}
			case "let-me-in":
				return verifier.Decision{Allow: true, Policy: "shop/demo",
					Headers: []verifier.HeaderField{{Name: "X-User", Value: "demo"}}}
			}
			return verifier.Decision{Status: 403, Reason: verifier.ReasonNoMatchingRule, Policy: "shop/demo"}
		}),
		StripHeaders: []string{"X-User"},
		// In production: a Dialer that dials inside the pod's network
		// namespace, and a listener opened there.
		Dialer: &net.Dialer{},
	})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())
	// Output:
}
