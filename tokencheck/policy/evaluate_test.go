package policy

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/tokencheck"
)

// mustCompile compiles YAML documents joined by "---".
func mustCompile(t testing.TB, docs ...string) *Set {
	t.Helper()
	objs, err := Load("test.yaml", []byte(strings.Join(docs, "\n---\n")))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	set, err := Compile(objs)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return set
}

const issuerYAML = `
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: entra, namespace: shop}
spec:
  azureAD: {tenantID: 11111111-2222-3333-4444-555555555555, audiences: [api://orders]}
`

const clusterIssuerYAML = `
apiVersion: portcullis.dev/v1alpha1
kind: ClusterIssuer
metadata: {name: corp}
spec:
  oidc: {issuer: "https://idp.example.com", audiences: [orders]}
`

// policy builds an AccessPolicy in namespace shop.
func policy(name, spec string) string {
	return "apiVersion: portcullis.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: " + name + ", namespace: shop}\nspec:\n" + spec
}

var (
	ordersPod = Workload{Namespace: "shop", Labels: map[string]string{"app": "orders", "tier": "api"}}
	otherPod  = Workload{Namespace: "shop", Labels: map[string]string{"app": "cart"}}
	frontend  = identity.Source{ID: "spiffe://cluster.local/ns/web/sa/frontend", Namespace: "web", ServiceAccount: "frontend", ClientID: "c-frontend"}
	batch     = identity.Source{ID: "spiffe://cluster.local/ns/jobs/sa/batch", Namespace: "jobs", ServiceAccount: "batch", ClientID: "c-batch"}
	anonymous = identity.AnonymousSource
)

func claims(mut ...func(*tokencheck.Claims)) *tokencheck.Claims {
	c := &tokencheck.Claims{
		Issuer:    "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
		IssuerRef: "shop/entra",
		Version:   "2.0",
		ClientID:  "c-frontend",
		Roles:     []string{"Orders.Read"},
		Groups:    []string{"g-staff"},
		Scopes:    []string{"user_impersonation"},
		Raw: map[string]any{
			"azp": "c-frontend", "roles": []any{"Orders.Read"}, "department": "sales",
			"level": float64(3), "mfa": true,
		},
	}
	for _, m := range mut {
		m(c)
	}
	return c
}

func req(mut ...func(*Input)) Input {
	in := Input{Workload: ordersPod, Port: 8080, Method: "GET", Path: "/orders/42", Host: "orders.shop",
		Source: frontend, Claims: claims(), Headers: http.Header{"X-Tenant": {"blue"}}}
	for _, m := range mut {
		m(&in)
	}
	return in
}

func noToken(in *Input)      { in.Claims, in.TokenReason = nil, tokencheck.ReasonMissingToken }
func expiredToken(in *Input) { in.Claims, in.TokenReason = nil, tokencheck.ReasonExpired }

// want builds the expected Decision.
func allowed(policy string, rule int) Decision {
	return Decision{Outcome: OutcomeAllow, Status: StatusOK, Reason: ReasonAllowed, Policy: policy, Rule: rule, Captured: true}
}

func denied(policy string, rule int) Decision {
	return Decision{Outcome: OutcomeDeny, Status: StatusForbidden, Reason: ReasonDenied, Policy: policy, Rule: rule, Captured: true}
}

var (
	noMatch        = Decision{Outcome: OutcomeDeny, Status: StatusForbidden, Reason: ReasonNoMatchingRule, Rule: -1, Captured: true}
	missingToken   = Decision{Outcome: OutcomeDeny, Status: StatusUnauthenticated, Reason: ReasonTokenMissing, TokenReason: tokencheck.ReasonMissingToken, Rule: -1, Captured: true}
	invalidToken   = Decision{Outcome: OutcomeDeny, Status: StatusUnauthenticated, Reason: ReasonTokenInvalid, TokenReason: tokencheck.ReasonExpired, Rule: -1, Captured: true}
	noAllowPolicy  = Decision{Outcome: OutcomeAllow, Status: StatusOK, Reason: ReasonNoAllowPolicy, Rule: -1, Captured: true}
	notCapturedDec = Decision{Outcome: OutcomeAllow, Status: StatusOK, Reason: ReasonNotCaptured, Rule: -1}
)

