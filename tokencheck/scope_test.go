package tokencheck

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
)

// TestValidateForScopesNamespacedIssuers: an issuer of one namespace is
// not trusted for the workloads of another, cannot shadow the issuer of
// the workload's namespace that accepts the same iss, and the token cache
// never hands one namespace the answer of another's issuer (review 5,
// finding 1). Steps run in order, sharing the cache.
func TestValidateForScopesNamespacedIssuers(t *testing.T) {
	ti := newTestIDP(t, tenantA, tenantB)
	scoped := func(ref, ns, tenant string) IssuerConfig {
		ic := ti.azure(ref, tenant)
		ic.Namespace = ns
		return ic
	}
	v := newValidator(t, testConfig(&clock{}),
		// "evil/mine" sorts before "shop/entra" and accepts the same tokens.
		scoped("evil/mine", "evil", tenantA),
		scoped("shop/entra", "shop", tenantA),
		// "aa/b" sorts before "corp" and accepts the same tokens.
		scoped("aa/b", "aa", tenantB),
		scoped("corp", "", tenantB),
	)
	tokA := ti.mint(t, idp.TokenRequest{Tenant: tenantA})
	tokB := ti.mint(t, idp.TokenRequest{Tenant: tenantB})
	tokB2 := ti.mint(t, idp.TokenRequest{Tenant: tenantB, Subject: "another"})
	type result struct {
		Ref    string
		Reason Reason
	}
	for _, step := range []struct {
		name      string
		tok       string
		namespace string
		want      result
	}{
		{"own namespace's issuer, not the first sorted", tokA, "shop", result{Ref: "shop/entra"}},
		{"other namespace: its own issuer, not the cached answer", tokA, "evil", result{Ref: "evil/mine"}},
		{"back in shop: not evil's cached answer", tokA, "shop", result{Ref: "shop/entra"}},
		{"shop again, from the cache", tokA, "shop", result{Ref: "shop/entra"}},
		{"namespace without an issuer for iss", tokA, "other", result{Reason: ReasonWrongIssuer}},
		{"namespace without an issuer, cached", tokA, "other", result{Reason: ReasonWrongIssuer}},
		{"cluster issuer in every namespace", tokB, "other", result{Ref: "corp"}},
		// Whichever namespace validates it first, a token a ClusterIssuer
		// accepts is attributed to it: the cached answer is the same.
		{"cluster issuer before the namespace's own", tokB2, "aa", result{Ref: "corp"}},
		{"cluster issuer, cached from another namespace", tokB, "aa", result{Ref: "corp"}},
	} {
		c, r, err := v.ValidateFor(ctxT(t), step.tok, step.namespace)
		var got result
		if c != nil {
			got.Ref = c.IssuerRef
		}
		got.Reason = r
		if (err != nil) != (r != ReasonNone) {
			t.Errorf("%s: reason %q with error %v", step.name, r, err)
		}
		if diff := cmp.Diff(step.want, got); diff != "" {
			t.Errorf("%s: ValidateFor(%s) (-want +got):\n%s", step.name, step.namespace, diff)
		}
	}
	// Validate, for tools, still sees every issuer.
	if c, _, err := v.Validate(ctxT(t), tokA); err != nil || (c.IssuerRef != "shop/entra" && c.IssuerRef != "evil/mine") {
		t.Errorf("Validate: got %v, %v, want the token accepted by shop/entra or evil/mine", c, err)
	}
}

// TestValidateForCachedDoesNotAllocate holds the cached path's promise for
// the scoped validation the agent uses.
func TestValidateForCachedDoesNotAllocate(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	ic := ti.azure("shop/entra", tenantA)
	ic.Namespace = "shop"
	v := newValidator(t, testConfig(&clock{}), ic)
	tok := ti.mint(t, idp.TokenRequest{})
	ctx := ctxT(t)
	if _, _, err := v.ValidateFor(ctx, tok, "shop"); err != nil {
		t.Fatal(err)
	}
	var err error
	allocs := testing.AllocsPerRun(100, func() { _, _, err = v.ValidateFor(ctx, tok, "shop") })
	if err != nil {
		t.Fatal(err)
	}
	if allocs != 0 {
		t.Errorf("cached ValidateFor allocates %.1f times per call, want 0", allocs)
	}
}
