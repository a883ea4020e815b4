package policy

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestDenyPathTrailingSlash: in a Deny rule a trailing '/' is not
// significant (routers serve "/admin/" as "/admin"), so a Deny cannot be
// stepped around with one; in an Allow rule it is, so an Allow never
// grants more than it names (review 5b, finding 5).
func TestDenyPathTrailingSlash(t *testing.T) {
	set := mustCompile(t, policy("deny-admin", `
  selector: {matchLabels: {app: orders}}
  action: Deny
  rules:
  - to: {paths: [/admin, /ops/, /internal/*, "*.bak", /]}
`), policy("allow", `
  selector: {matchLabels: {app: orders}}
  rules:
  - to: {paths: [/healthz, /api/*]}
`))
	for path, want := range map[string]Decision{
		"/admin":       denied("shop/deny-admin", 0),
		"/admin/":      denied("shop/deny-admin", 0),
		"/ops/":        denied("shop/deny-admin", 0),
		"/ops":         denied("shop/deny-admin", 0),
		"/internal":    denied("shop/deny-admin", 0),
		"/internal/":   denied("shop/deny-admin", 0),
		"/internal/x":  denied("shop/deny-admin", 0),
		"/x.bak":       denied("shop/deny-admin", 0),
		"/x.bak/":      denied("shop/deny-admin", 0),
		"/":            denied("shop/deny-admin", 0),
		"/admin/x":     noMatch, // exact stays exact
		"/adminx":      noMatch,
		"/opsx":        noMatch,
		"/internalx":   noMatch,
		"/healthz":     allowed("shop/allow", 0),
		"/healthz/":    noMatch, // Allow rules are not widened
		"/api":         noMatch,
		"/api/x":       allowed("shop/allow", 0),
		"/api/x.bak":   denied("shop/deny-admin", 0),
		"/api/x.bak/":  denied("shop/deny-admin", 0),
		"/api/x.bakup": allowed("shop/allow", 0),
	} {
		t.Run(path, func(t *testing.T) {
			got := Evaluate(set, req(func(in *Input) { in.Path = path }))
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Evaluate(%q) (-want +got):\n%s", path, diff)
			}
		})
	}
}