func TestEvaluate(t *testing.T) {
	allowOrdersFromWeb := policy("allow-web", `
  selector: {matchLabels: {app: orders}}
  rules:
  - from: {namespaces: [web]}
    to: {ports: [8080], methods: [GET], paths: ["/orders/*"]}
`)
	denyAdmin := policy("deny-admin", `
  action: Deny
  rules:
  - to: {paths: ["/admin/*"]}
`)
	tests := []struct {
		name string
		docs []string
		in   Input
		want Decision
	}{
		// Capture.
		{"no policy: not captured", nil, req(), notCapturedDec},
		{"policy in another namespace: not captured", []string{policy("p", "  rules: [{}]")}, req(func(in *Input) { in.Workload.Namespace = "other" }), notCapturedDec},
		{"selector does not select the pod: not captured", []string{allowOrdersFromWeb}, req(func(in *Input) { in.Workload = otherPod }), notCapturedDec},
		{"policy ports do not include the port: not captured", []string{allowOrdersFromWeb}, req(func(in *Input) { in.Port = 9090 }), notCapturedDec},

		// Basic allow.
		{"allow rule matches", []string{allowOrdersFromWeb}, req(), allowed("shop/allow-web", 0)},
		{"from namespace does not match", []string{allowOrdersFromWeb}, req(func(in *Input) { in.Source = batch }), noMatch},
		{"empty selector selects every pod of the namespace", []string{policy("ns-wide", "  rules: [{from: {namespaces: [web]}}]")}, req(func(in *Input) { in.Workload = otherPod }), allowed("shop/ns-wide", 0)},
		{"empty selector object selects every pod", []string{policy("ns-wide", "  selector: {}\n  rules: [{from: {namespaces: [jobs]}}]")}, req(func(in *Input) { in.Workload = otherPod }), noMatch},
		{"allow policy without rules allows nothing", []string{policy("nothing", "  selector: {matchLabels: {app: orders}}")}, req(), noMatch},
		{"empty rule allows everything", []string{policy("all", "  rules: [{}]")}, req(func(in *Input) { in.Source = anonymous; noToken(in) }), allowed("shop/all", 0)},
		{"matchExpressions selector", []string{policy("expr", "  selector: {matchExpressions: [{key: tier, operator: In, values: [api]}]}\n  rules: [{}]")}, req(), allowed("shop/expr", 0)},
		{"matchExpressions selector not matching: not captured", []string{policy("expr", "  selector: {matchExpressions: [{key: tier, operator: NotIn, values: [api]}]}\n  rules: [{}]")}, req(), notCapturedDec},

		// Deny over allow.
		{"deny wins over allow", []string{allowOrdersFromWeb, policy("deny-web", "  action: Deny\n  rules: [{from: {namespaces: [web]}}]")}, req(), denied("shop/deny-web", 0)},
		{"deny not matching leaves allow", []string{allowOrdersFromWeb, denyAdmin}, req(), allowed("shop/allow-web", 0)},
		{"deny only: not matching allows", []string{denyAdmin}, req(), noAllowPolicy},
		{"deny only: matching denies", []string{denyAdmin}, req(func(in *Input) { in.Path = "/admin/users" }), denied("shop/deny-admin", 0)},
		{"deny with token condition, no token: does not match", []string{policy("deny-contractors", "  action: Deny\n  rules: [{when: {groups: {anyOf: [g-contractors]}}}]")}, req(noToken), noAllowPolicy},
		{"deny with token condition, invalid token: 401", []string{policy("deny-contractors", "  action: Deny\n  rules: [{when: {groups: {anyOf: [g-contractors]}}}]")}, req(expiredToken), invalidToken},
		{"deny with group overage fails closed", []string{policy("deny-contractors", "  action: Deny\n  rules: [{when: {groups: {anyOf: [g-contractors]}}}]")},
			req(func(in *Input) {
				in.Claims = claims(func(c *tokencheck.Claims) { c.Groups, c.GroupOverage = nil, true })
			}),
			Decision{Outcome: OutcomeDeny, Status: StatusForbidden, Reason: ReasonGroupOverage, TokenReason: tokencheck.ReasonGroupOverage, Policy: "shop/deny-contractors", Rule: 0, Captured: true}},

		// Multiple policies on one workload.
		{"second allow policy matches", []string{allowOrdersFromWeb, policy("allow-jobs", "  rules: [{from: {namespaces: [jobs]}}]")}, req(func(in *Input) { in.Source = batch }), allowed("shop/allow-jobs", 0)},
		{"first policy by name wins when both match", []string{policy("b", "  rules: [{}]"), policy("a", "  rules: [{}]")}, req(), allowed("shop/a", 0)},
		{"first matching rule index reported", []string{policy("p", "  rules: [{from: {namespaces: [jobs]}}, {from: {namespaces: [web]}}]")}, req(), allowed("shop/p", 1)},

		// from.
		{"from workload matches", []string{policy("p", "  rules: [{from: {workloads: [web/frontend]}}]")}, req(), allowed("shop/p", 0)},
		{"from workload other sa", []string{policy("p", "  rules: [{from: {workloads: [web/admin]}}]")}, req(), noMatch},
		{"anonymous refused unless listed", []string{allowOrdersFromWeb}, req(func(in *Input) { in.Source = anonymous }), noMatch},
		{"anonymous allowed when listed", []string{policy("p", "  rules: [{from: {anonymous: true}}]")}, req(func(in *Input) { in.Source = anonymous }), allowed("shop/p", 0)},
		{"anonymous: true does not admit identified callers", []string{policy("p", "  rules: [{from: {anonymous: true}}]")}, req(), noMatch},

		// to.
		{"method case-insensitive", []string{allowOrdersFromWeb}, req(func(in *Input) { in.Method = "get" }), allowed("shop/allow-web", 0)},
		{"method lower-case in policy", []string{policy("p", "  rules: [{to: {methods: [post]}}]")}, req(func(in *Input) { in.Method = "POST" }), allowed("shop/p", 0)},
		{"method mismatch", []string{allowOrdersFromWeb}, req(func(in *Input) { in.Method = "DELETE" }), noMatch},
		{"deny GET also denies get", []string{policy("d", "  action: Deny\n  rules: [{to: {methods: [GET]}}]")}, req(func(in *Input) { in.Method = "get" }), denied("shop/d", 0)},
		{"prefix path matches subpath", []string{allowOrdersFromWeb}, req(func(in *Input) { in.Path = "/orders/a/b" }), allowed("shop/allow-web", 0)},
		{"prefix path does not match sibling", []string{allowOrdersFromWeb}, req(func(in *Input) { in.Path = "/ordersx" }), noMatch},
		{"prefix path matches the directory itself", []string{allowOrdersFromWeb}, req(func(in *Input) { in.Path = "/orders/" }), allowed("shop/allow-web", 0)},
		{"exact path", []string{policy("p", "  rules: [{to: {paths: [/healthz]}}]")}, req(func(in *Input) { in.Path = "/healthz" }), allowed("shop/p", 0)},
		{"exact path is not a prefix", []string{policy("p", "  rules: [{to: {paths: [/healthz]}}]")}, req(func(in *Input) { in.Path = "/healthz/x" }), noMatch},
		{"suffix path", []string{policy("p", `  rules: [{to: {paths: ["*.json"]}}]`)}, req(func(in *Input) { in.Path = "/a/b.json" }), allowed("shop/p", 0)},
		{"suffix path mismatch", []string{policy("p", `  rules: [{to: {paths: ["*.json"]}}]`)}, req(func(in *Input) { in.Path = "/a/b.jsonp" }), noMatch},
		{"star path matches all", []string{policy("p", `  rules: [{to: {paths: ["*"]}}]`)}, req(func(in *Input) { in.Path = "/" }), allowed("shop/p", 0)},
		{"overlapping prefixes", []string{policy("p", `  rules: [{to: {paths: ["/a/b/c/*", "/a/*", "/z/*"]}}]`)}, req(func(in *Input) { in.Path = "/a/b/d" }), allowed("shop/p", 0)},
		{"host exact ignores port and case", []string{policy("p", "  rules: [{to: {hosts: [Orders.Shop]}}]")}, req(func(in *Input) { in.Host = "orders.shop:8080" }), allowed("shop/p", 0)},
		{"host wildcard", []string{policy("p", `  rules: [{to: {hosts: ["*.example.com"]}}]`)}, req(func(in *Input) { in.Host = "api.example.com" }), allowed("shop/p", 0)},
		{"host wildcard does not match apex", []string{policy("p", `  rules: [{to: {hosts: ["*.example.com"]}}]`)}, req(func(in *Input) { in.Host = "example.com" }), noMatch},
		{"host with port pattern needs that port", []string{policy("p", "  rules: [{to: {hosts: [\"orders.shop:8443\"]}}]")}, req(func(in *Input) { in.Host = "orders.shop:8080" }), noMatch},
		{"host IPv6 literal with port", []string{policy("p", "  rules: [{to: {hosts: [\"[::1]\"]}}]")}, req(func(in *Input) { in.Host = "[::1]:8080" }), allowed("shop/p", 0)},
		{"namespace-wide deny over selective allow", []string{allowOrdersFromWeb, policy("deny-all-web", "  action: Deny\n  rules: [{from: {namespaces: [web]}, to: {methods: [GET]}}]")}, req(), denied("shop/deny-all-web", 0)},
		{"deny of another workload does not apply", []string{allowOrdersFromWeb, policy("deny-cart", "  action: Deny\n  selector: {matchLabels: {app: cart}}\n  rules: [{}]")}, req(), allowed("shop/allow-web", 0)},
		{"port rule for another port is not captured on that port", []string{policy("p", "  rules: [{to: {ports: [9090]}}]")}, req(), notCapturedDec},

		// Tokens.
		{"token required, missing: 401", []string{policy("p", "  rules: [{when: {roles: {anyOf: [Orders.Read]}}}]")}, req(noToken), missingToken},
		{"token required, invalid: 401 with token reason", []string{policy("p", "  rules: [{when: {roles: {anyOf: [Orders.Read]}}}]")}, req(expiredToken), invalidToken},
		{"token not required, missing: allowed", []string{allowOrdersFromWeb}, req(noToken), allowed("shop/allow-web", 0)},
		{"token rule whose destination does not match: 403 not 401", []string{policy("p", "  rules: [{to: {paths: [/x]}, when: {roles: {anyOf: [Orders.Read]}}}]")}, req(noToken), noMatch},
		{"tokenless rule matches before token rule", []string{policy("p", "  rules: [{when: {roles: {anyOf: [Orders.Read]}}}, {to: {paths: [/orders/*]}}]")}, req(noToken), allowed("shop/p", 1)},
		{"roles any-of", []string{policy("p", "  rules: [{when: {roles: {anyOf: [Orders.Write, Orders.Read]}}}]")}, req(), allowed("shop/p", 0)},
		{"roles any-of mismatch: 403", []string{policy("p", "  rules: [{when: {roles: {anyOf: [Orders.Write]}}}]")}, req(), noMatch},
		{"roles all-of", []string{policy("p", "  rules: [{when: {roles: {allOf: [Orders.Read, Orders.Write]}}}]")},
			req(func(in *Input) {
				in.Claims = claims(func(c *tokencheck.Claims) { c.Roles = []string{"Orders.Write", "Orders.Read"} })
			}), allowed("shop/p", 0)},
		{"roles all-of missing one", []string{policy("p", "  rules: [{when: {roles: {allOf: [Orders.Read, Orders.Write]}}}]")}, req(), noMatch},
		{"groups any-of", []string{policy("p", "  rules: [{when: {groups: {anyOf: [g-staff]}}}]")}, req(), allowed("shop/p", 0)},
		{"group overage reason", []string{policy("p", "  rules: [{when: {groups: {anyOf: [g-staff]}}}]")},
			req(func(in *Input) {
				in.Claims = claims(func(c *tokencheck.Claims) { c.Groups, c.GroupOverage = nil, true })
			}),
			Decision{Outcome: OutcomeDeny, Status: StatusForbidden, Reason: ReasonGroupOverage, TokenReason: tokencheck.ReasonGroupOverage, Policy: "shop/p", Rule: 0, Captured: true}},
		{"group overage does not matter to a rule without groups", []string{policy("p", "  rules: [{when: {roles: {anyOf: [Orders.Read]}}}]")},
			req(func(in *Input) { in.Claims = claims(func(c *tokencheck.Claims) { c.GroupOverage = true }) }), allowed("shop/p", 0)},
		{"scopes", []string{policy("p", "  rules: [{when: {scopes: {anyOf: [user_impersonation]}}}]")}, req(), allowed("shop/p", 0)},
		{"clients", []string{policy("p", "  rules: [{when: {clients: {anyOf: [c-frontend]}}}]")}, req(), allowed("shop/p", 0)},
		{"clients mismatch", []string{policy("p", "  rules: [{when: {clients: {anyOf: [c-other]}}}]")}, req(), noMatch},
		{"issuer ref matches", []string{issuerYAML, policy("p", "  rules: [{when: {issuers: [{name: entra}]}}]")}, req(), allowed("shop/p", 0)},
		{"cluster issuer ref mismatch", []string{clusterIssuerYAML, policy("p", "  rules: [{when: {issuers: [{kind: ClusterIssuer, name: corp}]}}]")}, req(), noMatch},
		{"cluster issuer ref matches", []string{clusterIssuerYAML, policy("p", "  rules: [{when: {issuers: [{kind: ClusterIssuer, name: corp}]}}]")},
			req(func(in *Input) { in.Claims = claims(func(c *tokencheck.Claims) { c.IssuerRef = "corp" }) }), allowed("shop/p", 0)},
		{"issuers alone require a token", []string{issuerYAML, policy("p", "  rules: [{when: {issuers: [{name: entra}]}}]")}, req(noToken), missingToken},
		{"claims string", []string{policy("p", "  rules: [{when: {claims: [{name: department, values: [sales, hr]}]}}]")}, req(), allowed("shop/p", 0)},
		{"claims number and bool", []string{policy("p", `  rules: [{when: {claims: [{name: level, values: ["3"]}, {name: mfa, values: ["true"]}]}}]`)}, req(), allowed("shop/p", 0)},
		{"claims list element", []string{policy("p", "  rules: [{when: {claims: [{name: roles, values: [Orders.Read]}]}}]")}, req(), allowed("shop/p", 0)},
		{"claims absent", []string{policy("p", "  rules: [{when: {claims: [{name: nope, values: [x]}]}}]")}, req(), noMatch},

		// Token bound to the source.
		{"token bound to source", []string{policy("p", "  rules: [{when: {tokenBoundToSource: true}}]")}, req(), allowed("shop/p", 0)},
		{"token replayed from another workload", []string{policy("p", "  rules: [{when: {tokenBoundToSource: true}}]")}, req(func(in *Input) { in.Source = batch }),
			Decision{Outcome: OutcomeDeny, Status: StatusForbidden, Reason: ReasonTokenNotBound, Policy: "shop/p", Rule: 0, Captured: true}},
		{"token bound: anonymous caller refused", []string{policy("p", "  rules: [{when: {tokenBoundToSource: true}}]")}, req(func(in *Input) { in.Source = anonymous }),
			Decision{Outcome: OutcomeDeny, Status: StatusForbidden, Reason: ReasonTokenNotBound, Policy: "shop/p", Rule: 0, Captured: true}},
		{"token bound: caller without client ID refused", []string{policy("p", "  rules: [{when: {tokenBoundToSource: true}}]")},
			req(func(in *Input) {
				in.Source.ClientID = ""
				in.Claims = claims(func(c *tokencheck.Claims) { c.ClientID = "" })
			}),
			Decision{Outcome: OutcomeDeny, Status: StatusForbidden, Reason: ReasonTokenNotBound, Policy: "shop/p", Rule: 0, Captured: true}},

		// CEL.
		{"cel over claims", []string{policy("p", `  rules: [{when: {expression: "claims.department == 'sales' && claims.level >= 3.0"}}]`)}, req(), allowed("shop/p", 0)},
		{"cel over claims false", []string{policy("p", `  rules: [{when: {expression: "claims.department == 'hr'"}}]`)}, req(), noMatch},
		{"cel over claims needs a token", []string{policy("p", `  rules: [{when: {expression: "claims.department == 'sales'"}}]`)}, req(noToken), missingToken},
		{"cel over source without token", []string{policy("p", `  rules: [{when: {expression: "source.namespace == 'web' && !source.anonymous"}}]`)}, req(noToken), allowed("shop/p", 0)},
		{"cel over request", []string{policy("p", `  rules: [{when: {expression: "request.headers['x-tenant'] == 'blue' && request.path.startsWith('/orders')"}}]`)}, req(), allowed("shop/p", 0)},
		{"cel error fails closed with its reason", []string{policy("p", `  rules: [{when: {expression: "claims.nope == 'x'"}}]`)}, req(),
			Decision{Outcome: OutcomeDeny, Status: StatusForbidden, Reason: ReasonExpressionError, Policy: "shop/p", Rule: 0, Captured: true}},
		{"cel error in deny fails closed", []string{policy("d", `  action: Deny`+"\n"+`  rules: [{when: {expression: "claims.nope == 'x'"}}]`)}, req(),
			Decision{Outcome: OutcomeDeny, Status: StatusForbidden, Reason: ReasonExpressionError, Policy: "shop/d", Rule: 0, Captured: true}},

		// Audit.
		{"audit allow policy alone: would deny, allowed", []string{policy("a", "  mode: Audit\n  rules: [{from: {namespaces: [jobs]}}]")}, req(),
			Decision{Outcome: OutcomeAllow, Status: StatusOK, Reason: ReasonNoMatchingRule, Rule: -1, Mode: ModeAudit, AuditOutcome: OutcomeDeny, AuditStatus: StatusForbidden, Captured: true}},
		{"audit allow policy alone: would allow", []string{policy("a", "  mode: Audit\n  rules: [{from: {namespaces: [web]}}]")}, req(),
			Decision{Outcome: OutcomeAllow, Status: StatusOK, Reason: ReasonAllowed, Policy: "shop/a", Rule: 0, Mode: ModeAudit, AuditOutcome: OutcomeAllow, AuditStatus: StatusOK, Captured: true}},
		{"audit deny over enforced allow: reported, allowed", []string{allowOrdersFromWeb, policy("d", "  mode: Audit\n  action: Deny\n  rules: [{from: {namespaces: [web]}}]")}, req(),
			Decision{Outcome: OutcomeAllow, Status: StatusOK, Reason: ReasonDenied, Policy: "shop/d", Rule: 0, Mode: ModeAudit, AuditOutcome: OutcomeDeny, AuditStatus: StatusForbidden, Captured: true}},
		{"audit never loosens an enforced deny", []string{allowOrdersFromWeb, policy("a", "  mode: Audit\n  rules: [{}]")}, req(func(in *Input) { in.Source = batch }), noMatch},
		{"audit token required: would be 401", []string{policy("a", "  mode: Audit\n  rules: [{when: {roles: {anyOf: [Orders.Read]}}}]")}, req(noToken),
			Decision{Outcome: OutcomeAllow, Status: StatusOK, Reason: ReasonTokenMissing, TokenReason: tokencheck.ReasonMissingToken, Rule: -1, Mode: ModeAudit, AuditOutcome: OutcomeDeny, AuditStatus: StatusUnauthenticated, Captured: true}},
		{"audit and enforce agree: enforced decision", []string{allowOrdersFromWeb, policy("a", "  mode: Audit\n  rules: [{from: {namespaces: [web]}}]")}, req(), allowed("shop/allow-web", 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set := mustCompile(t, tt.docs...)
			got := Evaluate(set, tt.in)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Evaluate() mismatch (-want +got):\n%s", diff)
			}
			// Explain must agree with Evaluate.
			if ex := Explain(set, tt.in); ex.Decision != got {
				t.Errorf("Explain().Decision = %+v, want %+v", ex.Decision, got)
			}
		})
	}
}

