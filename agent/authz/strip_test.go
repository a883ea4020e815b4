package authz

import (
	"context"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/portcullis-mesh/portcullis/agent/verifier"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

// TestStripIsNamespaced: the client headers removed from a request are the
// forwardClaims names of the issuers trusted in the workload's namespace
// (the ClusterIssuers and its own Issuers). An Issuer of namespace evil
// naming ordinary headers (Origin, X-Csrf-Token) cannot make requests to
// other namespaces lose them (review 5b, finding 4).
func TestStripIsNamespaced(t *testing.T) {
	e := engineFor(t, `
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: mine, namespace: evil}
spec:
  oidc: {issuer: "https://idp.evil.example", audiences: [x]}
  forwardClaims: {a: Origin, b: X-Csrf-Token, c: Traceparent}
---
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: entra, namespace: shop}
spec:
  oidc: {issuer: "https://idp.shop.example", audiences: [x]}
  forwardClaims: {oid: X-Claim-Oid}
---
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: noclaims, namespace: quiet}
spec:
  oidc: {issuer: "https://idp.quiet.example", audiences: [x]}
---
apiVersion: portcullis.dev/v1alpha1
kind: ClusterIssuer
metadata: {name: corp}
spec:
  oidc: {issuer: "https://idp.corp.example", audiences: [x]}
  forwardClaims: {oid: X-Corp-Oid, tid: x-claim-oid}
`)
	for _, tc := range []struct {
		namespace string
		want      []string
	}{
		{"shop", []string{"X-Claim-Oid", "X-Corp-Oid"}}, // x-claim-oid once
		{"evil", []string{"Origin", "Traceparent", "X-Corp-Oid", "X-Csrf-Token", "x-claim-oid"}},
		{"quiet", []string{"X-Corp-Oid", "x-claim-oid"}},
		{"other", []string{"X-Corp-Oid", "x-claim-oid"}},
	} {
		t.Run(tc.namespace, func(t *testing.T) {
			var w atomic.Pointer[Workload]
			w.Store(&Workload{Policy: policy.Workload{Namespace: tc.namespace, Labels: map[string]string{"app": "orders"}}})
			d, names := e.For(&w).AuthorizeStrip(context.Background(), &verifier.Request{
				Destination: netip.MustParseAddrPort("10.0.0.1:8080"), Method: "POST", Path: "/x", Host: "a"})
			if diff := cmp.Diff(tc.want, names); diff != "" {
				t.Errorf("AuthorizeStrip names (-want +got):\n%s", diff)
			}
			want := map[string]bool{}
			for _, n := range tc.want {
				want[http.CanonicalHeaderKey(n)] = true
			}
			if diff := cmp.Diff(want, d.Strip); diff != "" {
				t.Errorf("Decision.Strip (-want +got):\n%s", diff)
			}
		})
	}
}

// TestStripDoesNotAllocate: choosing the namespace's strip list costs no
// allocation per request.
func TestStripDoesNotAllocate(t *testing.T) {
	e := engineFor(t, `
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: entra, namespace: shop}
spec:
  oidc: {issuer: "https://idp.shop.example", audiences: [x]}
  forwardClaims: {oid: X-Claim-Oid}
`)
	v := e.current()
	if n := testing.AllocsPerRun(100, func() { _ = v.stripFor("shop").set }); n != 0 {
		t.Errorf("stripFor: %v allocs, want 0", n)
	}
}
