package policy

import (
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestForwardClaimsReservedHeaders: a forwardClaims header may not frame
// the request, pose as the caller or carry credentials (review 5, finding
// 2); the problem names the field.
func TestForwardClaimsReservedHeaders(t *testing.T) {
	for _, tc := range []struct {
		header string
		want   string // message; "" when the name is accepted
	}{
		{"X-Claim-Oid", ""},
		{"X-Caller-Roles", ""},
		{"X-User", ""},
		{"X-Portcullis-Source", `header "X-Portcullis-Source" is reserved (reserved for the verifier's own headers): choose another name, such as X-Claim-Oid`},
		{"x-portcullis-anything", `header "x-portcullis-anything" is reserved (reserved for the verifier's own headers): choose another name, such as X-Claim-Oid`},
		{"X_Portcullis_Source", `header "X_Portcullis_Source" is reserved (reserved for the verifier's own headers): choose another name, such as X-Claim-Oid`},
		{"X-Forwarded-For", `header "X-Forwarded-For" is reserved (set by the verifier or proxies about the caller): choose another name, such as X-Claim-Oid`},
		{"x_forwarded_for", `header "x_forwarded_for" is reserved (set by the verifier or proxies about the caller): choose another name, such as X-Claim-Oid`},
		{"X-Forwarded-Proto", `header "X-Forwarded-Proto" is reserved (set by the verifier or proxies about the caller): choose another name, such as X-Claim-Oid`},
		{"Forwarded", `header "Forwarded" is reserved (set by the verifier about the caller): choose another name, such as X-Claim-Oid`},
		{"Transfer-Encoding", `header "Transfer-Encoding" is reserved (a message framing header): choose another name, such as X-Claim-Oid`},
		{"transfer-encoding", `header "transfer-encoding" is reserved (a message framing header): choose another name, such as X-Claim-Oid`},
		{"Content-Length", `header "Content-Length" is reserved (describes the request body): choose another name, such as X-Claim-Oid`},
		{"Content-Encoding", `header "Content-Encoding" is reserved (describes the request body): choose another name, such as X-Claim-Oid`},
		{"Host", `header "Host" is reserved (the request's target host): choose another name, such as X-Claim-Oid`},
		{"Connection", `header "Connection" is reserved (a hop-by-hop header): choose another name, such as X-Claim-Oid`},
		{"Upgrade", `header "Upgrade" is reserved (a hop-by-hop header): choose another name, such as X-Claim-Oid`},
		{"TE", `header "TE" is reserved (a hop-by-hop header): choose another name, such as X-Claim-Oid`},
		{"Trailer", `header "Trailer" is reserved (a hop-by-hop header): choose another name, such as X-Claim-Oid`},
		{"Keep-Alive", `header "Keep-Alive" is reserved (a hop-by-hop header): choose another name, such as X-Claim-Oid`},
		{"Proxy-Connection", `header "Proxy-Connection" is reserved (a hop-by-hop header): choose another name, such as X-Claim-Oid`},
		{"Proxy-Authorization", `header "Proxy-Authorization" is reserved (a credential header): choose another name, such as X-Claim-Oid`},
		{"Expect", `header "Expect" is reserved (a message framing header): choose another name, such as X-Claim-Oid`},
		{"Authorization", `header "Authorization" is reserved (a credential header): choose another name, such as X-Claim-Oid`},
		{"Cookie", `header "Cookie" is reserved (a credential header): choose another name, such as X-Claim-Oid`},
		{"X-Real-Ip", `header "X-Real-Ip" is reserved (read by applications as the caller's address): choose another name, such as X-Claim-Oid`},
		{"X-Original-URL", `header "X-Original-URL" is reserved (read by applications as the request's original target or caller): choose another name, such as X-Claim-Oid`},
		{"X-HTTP-Method-Override", `header "X-HTTP-Method-Override" is reserved (read by applications as the request's method): choose another name, such as X-Claim-Oid`},
		{"X-Cluster-Client-Ip", `header "X-Cluster-Client-Ip" is reserved (read by applications as the caller's address): choose another name, such as X-Claim-Oid`},
		{"Client-Ip", `header "Client-Ip" is reserved (read by applications as the caller's address): choose another name, such as X-Claim-Oid`},
		{"X_Claim_Oid", `header "X_Claim_Oid" has '_', which many servers drop or read as '-' (a client could then set the claim): use "X-Claim-Oid"`},
		{"X-Claim_oid", `header "X-Claim_oid" has '_', which many servers drop or read as '-' (a client could then set the claim): use "X-Claim-oid"`},
		{"grpc-encoding", `header "grpc-encoding" is reserved (gRPC framing and metadata): choose another name, such as X-Claim-Oid`},
	} {
		t.Run(tc.header, func(t *testing.T) {
			yaml := "apiVersion: portcullis.dev/v1alpha1\nkind: Issuer\nmetadata: {name: entra, namespace: shop}\nspec:\n" +
				"  azureAD: {tenantID: 11111111-2222-3333-4444-555555555555, audiences: [api://orders]}\n" +
				"  forwardClaims: {oid: \"" + tc.header + "\"}\n"
			objs, err := Load("p.yaml", []byte(yaml))
			if err != nil {
				t.Fatal(err)
			}
			_, err = Compile(objs)
			var got []Problem
			var perr *Error
			if errors.As(err, &perr) {
				got = perr.Problems
			} else if err != nil {
				t.Fatalf("Compile: got %v, want nil or an *Error", err)
			}
			var want []Problem
			if tc.want != "" {
				want = []Problem{{File: "p.yaml", Line: 6, Column: 19, Kind: "Issuer", Namespace: "shop", Name: "entra", Field: "spec.forwardClaims[oid]", Message: tc.want}}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
		})
	}
}

// TestUnderscoreRuleInCRD: the CRD refuses '_' in a forwardClaims header
// name, as the compiler does.
func TestUnderscoreRuleInCRD(t *testing.T) {
	src, err := os.ReadFile("apis/v1alpha1/issuer_types.go")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(src), `XValidation:rule="!self.contains('_')"`) {
		t.Error(`apis/v1alpha1/issuer_types.go: no XValidation rule "!self.contains('_')" on HeaderName`)
	}
}

func TestClaimHeaderSuffix(t *testing.T) {
	for claim, want := range map[string]string{"oid": "Oid", "preferred_username": "Preferred-Username", "x.y": "X-Y", "__": "Name"} {
		if got := claimHeaderSuffix(claim); got != want {
			t.Errorf("claimHeaderSuffix(%q): got %q, want %q", claim, got, want)
		}
	}
}

// TestReservedHeadersMatchCRD: the CRD rule on HeaderName (what the API
// server checks) lists the same names and prefixes as reservedHeader.
func TestReservedHeadersMatchCRD(t *testing.T) {
	src, err := os.ReadFile("apis/v1alpha1/issuer_types.go")
	if err != nil {
		t.Fatal(err)
	}
	var rule string
	for line := range strings.Lines(string(src)) {
		if strings.Contains(line, "XValidation") && strings.Contains(line, "'transfer-encoding'") {
			rule = line
		}
	}
	if rule == "" {
		t.Fatal("no XValidation rule listing 'transfer-encoding' in apis/v1alpha1/issuer_types.go")
	}
	got := map[string]bool{}
	for _, m := range regexp.MustCompile(`'([a-z0-9-]+)'`).FindAllStringSubmatch(rule, -1) {
		if m[1] != "-" { // the '_' → '-' replacement
			got[m[1]] = true
		}
	}
	want := map[string]bool{}
	for n := range reservedHeaders {
		want[n] = true
	}
	for _, p := range reservedPrefixes {
		want[p.prefix] = true
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("names in the CRD rule (-reservedHeaders +CRD):\n%s", diff)
	}
}