// TestEvaluateDefaultDeny: in a namespace that enforces by default, only an
// enforced Allow policy can let a request through; Deny-only and Audit-mode
// policies never open the workload.
func TestEvaluateDefaultDeny(t *testing.T) {
	allowWeb := policy("allow-web", "  selector: {matchLabels: {app: orders}}\n  rules: [{from: {namespaces: [web]}, to: {ports: [8080]}}]")
	auditAllowAll := policy("trial", "  selector: {matchLabels: {app: orders}}\n  mode: Audit\n  rules: [{}]")
	auditDenyAdmin := policy("trial-deny", "  mode: Audit\n  action: Deny\n  rules: [{to: {paths: [/admin/*]}}]")
	denyAdmin := policy("deny-admin", "  action: Deny\n  rules: [{to: {paths: [/admin/*]}}]")
	defaultDeny := func(in *Input) { in.Workload.DefaultDeny = true }
	noPolicyDec := Decision{Outcome: OutcomeDeny, Status: StatusForbidden, Reason: ReasonNoPolicy, Rule: -1, Captured: true}
	tests := []struct {
		name string
		docs []string
		in   Input
		want Decision
	}{
		{"no policy at all", nil, req(defaultDeny), noPolicyDec},
		{"policy of another namespace", []string{allowWeb}, req(defaultDeny, func(in *Input) { in.Workload.Namespace = "other" }), noPolicyDec},
		{"allow policy of another port", []string{allowWeb}, req(defaultDeny, func(in *Input) { in.Port = 9090 }), noPolicyDec},
		{"enforced allow matches", []string{allowWeb}, req(defaultDeny), allowed("shop/allow-web", 0)},
		{"enforced allow does not match", []string{allowWeb}, req(defaultDeny, func(in *Input) { in.Source = anonymous }), noMatch},
		{"deny only, not matching: default deny", []string{denyAdmin}, req(defaultDeny, func(in *Input) { in.Source = anonymous; noToken(in) }), noPolicyDec},
		{"deny only, matching: denied", []string{denyAdmin}, req(defaultDeny, func(in *Input) { in.Path = "/admin/x" }), denied("shop/deny-admin", 0)},
		{"audit allow alone, would allow: still refused", []string{auditAllowAll}, req(defaultDeny, func(in *Input) { in.Source = anonymous; noToken(in) }), noPolicyDec},
		{"audit deny alone, not matching: still refused", []string{auditDenyAdmin}, req(defaultDeny, func(in *Input) { in.Source = anonymous; noToken(in) }), noPolicyDec},
		{"audit deny alone, matching: still refused", []string{auditDenyAdmin}, req(defaultDeny, func(in *Input) { in.Path = "/admin/x" }), noPolicyDec},
		{"enforced deny only and audit allow: still refused", []string{denyAdmin, auditAllowAll}, req(defaultDeny), noPolicyDec},
		{"audit deny over enforced allow: reported, allowed", []string{allowWeb, auditDenyAdmin}, req(defaultDeny, func(in *Input) { in.Path = "/admin/x" }),
			Decision{Outcome: OutcomeAllow, Status: StatusOK, Reason: ReasonDenied, Policy: "shop/trial-deny", Rule: 0, Mode: ModeAudit, AuditOutcome: OutcomeDeny, AuditStatus: StatusForbidden, Captured: true}},
		// Without default deny, the same policies behave as before.
		{"not enforced: audit allow alone allows and reports", []string{auditAllowAll}, req(func(in *Input) { in.Source = anonymous; noToken(in) }),
			Decision{Outcome: OutcomeAllow, Status: StatusOK, Reason: ReasonAllowed, Policy: "shop/trial", Rule: 0, Mode: ModeAudit, AuditOutcome: OutcomeAllow, AuditStatus: StatusOK, Captured: true}},
		{"not enforced: deny only, not matching, allows", []string{denyAdmin}, req(), noAllowPolicy},
		{"not enforced: no policy, not captured", nil, req(), notCapturedDec},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set := mustCompile(t, tt.docs...)
			got := Evaluate(set, tt.in)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Evaluate() mismatch (-want +got):\n%s", diff)
			}
			if ex := Explain(set, tt.in); ex.Decision != got {
				t.Errorf("Explain().Decision: got %+v, want %+v", ex.Decision, got)
			}
		})
	}
	if got := Evaluate(nil, req(defaultDeny)); got != noPolicyDec {
		t.Errorf("Evaluate(nil set) with default deny: got %+v, want %+v", got, noPolicyDec)
	}
}

