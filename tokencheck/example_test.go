package tokencheck_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"time"

	"github.com/portcullis-mesh/portcullis/tokencheck"
	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
)

// A Validator trusting one Entra ID tenant for the workloads of namespace
// shop, whose discovery documents and keys are served by a local devidp:
// AuthorityHost changes where keys come from, not which iss is accepted.
func ExampleValidator() {
	const tenant = "72f988bf-0000-4000-8000-000000000001"
	p, _ := idp.New(idp.Options{Tenants: []string{tenant}})
	srv := httptest.NewServer(nil)
	defer srv.Close()
	srv.Config.Handler = p.Handler(srv.URL)

	v, err := tokencheck.New(tokencheck.Config{}, []tokencheck.IssuerConfig{{
		Ref:       "shop/entra",
		Namespace: "shop",
		AzureAD: &tokencheck.AzureADConfig{
			TenantID:      tenant,
			AuthorityHost: srv.URL,
			Audiences:     []string{"api://orders"},
		},
	}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer v.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = v.WaitReady(ctx)

	tok, _ := p.Mint(idp.TokenRequest{Audience: "api://orders", Roles: []string{"Orders.Read"}})
	claims, reason, err := v.ValidateFor(ctx, tok, "shop")
	fmt.Println(claims.IssuerRef, claims.Issuer, claims.Roles, reason == tokencheck.ReasonNone, err)

	other, _ := p.Mint(idp.TokenRequest{Audience: "api://payments"})
	_, reason, _ = v.ValidateFor(ctx, other, "shop")
	fmt.Println(reason)

	// The Issuer of namespace shop vouches for no other namespace.
	_, reason, _ = v.ValidateFor(ctx, tok, "web")
	fmt.Println(reason)
	// Output:
	// shop/entra https://login.microsoftonline.com/72f988bf-0000-4000-8000-000000000001/v2.0 [Orders.Read] true <nil>
	// wrong_audience
	// wrong_issuer
}
