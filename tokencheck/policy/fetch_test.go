package policy

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestRestrictNamespacedIssuers: with the option, only a ClusterIssuer may
// choose where the agent fetches keys from (review 5, finding 1, SSRF).
func TestRestrictNamespacedIssuers(t *testing.T) {
	const issuer = "apiVersion: portcullis.dev/v1alpha1\nkind: Issuer\nmetadata: {name: i, namespace: shop}\nspec:\n"
	const cluster = "apiVersion: portcullis.dev/v1alpha1\nkind: ClusterIssuer\nmetadata: {name: c}\nspec:\n"
	const tenant = "11111111-2222-3333-4444-555555555555"
	authority := "  azureAD: {tenantID: " + tenant + ", authorityHost: https://attacker.example, audiences: [a]}\n"
	jwks := "  oidc: {issuer: https://idp.example.com, jwksURI: https://attacker.example/keys, audiences: [a]}\n"
	loopback := "  oidc: {issuer: http://127.0.0.1:10255/x, audiences: [a]}\n"
	plain := "  azureAD: {tenantID: " + tenant + ", audiences: [a]}\n"
	for _, tc := range []struct {
		name     string
		doc      string
		restrict bool
		want     []string // fields with problems
	}{
		{"authorityHost on an Issuer", issuer + authority, true, []string{"spec.azureAD.authorityHost"}},
		{"jwksURI on an Issuer", issuer + jwks, true, []string{"spec.oidc.jwksURI"}},
		{"http issuer on an Issuer", issuer + loopback, true, []string{"spec.oidc.issuer"}},
		{"plain Issuer", issuer + plain, true, nil},
		{"authorityHost on a ClusterIssuer", cluster + authority, true, nil},
		{"jwksURI on a ClusterIssuer", cluster + jwks, true, nil},
		{"http issuer on a ClusterIssuer", cluster + loopback, true, nil},
		{"without the option", issuer + authority, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := Load("p.yaml", []byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			_, err = CompileWithOptions(objs, Options{RestrictNamespacedIssuers: tc.restrict})
			var got []string
			var perr *Error
			if errors.As(err, &perr) {
				for _, p := range perr.Problems {
					got = append(got, p.Field)
				}
			} else if err != nil {
				t.Fatalf("CompileWithOptions: got %v, want nil or an *Error", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("fields with problems (-want +got):\n%s", diff)
			}
		})
	}
}