func TestEvaluateNilSet(t *testing.T) {
	if got := Evaluate(nil, req()); got != notCapturedDec {
		t.Errorf("Evaluate(nil) = %+v, want %+v", got, notCapturedDec)
	}
}

func TestExplain(t *testing.T) {
	set := mustCompile(t,
		policy("allow", `
  rules:
  - to: {paths: ["/admin/*"]}
  - from: {namespaces: [jobs]}
  - when: {roles: {anyOf: [Orders.Write]}}
`),
		policy("deny", "  action: Deny\n  rules: [{to: {methods: [DELETE]}}]"))
	got := Explain(set, req())
	want := Explanation{
		Decision: noMatch,
		Rules: []RuleTrace{
			{Policy: "shop/deny", Rule: 0, Action: "Deny", Failed: "to.methods"},
			{Policy: "shop/allow", Rule: 0, Action: "Allow", Failed: "to.paths"},
			{Policy: "shop/allow", Rule: 1, Action: "Allow", Failed: "from"},
			{Policy: "shop/allow", Rule: 2, Action: "Allow", Failed: "when.roles"},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Explain() mismatch (-want +got):\n%s", diff)
	}
}

func TestExplainAfterDeny(t *testing.T) {
	set := mustCompile(t,
		policy("allow", "  rules: [{from: {namespaces: [web]}}]"),
		policy("audit", "  mode: Audit\n  rules: [{from: {namespaces: [jobs]}}]"),
		policy("deny", "  action: Deny\n  rules: [{to: {methods: [GET]}}]"))
	got := Explain(set, req())
	want := Explanation{
		Decision: denied("shop/deny", 0),
		Rules: []RuleTrace{
			{Policy: "shop/deny", Rule: 0, Action: "Deny", Matched: true},
			{Policy: "shop/allow", Rule: 0, Action: "Allow", Matched: true},
			{Policy: "shop/audit", Rule: 0, Action: "Allow", Mode: ModeAudit, Failed: "from"},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Explain() mismatch (-want +got):\n%s", diff)
	}
}

func TestCapture(t *testing.T) {
	set := mustCompile(t,
		policy("a", "  selector: {matchLabels: {app: orders}}\n  rules: [{to: {ports: [8080, 8443]}}]"),
		policy("b", "  selector: {matchLabels: {app: orders}}\n  mode: Audit\n  rules: [{to: {ports: [9090, 8080]}}]"),
		policy("c", "  selector: {matchLabels: {app: cart}}\n  rules: [{}]"),
	)
	tests := []struct {
		name string
		w    Workload
		want Capture
	}{
		{"ports union", ordersPod, Capture{Selected: true, Ports: []uint16{8080, 8443, 9090}}},
		{"all ports", otherPod, Capture{Selected: true, AllPorts: true}},
		{"not selected", Workload{Namespace: "shop", Labels: map[string]string{"app": "x"}}, Capture{}},
		{"other namespace", Workload{Namespace: "x", Labels: ordersPod.Labels}, Capture{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, set.Capture(tt.w)); diff != "" {
				t.Errorf("Capture() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestIssuerRefs(t *testing.T) {
	set := mustCompile(t, issuerYAML, clusterIssuerYAML,
		policy("p", "  rules: [{when: {issuers: [{name: entra}, {kind: ClusterIssuer, name: corp}]}}]"))
	if diff := cmp.Diff([]string{"corp", "shop/entra"}, set.IssuerRefs()); diff != "" {
		t.Errorf("IssuerRefs() mismatch (-want +got):\n%s", diff)
	}
	var refs []string
	for _, is := range set.Issuers() {
		refs = append(refs, is.Ref)
	}
	if diff := cmp.Diff([]string{"corp", "shop/entra"}, refs); diff != "" {
		t.Errorf("Issuers() refs mismatch (-want +got):\n%s", diff)
	}
}

func TestPathMatcher(t *testing.T) {
	m := newPathMatcher([]string{"/a/b/*", "/a/*", "/c/d/*", "/exact", "*.json", "*s.json", "*.tar.gz"})
	tests := map[string]bool{
		"/a/":        true,
		"/a/x":       true,
		"/a":         false,
		"/b/x":       false,
		"/c/d/e":     true,
		"/c/e":       false,
		"/exact":     true,
		"/exact/":    false,
		"/x/y.json":  true,
		"/x/ys.json": true,
		"/x.gz":      false,
		"/x.tar.gz":  true,
		"":           false,
		"/c/d":       false,
		"/bb":        false,
	}
	for path, want := range tests {
		if got := m.match(path); got != want {
			t.Errorf("match(%q) = %v, want %v", path, got, want)
		}
	}
}

func TestIssuerConfigs(t *testing.T) {
	set := mustCompile(t, `
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: entra, namespace: shop}
spec:
  azureAD:
    tenantID: organizations
    cloud: AzureUSGovernment
    authorityHost: http://127.0.0.1:8400
    audiences: [api://orders]
    acceptedVersions: [2]
    allowedTenants: ["*"]
  algorithms: [RS256, PS256]
  clockSkew: 30s
  forwardClaims: {oid: X-Caller-Oid}
`, clusterIssuerYAML)
	want := []tokencheck.IssuerConfig{
		{Ref: "corp", OIDC: &tokencheck.OIDCConfig{Issuer: "https://idp.example.com", Audiences: []string{"orders"}}},
		{Ref: "shop/entra", Namespace: "shop", ClockSkew: 30 * time.Second, Algorithms: []string{"RS256", "PS256"}, AzureAD: &tokencheck.AzureADConfig{
			TenantID: "organizations", Cloud: tokencheck.AzureUSGovernment, AuthorityHost: "http://127.0.0.1:8400",
			Audiences: []string{"api://orders"}, AcceptedVersions: []int{2}, AllowedTenants: []string{"*"},
		}},
	}
	got := set.IssuerConfigs()
	if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("IssuerConfigs() mismatch (-want +got):\n%s", diff)
	}
	for _, ic := range got {
		if err := ic.Validate(); err != nil {
			t.Errorf("IssuerConfig %s: Validate() = %v, want nil", ic.Ref, err)
		}
	}
}

func TestCELCostLimit(t *testing.T) {
	// Quadratic over a 300-element list: past the cost limit.
	set := mustCompile(t, policy("p", `  rules: [{when: {expression: "claims.big.all(x, claims.big.all(y, x != y || x == y))"}}]`))
	big := make([]any, 300)
	for i := range big {
		big[i] = float64(i)
	}
	in := req(func(in *Input) { in.Claims = claims(func(c *tokencheck.Claims) { c.Raw = map[string]any{"big": big} }) })
	// The expression is true; only the cost limit can make it fail.
	d := Evaluate(set, in)
	if d.Reason != ReasonExpressionError || d.Allowed() {
		t.Errorf("Evaluate() = %+v, want denied with %s", d, ReasonExpressionError)
	}
}

// TestLabelIndex covers both ways of finding the policies indexed by a
// label: by the index's keys and by the workload's labels.
func TestLabelIndex(t *testing.T) {
	var docs []string
	for i := range 5 {
		docs = append(docs, policy(fmt.Sprintf("p%d", i), fmt.Sprintf("  selector: {matchLabels: {key%d: v}}\n  rules: [{}]", i)))
	}
	set := mustCompile(t, docs...)
	for _, labels := range []map[string]string{
		{"key3": "v"}, // fewer labels than index keys
		{"key3": "v", "a": "1", "b": "2", "c": "3", "d": "4", "e": "5"}, // more
	} {
		got := Evaluate(set, req(func(in *Input) { in.Workload = Workload{Namespace: "shop", Labels: labels} }))
		if want := allowed("shop/p3", 0); got != want {
			t.Errorf("Evaluate(labels %v) = %+v, want %+v", labels, got, want)
		}
	}
}

func TestNilSetAccessors(t *testing.T) {
	var s *Set
	if s.Policies() != 0 || s.Rules() != 0 || s.Issuers() != nil || s.IssuerRefs() != nil ||
		s.IssuerConfigs() != nil || s.Summaries() != nil || s.Selects("a/b", ordersPod) ||
		s.Capture(ordersPod).Selected {
		t.Errorf("nil Set accessors report content, want none")
	}
}
