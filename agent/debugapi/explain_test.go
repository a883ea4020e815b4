package debugapi

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
	"github.com/portcullis-mesh/portcullis/tokencheck"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

const testPolicies = `apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: entra, namespace: shop}
spec:
  azureAD:
    tenantID: 11111111-2222-3333-4444-555555555555
    audiences: [api://orders]
---
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: orders-api, namespace: shop}
spec:
  selector:
    matchLabels: {app: orders}
  rules:
  - from: {workloads: [web/frontend]}
    to: {ports: [8080], methods: [GET, POST], paths: ["/orders/*"]}
    when:
      issuers: [{name: entra}]
      roles: {anyOf: [Orders.Read]}
      tokenBoundToSource: true
  - to: {paths: [/healthz]}
---
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-deletes, namespace: shop}
spec:
  action: Deny
  rules:
  - to: {methods: [DELETE]}
`

func compileTestSet(t *testing.T) *policy.Set {
	t.Helper()
	objs, err := policy.Load("policies.yaml", []byte(testPolicies))
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.Compile(objs)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// TestExplainAgreesWithEvaluate is the property the debug CLI relies on:
// for every request, Explain's decision is the one the request path
// (policy.Evaluate on the same input) makes.
func TestExplainAgreesWithEvaluate(t *testing.T) {
	set := compileTestSet(t)
	good := &tokencheck.Claims{IssuerRef: "shop/entra", ClientID: "c-frontend", Roles: []string{"Orders.Read"}}
	noRole := &tokencheck.Claims{IssuerRef: "shop/entra", ClientID: "c-frontend"}
	n := 0
	for _, path := range []string{"/orders/1", "/healthz", "/admin"} {
		for _, method := range []string{"GET", "POST", "DELETE"} {
			for _, port := range []uint32{8080, 9090} {
				for _, src := range []string{"", "web/frontend", "web/attacker"} {
					for _, labels := range []map[string]string{{"app": "orders"}, {"app": "cart"}} {
						for _, tok := range []struct {
							claims *tokencheck.Claims
							reason tokencheck.Reason
						}{{good, ""}, {noRole, ""}, {nil, ""}, {nil, tokencheck.ReasonExpired}} {
							req := &debugv1.ExplainRequest{Workload: "shop/orders-api", Port: port, Method: method, Path: path, Source: src}
							env := ExplainEnv{Labels: labels, SourceClientID: "c-frontend", Claims: tok.claims, TokenReason: tok.reason, DefaultDeny: labels["app"] == "cart" && port == 9090}
							if err := ValidateExplain(req); err != nil {
								t.Fatal(err)
							}
							got := Explain(set, req, env)
							want := policy.Evaluate(set, Input(req, env))
							name := fmt.Sprintf("%s %s :%d from %q labels %v claims %v reason %q", method, path, port, src, labels, tok.claims != nil, tok.reason)
							if got.GetDecision() != want.Outcome.String() || got.GetStatus() != uint32(want.Status) ||
								got.GetReason() != want.ReportedReason() || got.GetPolicy() != want.Policy || got.GetRule() != int32(want.Rule) {
								t.Errorf("%s: explain says %s %d %s %s#%d, evaluate says %s %d %s %s#%d", name,
									got.GetDecision(), got.GetStatus(), got.GetReason(), got.GetPolicy(), got.GetRule(),
									want.Outcome, want.Status, want.ReportedReason(), want.Policy, want.Rule)
							}
							for _, rt := range got.GetTrace() {
								if rt.GetDetail() == "" {
									t.Errorf("%s: rule %s#%d has no detail", name, rt.GetPolicy(), rt.GetRule())
								}
							}
							n++
						}
					}
				}
			}
		}
	}
	if n < 400 {
		t.Fatalf("only %d requests generated", n)
	}
}

func TestExplainTrace(t *testing.T) {
	set := compileTestSet(t)
	req := &debugv1.ExplainRequest{Workload: "shop/orders-api", Port: 8080, Method: "GET", Path: "/orders/1", Source: "web/frontend", SourceClientId: "c-batch"}
	env := ExplainEnv{
		Labels: map[string]string{"app": "orders"},
		Claims: &tokencheck.Claims{IssuerRef: "shop/entra", ClientID: "c-frontend", Roles: []string{"Orders.Read"}},
		Token:  &debugv1.TokenVerdict{Valid: true, IssuerRef: "shop/entra"},
	}
	got := Explain(set, req, env)
	want := &debugv1.ExplainResponse{
		Decision: "deny", Reason: "token_not_bound_to_source", Status: 403, Policy: "shop/orders-api", Rule: 0,
		Mode: "enforce", Captured: true, Token: env.Token,
		Trace: []*debugv1.RuleTrace{
			{Policy: "shop/no-deletes", Action: "Deny", Mode: "enforce", Rule: 0, FailedField: "to.methods", Detail: "method GET is not among the rule's methods"},
			{Policy: "shop/orders-api", Action: "Allow", Mode: "enforce", Rule: 0, FailedField: "when.tokenBoundToSource", Detail: "token client c-frontend is not the caller's workload client ID c-batch"},
			{Policy: "shop/orders-api", Action: "Allow", Mode: "enforce", Rule: 1, FailedField: "to.paths", Detail: "path /orders/1 matches none of the rule's paths"},
		},
	}
	if diff := cmp.Diff(want, got, cmpProto()); diff != "" {
		t.Errorf("Explain (-want +got):\n%s", diff)
	}
}

// TestResolveTokenClaims: claims given to explain are typed by
// tokencheck.ClaimsFromMap, as Validate types a token's payload (idtyp
// inferred included), and accepted by the issuer they name.
func TestResolveTokenClaims(t *testing.T) {
	const tenant = "11111111-2222-3333-4444-555555555555"
	s, err := structpb.NewStruct(map[string]any{
		"iss": "https://login.microsoftonline.com/" + tenant + "/v2.0", "sub": "sp", "oid": "sp", "tid": tenant, "ver": "2.0",
		"appid": "c-v1", "aud": "api://orders", "roles": []any{"A", "B"}, "groups": []any{"g"},
		"exp": float64(1795352400), "hasgroups": true,
	})
	if err != nil {
		t.Fatal(err)
	}
	req := &debugv1.ExplainRequest{Workload: "shop/orders-api", Port: 8080, Method: "GET", Path: "/", Claims: s}
	env, err := ResolveToken(t.Context(), compileTestSet(t), nil, req, ExplainEnv{})
	if err != nil {
		t.Fatal(err)
	}
	want := &tokencheck.Claims{
		Issuer: "https://login.microsoftonline.com/" + tenant + "/v2.0", IssuerRef: "shop/entra", Version: "2.0",
		Subject: "sp", ObjectID: "sp", TenantID: tenant, ClientID: "c-v1", IDType: "app",
		Audience: []string{"api://orders"}, Roles: []string{"A", "B"}, Groups: []string{"g"},
		GroupOverage: true, ExpiresAt: time.Unix(1795352400, 0),
	}
	if diff := cmp.Diff(want, env.Claims, cmpopts.IgnoreFields(tokencheck.Claims{}, "Raw")); diff != "" {
		t.Errorf("claims (-want +got):\n%s", diff)
	}
}

// TestResolveTokenIssuerScope: explain trusts, as the live path does, only
// ClusterIssuers and the workload namespace's own Issuers: claims only
// another namespace's Issuer accepts are refused (wrong_issuer), and a
// live token is validated for the workload's namespace.
func TestResolveTokenIssuerScope(t *testing.T) {
	const tenant = "11111111-2222-3333-4444-555555555555"
	s, err := structpb.NewStruct(map[string]any{
		"iss": "https://login.microsoftonline.com/" + tenant + "/v2.0", "sub": "sp", "oid": "sp", "tid": tenant, "ver": "2.0",
		"azp": "c-v2", "aud": "api://orders", "exp": float64(1795352400),
	})
	if err != nil {
		t.Fatal(err)
	}
	set := compileTestSet(t)
	for _, tc := range []struct {
		workload string
		ref      string
		reason   tokencheck.Reason
	}{
		{"shop/orders-api", "shop/entra", tokencheck.ReasonNone},
		{"web/frontend", "", tokencheck.ReasonWrongIssuer},
	} {
		req := &debugv1.ExplainRequest{Workload: tc.workload, Port: 8080, Method: "GET", Path: "/", Claims: s}
		env, err := ResolveToken(t.Context(), set, nil, req, ExplainEnv{})
		if err != nil {
			t.Fatal(err)
		}
		ref := ""
		if env.Claims != nil {
			ref = env.Claims.IssuerRef
		}
		if ref != tc.ref || env.TokenReason != tc.reason {
			t.Errorf("claims for %s: got issuer %q, reason %q; want %q, %q", tc.workload, ref, env.TokenReason, tc.ref, tc.reason)
		}
	}

	v := &scopedValidator{}
	req := &debugv1.ExplainRequest{Workload: "web/frontend", Port: 8080, Method: "GET", Path: "/", Token: "t"}
	if _, err := ResolveToken(t.Context(), set, v, req, ExplainEnv{}); err != nil {
		t.Fatal(err)
	}
	if v.namespace != "web" {
		t.Errorf("token validated for namespace %q, want web (ValidateFor)", v.namespace)
	}
}

type scopedValidator struct{ namespace string }

func (v *scopedValidator) Validate(context.Context, string) (*tokencheck.Claims, tokencheck.Reason, error) {
	v.namespace = "(unscoped)"
	return nil, tokencheck.ReasonMalformed, errors.New("unscoped")
}

func (v *scopedValidator) ValidateFor(_ context.Context, _, namespace string) (*tokencheck.Claims, tokencheck.Reason, error) {
	v.namespace = namespace
	return nil, tokencheck.ReasonExpired, errors.New("expired")
}
