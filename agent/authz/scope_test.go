package authz

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/portcullis-mesh/portcullis/agent/verifier"
	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/tokencheck"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
)

var (
	testKeyOnce sync.Once
	testKey     *rsa.PrivateKey
)

// startIDP serves a devidp for tenant on loopback until the test ends.
func startIDP(t *testing.T, tenant string) (*idp.IDP, string) {
	t.Helper()
	testKeyOnce.Do(func() {
		var err error
		if testKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
	p, err := idp.New(idp.Options{Tenants: []string{tenant}, Keys: []*rsa.PrivateKey{testKey}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.Start()
	srv.Config.Handler = p.Handler(srv.URL)
	t.Cleanup(srv.Close)
	return p, srv.URL
}

// unscoped hides ValidateFor: the Engine then only has Validate.
type unscoped struct{ v *tokencheck.Validator }

func (u unscoped) Validate(ctx context.Context, raw string) (*tokencheck.Claims, tokencheck.Reason, error) {
	return u.v.Validate(ctx, raw)
}

// TestIssuerTrustIsNamespaced: an Issuer vouches only for the workloads of
// its namespace, cannot shadow the issuer of the workload's namespace for
// the same iss, and its forwardClaims apply only where it is trusted; a
// ClusterIssuer vouches everywhere (review 5, finding 1).
func TestIssuerTrustIsNamespaced(t *testing.T) {
	const tShop, tEvil, tCorp = "aaaaaaaa-0000-4000-8000-00000000000a", "cccccccc-0000-4000-8000-00000000000c", "bbbbbbbb-0000-4000-8000-00000000000b"
	shopIDP, shopURL := startIDP(t, tShop)
	evilIDP, evilURL := startIDP(t, tEvil)
	corpIDP, corpURL := startIDP(t, tCorp)
	yaml := fmt.Sprintf(`
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: entra, namespace: shop}
spec:
  azureAD: {tenantID: %[1]s, authorityHost: %[2]q, audiences: [api://orders]}
  forwardClaims: {oid: X-Claim-Oid}
---
# Another namespace's Issuer for a tenant of its own, with the victim's audience.
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: mine, namespace: evil}
spec:
  azureAD: {tenantID: %[3]s, authorityHost: %[4]q, audiences: [api://orders]}
  forwardClaims: {name: X-Evil}
---
# Another namespace's Issuer for the victim's own tenant, sorting before it.
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: shadow, namespace: evil}
spec:
  azureAD: {tenantID: %[1]s, authorityHost: %[2]q, audiences: [api://orders]}
  forwardClaims: {oid: X-Evil-Oid}
---
apiVersion: portcullis.dev/v1alpha1
kind: ClusterIssuer
metadata: {name: corp}
spec:
  azureAD: {tenantID: %[5]s, authorityHost: %[6]q, audiences: [api://orders]}
  forwardClaims: {oid: X-Corp-Oid}
---
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  rules:
  - to: {paths: [/any]}
    when: {roles: {anyOf: [Orders.Admin]}}
  - to: {paths: [/named]}
    when: {issuers: [{name: entra}], roles: {anyOf: [Orders.Admin]}}
---
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: app, namespace: evil}
spec:
  selector: {matchLabels: {app: orders}}
  rules:
  - when: {roles: {anyOf: [Orders.Admin]}}
`, tShop, shopURL, tEvil, evilURL, tCorp, corpURL)
	objs, err := policy.Load("p.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	store := policy.NewStore()
	set, err := store.Update(objs)
	if err != nil {
		t.Fatal(err)
	}
	v, err := tokencheck.New(tokencheck.Config{FetchTimeout: 2 * time.Second}, set.IssuerConfigs())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := v.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	mint := func(p *idp.IDP) string {
		tok, err := p.Mint(idp.TokenRequest{Audience: "api://orders", Roles: []string{"Orders.Admin"}, ObjectID: "oid-1", Claims: map[string]any{"name": "chunked"}})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	shopTok, evilTok, corpTok := mint(shopIDP), mint(evilIDP), mint(corpIDP)
	info := func(tenant string) verifier.TokenInfo {
		return verifier.TokenInfo{Issuer: idp.Issuer(2, tenant), Tenant: tenant, ObjectID: "oid-1", ClientID: idp.DefaultClientID}
	}
	// devidp derives sub; it is not what this test is about.
	ignoreSubject := cmp.FilterPath(func(p cmp.Path) bool { return p.String() == "Token.Subject" }, cmp.Ignore())
	for _, tc := range []struct {
		name      string
		validator TokenValidator
		namespace string
		token     string
		path      string
		want      verifier.Decision
	}{
		{"another namespace's issuer is not trusted", v, "shop", evilTok, "/any",
			verifier.Decision{Status: 401, Reason: "wrong_issuer"}},
		{"nor when the validator cannot scope", unscoped{v}, "shop", evilTok, "/any",
			verifier.Decision{Status: 401, Reason: "wrong_issuer"}},
		{"own issuer, not the other namespace's for the same iss", v, "shop", shopTok, "/any",
			verifier.Decision{Allow: true, Policy: "shop/orders", Rule: "0", Token: info(tShop), Headers: []verifier.HeaderField{{Name: "X-Claim-Oid", Value: "oid-1"}}}},
		{"when.issuers names the own issuer", v, "shop", shopTok, "/named",
			verifier.Decision{Allow: true, Policy: "shop/orders", Rule: "1", Token: info(tShop), Headers: []verifier.HeaderField{{Name: "X-Claim-Oid", Value: "oid-1"}}}},
		{"cluster issuer everywhere", v, "shop", corpTok, "/any",
			verifier.Decision{Allow: true, Policy: "shop/orders", Rule: "0", Token: info(tCorp), Headers: []verifier.HeaderField{{Name: "X-Corp-Oid", Value: "oid-1"}}}},
		{"an issuer is trusted in its own namespace", v, "evil", evilTok, "/any",
			verifier.Decision{Allow: true, Policy: "evil/app", Rule: "0", Token: info(tEvil), Headers: []verifier.HeaderField{{Name: "X-Evil", Value: "chunked"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := New(tc.validator, store)
			var w atomic.Pointer[Workload]
			w.Store(&Workload{Key: tc.namespace + "/orders-1", Policy: policy.Workload{Namespace: tc.namespace, Labels: map[string]string{"app": "orders"}}})
			got := e.For(&w).Authorize(context.Background(), &verifier.Request{Method: "GET", Path: tc.path,
				Destination: netip.MustParseAddrPort("198.18.0.2:8080"), Source: identity.AnonymousSource, Token: tc.token})
			// Client copies of the claim headers of the issuers trusted in
			// the namespace are stripped.
			tc.want.Strip = map[string]bool{"X-Claim-Oid": true, "X-Corp-Oid": true}
			if tc.namespace == "evil" {
				tc.want.Strip = map[string]bool{"X-Corp-Oid": true, "X-Evil": true, "X-Evil-Oid": true}
			}
			if diff := cmp.Diff(tc.want, got, ignoreSubject); diff != "" {
				t.Errorf("Authorize (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAuthorizeStripMatchesDecision: the strip list comes from the policy
// set that made the decision, even while sets are being swapped (review
// 5, finding 8).
func TestAuthorizeStripMatchesDecision(t *testing.T) {
	compile := func(header, path string) *policy.Set {
		objs, err := policy.Load("p.yaml", []byte(`
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: entra, namespace: shop}
spec:
  azureAD: {tenantID: 72f988bf-0000-4000-8000-000000000001, audiences: [api://orders]}
  forwardClaims: {oid: `+header+`}
---
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: p, namespace: shop}
spec:
  rules: [{from: {anonymous: true}, to: {paths: [`+path+`]}}]
`))
		if err != nil {
			t.Fatal(err)
		}
		set, err := policy.Compile(objs)
		if err != nil {
			t.Fatal(err)
		}
		return set
	}
	a, b := compile("X-A", "/a"), compile("X-B", "/b")
	store := policy.NewStore()
	store.Swap(a)
	e := New(fakeTokens{}, store)
	var w atomic.Pointer[Workload]
	w.Store(&Workload{Key: "shop/p-1", Policy: policy.Workload{Namespace: "shop"}})
	az := e.For(&w)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			store.Swap([]*policy.Set{a, b}[i%2])
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })
	want := map[string][]string{"/a": {"X-A"}, "/b": {"X-B"}}
	for i := range 20000 {
		path := []string{"/a", "/b"}[i%2]
		d, strip := az.AuthorizeStrip(context.Background(), &verifier.Request{Method: "GET", Path: path,
			Destination: netip.MustParseAddrPort("198.18.0.2:80"), Source: identity.AnonymousSource})
		if d.Allow && !cmp.Equal(strip, want[path]) {
			t.Fatalf("request %d to %s allowed by the set forwarding %v: got strip list %v, want %v", i, path, want[path], strip, want[path])
		}
		if d.Allow && (len(d.Strip) != 1 || !d.Strip[want[path][0]]) {
			t.Fatalf("request %d to %s allowed by the set forwarding %v: got Decision.Strip %v, want %v", i, path, want[path], d.Strip, want[path])
		}
	}
}
