package authz

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/portcullis-mesh/portcullis/agent/verifier"
	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/tokencheck"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

const policies = `
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: entra, namespace: shop}
spec:
  azureAD:
    tenantID: 72f988bf-0000-4000-8000-000000000001
    audiences: [api://orders]
  forwardClaims: {oid: X-Claim-Oid, roles: X-Claim-Roles}
---
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  rules:
  - to: {ports: [8080], methods: [GET], paths: ["/orders/*"]}
    when:
      issuers: [{name: entra}]
      roles: {anyOf: [Orders.Read]}
  - from: {workloads: [shop/frontend]}
    to: {ports: [8080], paths: ["/internal/*"]}
---
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: audit-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  mode: Audit
  action: Deny
  rules:
  - to: {paths: ["/internal/secret"]}
`

// fakeTokens accepts "good" and "norole", refuses everything else as expired.
type fakeTokens struct{}

func (fakeTokens) Validate(_ context.Context, raw string) (*tokencheck.Claims, tokencheck.Reason, error) {
	c := &tokencheck.Claims{Issuer: "https://login.microsoftonline.com/t/v2.0", IssuerRef: "shop/entra", TenantID: "t", ObjectID: "oid-1", ClientID: "app-1",
		Raw: map[string]any{"oid": "oid-1", "roles": []any{"Orders.Read", "Orders.Write"}}}
	switch raw {
	case "good":
		c.Roles = []string{"Orders.Read", "Orders.Write"}
		return c, "", nil
	case "norole":
		c.Raw = map[string]any{"oid": "oid-1"}
		return c, "", nil
	}
	return nil, tokencheck.ReasonExpired, tokencheck.ErrMissingToken
}

func newEngine(t *testing.T) *Engine {
	t.Helper()
	objs, err := policy.Load("p.yaml", []byte(policies))
	if err != nil {
		t.Fatal(err)
	}
	store := policy.NewStore()
	if _, err := store.Update(objs); err != nil {
		t.Fatal(err)
	}
	return New(fakeTokens{}, store)
}

