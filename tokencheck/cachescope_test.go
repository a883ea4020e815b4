package tokencheck

import (
	"testing"

	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
)

// TestCacheAfterIssuerAdded: a token cached as accepted by a namespace's
// Issuer is named after the ClusterIssuer added later for the same iss, as
// a fresh validation is (ClusterIssuers first), not after the Issuer until
// it expires (review 5b, finding 6).
func TestCacheAfterIssuerAdded(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	shop := ti.azure("shop/entra", tenantA)
	shop.Namespace = "shop"
	v := newValidator(t, testConfig(&clock{}), shop)
	cached := ti.mint(t, idp.TokenRequest{Tenant: tenantA})
	fresh := ti.mint(t, idp.TokenRequest{Tenant: tenantA, Subject: "other"})
	for range 2 { // the second answer comes from the cache
		if c, _, err := v.ValidateFor(ctxT(t), cached, "shop"); err != nil || c.IssuerRef != "shop/entra" {
			t.Fatalf("before the ClusterIssuer: got %v, %v; want shop/entra", c, err)
		}
	}
	if err := v.SetIssuers([]IssuerConfig{shop, ti.azure("corp", tenantA)}); err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"cached": cached, "fresh": fresh} {
		c, _, err := v.ValidateFor(ctxT(t), tok, "shop")
		if err != nil {
			t.Fatalf("%s token: %v", name, err)
		}
		if c.IssuerRef != "corp" {
			t.Errorf("%s token: got issuer %s, want corp", name, c.IssuerRef)
		}
	}
}
