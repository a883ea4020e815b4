package tokencheck

import (
	"encoding/base64"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
)

func TestDecodeUnverifiedReadsAsValidateDoes(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	v := newValidator(t, testConfig(&clock{}), ti.azure("entra", tenantA))
	raw := ti.mint(t, idp.TokenRequest{Tenant: tenantA, Roles: []string{"Orders.Read"}})
	want, reason, err := v.Validate(ctxT(t), raw)
	if err != nil {
		t.Fatalf("Validate: %s: %v", reason, err)
	}
	hdr, payload, err := DecodeUnverified(raw)
	if err != nil {
		t.Fatalf("DecodeUnverified: %v", err)
	}
	if hdr["alg"] != "RS256" || hdr["kid"] == "" {
		t.Errorf("header %v: want alg RS256 and a kid", hdr)
	}
	got, err := ClaimsFromMap(payload)
	if err != nil {
		t.Fatalf("ClaimsFromMap: %v", err)
	}
	got.IssuerRef, got.KeyID = want.IssuerRef, want.KeyID // known only to Validate
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("claims decoded unverified differ from Validate's (-want +got):\n%s", diff)
	}
}

func TestDecodeUnverifiedIsStrict(t *testing.T) {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	hdr := enc(`{"alg":"RS256","kid":"k"}`)
	for _, tt := range []struct{ name, raw string }{
		{"two parts", hdr + "." + enc(`{}`)},
		{"duplicate claim", hdr + "." + enc(`{"roles":["a"],"roles":["Admin"]}`) + ".c2ln"},
		{"invalid UTF-8", hdr + "." + enc("{\"sub\":\"\xff\"}") + ".c2ln"},
		{"padding", hdr + "." + enc(`{"a":1}`) + "=.c2ln"},
		{"standard alphabet", hdr + "." + base64.RawStdEncoding.EncodeToString([]byte(`{"a":"??>"}`)) + ".c2ln"},
		{"payload not an object", hdr + "." + enc(`["a"]`) + ".c2ln"},
		{"line break", hdr + "\n." + enc(`{}`) + ".c2ln"},
	} {
		if _, _, err := DecodeUnverified(tt.raw); err == nil {
			t.Errorf("%s: DecodeUnverified(%q) = nil error, want one", tt.name, tt.raw)
		}
	}
}