func TestAuthorize(t *testing.T) {
	e := newEngine(t)
	var w atomic.Pointer[Workload]
	w.Store(&Workload{Key: "shop/orders-1", Policy: policy.Workload{Namespace: "shop", Labels: map[string]string{"app": "orders"}}})
	az := e.For(&w)
	frontend := identity.Source{ID: "spiffe://cluster.local/ns/shop/sa/frontend", Namespace: "shop", ServiceAccount: "frontend"}
	dst := netip.MustParseAddrPort("198.18.0.2:8080")

	for _, tc := range []struct {
		name   string
		req    verifier.Request
		want   verifier.Decision
		header bool
	}{
		{"no token", verifier.Request{Method: "GET", Path: "/orders/1", Destination: dst, Source: identity.AnonymousSource},
			verifier.Decision{Status: 401, Reason: "missing_token"}, false},
		{"expired token: the token's reason", verifier.Request{Method: "GET", Path: "/orders/1", Destination: dst, Token: "old", Source: identity.AnonymousSource},
			verifier.Decision{Status: 401, Reason: "expired"}, false},
		{"valid token, no role", verifier.Request{Method: "GET", Path: "/orders/1", Destination: dst, Token: "norole", Source: identity.AnonymousSource},
			verifier.Decision{Status: 403, Reason: "no_matching_rule", Token: verifier.TokenInfo{Issuer: "https://login.microsoftonline.com/t/v2.0", Tenant: "t", ObjectID: "oid-1", ClientID: "app-1"}}, false},
		{"allowed, claims forwarded", verifier.Request{Method: "GET", Path: "/orders/1", Destination: dst, Token: "good", Source: identity.AnonymousSource},
			verifier.Decision{Allow: true, Policy: "shop/orders", Rule: "0", Token: verifier.TokenInfo{Issuer: "https://login.microsoftonline.com/t/v2.0", Tenant: "t", ObjectID: "oid-1", ClientID: "app-1"},
				Headers: []verifier.HeaderField{{Name: "X-Claim-Oid", Value: "oid-1"}, {Name: "X-Claim-Roles", Value: "Orders.Read,Orders.Write"}}}, true},
		{"workload identity, no token", verifier.Request{Method: "GET", Path: "/internal/x", Destination: dst, Source: frontend},
			verifier.Decision{Allow: true, Policy: "shop/orders", Rule: "1"}, false},
		{"audit-mode deny is forwarded and recorded as deny", verifier.Request{Method: "GET", Path: "/internal/secret", Destination: dst, Source: frontend},
			verifier.Decision{Allow: false, Status: 403, Reason: "denied", Policy: "shop/audit-admin", Rule: "0", Mode: verifier.AuditOnly}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := az.Authorize(context.Background(), &tc.req)
			// Every decision names the claim headers of the issuers
			// trusted in the workload's namespace for stripping.
			tc.want.Strip = map[string]bool{"X-Claim-Oid": true, "X-Claim-Roles": true}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Authorize (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNamespaceEnforcedDefaultDeny(t *testing.T) {
	e := newEngine(t)
	var w atomic.Pointer[Workload]
	w.Store(&Workload{Key: "shop/cart-1", Policy: policy.Workload{Namespace: "shop", Labels: map[string]string{"app": "cart"}}, NamespaceEnforced: true})
	got := e.For(&w).Authorize(context.Background(), &verifier.Request{Method: "GET", Path: "/", Destination: netip.MustParseAddrPort("198.18.0.3:80"), Source: identity.AnonymousSource})
	if got.Allow || got.Reason != ReasonNoPolicy || got.Status != 403 {
		t.Errorf("got %+v, want a 403 %s", got, ReasonNoPolicy)
	}
}

func TestNoPolicySetFailsClosed(t *testing.T) {
	e := New(fakeTokens{}, policy.NewStore())
	var w atomic.Pointer[Workload]
	w.Store(&Workload{Key: "shop/orders-1"})
	got := e.For(&w).Authorize(context.Background(), &verifier.Request{Method: "GET", Path: "/", Token: "good"})
	if got.Allow || got.Reason != ReasonNoPolicySet {
		t.Errorf("got %+v, want a refusal with %s", got, ReasonNoPolicySet)
	}
}

func TestIssuerConfigs(t *testing.T) {
	e := newEngine(t)
	ics := e.Set().IssuerConfigs()
	if len(ics) != 1 || ics[0].Ref != "shop/entra" || ics[0].AzureAD == nil || ics[0].AzureAD.TenantID != "72f988bf-0000-4000-8000-000000000001" {
		t.Fatalf("IssuerConfigs: got %+v", ics)
	}
	if err := ics[0].Validate(); err != nil {
		t.Errorf("converted issuer does not validate: %v", err)
	}
}

func engineFor(t *testing.T, yaml string) *Engine {
	t.Helper()
	objs, err := policy.Load("p.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	store := policy.NewStore()
	if _, err := store.Update(objs); err != nil {
		t.Fatal(err)
	}
	return New(fakeTokens{}, store)
}

// TestNamespaceEnforcedPolicies: in an enforced namespace, Audit-mode and
// Deny-only policies never open a workload; only an enforced Allow rule
// does (review 5, finding 3).
func TestNamespaceEnforcedPolicies(t *testing.T) {
	if ReasonNoPolicy != string(policy.ReasonNoPolicy) {
		t.Fatalf("ReasonNoPolicy: got %q, want %q", ReasonNoPolicy, policy.ReasonNoPolicy)
	}
	const head = "apiVersion: portcullis.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: trial, namespace: shop}\nspec:\n  selector: {matchLabels: {app: cart}}\n"
	auditAllow := head + "  mode: Audit\n  rules: [{from: {namespaces: [shop]}}]\n"
	auditAllowAll := head + "  mode: Audit\n  rules: [{}]\n"
	auditDeny := head + "  mode: Audit\n  action: Deny\n  rules: [{to: {paths: [/admin/*]}}]\n"
	denyOnly := head + "  action: Deny\n  rules: [{to: {paths: [/admin/*]}}]\n"
	allowAnon := head + "  rules: [{from: {anonymous: true}, to: {paths: [/x]}}]\n"
	refused := verifier.Decision{Status: 403, Reason: ReasonNoPolicy}
	for _, tc := range []struct {
		name     string
		yaml     string
		enforced bool
		path     string
		want     verifier.Decision
	}{
		{"audit allow, not matching", auditAllow, true, "/x", refused},
		{"audit allow-all, would allow", auditAllowAll, true, "/x", refused},
		{"audit deny, not matching", auditDeny, true, "/x", refused},
		{"audit deny, matching", auditDeny, true, "/admin/x", refused},
		{"deny only, not matching", denyOnly, true, "/x", refused},
		{"deny only, matching", denyOnly, true, "/admin/x", verifier.Decision{Status: 403, Reason: "denied", Policy: "shop/trial", Rule: "0"}},
		{"enforced allow, matching", allowAnon, true, "/x", verifier.Decision{Allow: true, Policy: "shop/trial", Rule: "0"}},
		{"enforced allow, not matching", allowAnon, true, "/y", verifier.Decision{Status: 403, Reason: "no_matching_rule"}},
		// Outside enforced namespaces, Audit and Deny-only policies keep
		// their meaning: Audit reports and forwards, Deny-only denies what
		// it matches.
		{"not enforced: audit allow reports and forwards", auditAllow, false, "/x", verifier.Decision{Status: 403, Reason: "no_matching_rule", Mode: verifier.AuditOnly}},
		{"not enforced: deny only, not matching, forwards", denyOnly, false, "/x", verifier.Decision{Allow: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := engineFor(t, tc.yaml)
			var w atomic.Pointer[Workload]
			w.Store(&Workload{Key: "shop/cart-1", Policy: policy.Workload{Namespace: "shop", Labels: map[string]string{"app": "cart"}}, NamespaceEnforced: tc.enforced})
			got := e.For(&w).Authorize(context.Background(), &verifier.Request{Method: "GET", Path: tc.path,
				Destination: netip.MustParseAddrPort("198.18.0.3:80"), Source: identity.AnonymousSource})
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Authorize (-want +got):\n%s", diff)
			}
		})
	}
}
