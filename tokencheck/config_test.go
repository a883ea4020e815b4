package tokencheck

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestIssuerConfigValidate(t *testing.T) {
	const guid = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	az := func(f func(*AzureADConfig)) IssuerConfig {
		a := &AzureADConfig{TenantID: guid, Audiences: []string{"api://orders"}}
		f(a)
		return IssuerConfig{Ref: "ns/entra", AzureAD: a}
	}
	tests := []struct {
		name    string
		ic      IssuerConfig
		wantErr string // substring; empty means valid
	}{
		{"minimal azure", az(func(*AzureADConfig) {}), ""},
		{"uppercase tenant", az(func(a *AzureADConfig) { a.TenantID = strings.ToUpper(guid) }), ""},
		{"loopback authority", az(func(a *AzureADConfig) { a.AuthorityHost = "http://127.0.0.1:8400" }), ""},
		{"multi-tenant", az(func(a *AzureADConfig) { a.TenantID = "organizations"; a.AllowedTenants = []string{guid} }), ""},
		{"any tenant", az(func(a *AzureADConfig) { a.TenantID = "common"; a.AllowedTenants = []string{"*"} }), ""},
		{"oidc", IssuerConfig{Ref: "x", OIDC: &OIDCConfig{Issuer: "https://issuer.example", Audiences: []string{"a"}}}, ""},
		{"no ref", IssuerConfig{AzureAD: &AzureADConfig{}}, "ref: must not be empty"},
		{"neither", IssuerConfig{Ref: "x"}, "issuer x: one of azureAD and oidc is required"},
		{"both", IssuerConfig{Ref: "x", AzureAD: &AzureADConfig{}, OIDC: &OIDCConfig{}}, "mutually exclusive"},
		{"negative skew", IssuerConfig{Ref: "x", ClockSkew: -time.Second, OIDC: &OIDCConfig{}}, "clockSkew -1s: must not be negative"},
		{"HS256", IssuerConfig{Ref: "x", Algorithms: []string{"HS256"}, OIDC: &OIDCConfig{}}, `algorithms: "HS256" not supported`},
		{"none", IssuerConfig{Ref: "x", Algorithms: []string{"none"}, OIDC: &OIDCConfig{}}, `algorithms: "none" not supported`},
		{"no tenant", az(func(a *AzureADConfig) { a.TenantID = "" }), "azureAD: tenantID: must not be empty"},
		{"bad tenant", az(func(a *AzureADConfig) { a.TenantID = "contoso.com" }), `tenantID "contoso.com": want a GUID`},
		{"multi-tenant without allow-list", az(func(a *AzureADConfig) { a.TenantID = "organizations" }), "allowedTenants: required"},
		{"allow-list on a single tenant", az(func(a *AzureADConfig) { a.AllowedTenants = []string{guid} }), "allowedTenants: only valid with"},
		{"bad allowed tenant", az(func(a *AzureADConfig) { a.TenantID = "common"; a.AllowedTenants = []string{"x"} }), `allowedTenants: "x" is not a tenant GUID`},
		{"no audiences", az(func(a *AzureADConfig) { a.Audiences = nil }), "audiences: at least one is required"},
		{"empty audience", az(func(a *AzureADConfig) { a.Audiences = []string{""} }), "audiences: empty value"},
		{"bad version", az(func(a *AzureADConfig) { a.AcceptedVersions = []int{3} }), "acceptedVersions: 3 is not 1 or 2"},
		{"bad cloud", az(func(a *AzureADConfig) { a.Cloud = "Mars" }), `cloud "Mars"`},
		{"http authority off loopback", az(func(a *AzureADConfig) { a.AuthorityHost = "http://10.0.0.1" }), "http is only allowed on loopback"},
		{"authority with path", az(func(a *AzureADConfig) { a.AuthorityHost = "https://login.example/tenant" }), "want scheme://host[:port] only"},
		{"authority with user", az(func(a *AzureADConfig) { a.AuthorityHost = "https://u:p@login.example" }), "without user info"},
		{"ftp authority", az(func(a *AzureADConfig) { a.AuthorityHost = "ftp://login.example" }), "scheme must be https"},
		{"oidc without issuer", IssuerConfig{Ref: "x", OIDC: &OIDCConfig{Audiences: []string{"a"}}}, "oidc: issuer: must not be empty"},
		{"oidc http issuer", IssuerConfig{Ref: "x", OIDC: &OIDCConfig{Issuer: "http://issuer.example", Audiences: []string{"a"}}}, "http is only allowed on loopback"},
		{"oidc bad jwks", IssuerConfig{Ref: "x", OIDC: &OIDCConfig{Issuer: "https://i.example", JWKSURI: "keys.json", Audiences: []string{"a"}}}, "jwksURI:"},
		{"oidc template", IssuerConfig{Ref: "x", OIDC: &OIDCConfig{Issuer: "https://i.example/{tenantid}", Audiences: []string{"a"}}}, "templates are only supported for azureAD"},
		{"oidc no audiences", IssuerConfig{Ref: "x", OIDC: &OIDCConfig{Issuer: "https://i.example"}}, "oidc: audiences: at least one is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.ic.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate: got %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Validate: got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestAzureSources(t *testing.T) {
	tests := []struct {
		name        string
		a           AzureADConfig
		wantSources []sourceSpec
		wantRefused []string
	}{
		{
			name: "public single tenant, both versions",
			a:    AzureADConfig{TenantID: "72F988BF-86F1-41AF-91AB-2D7CD011DB47", Audiences: []string{"a"}},
			wantSources: []sourceSpec{
				{issuer: "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/", discoveryURL: "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/.well-known/openid-configuration", version: 1},
				{issuer: "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0", discoveryURL: "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0/.well-known/openid-configuration", version: 2},
			},
		},
		{
			name: "multi-tenant v2 only behind a loopback authority",
			a:    AzureADConfig{TenantID: "organizations", AuthorityHost: "http://127.0.0.1:8400/", AllowedTenants: []string{"*"}, AcceptedVersions: []int{2}, Audiences: []string{"a"}},
			wantSources: []sourceSpec{
				{issuer: "https://login.microsoftonline.com/{tenantid}/v2.0", discoveryURL: "http://127.0.0.1:8400/organizations/v2.0/.well-known/openid-configuration", version: 2,
					cloudAuthority: "https://login.microsoftonline.com", authority: "http://127.0.0.1:8400"},
			},
			wantRefused: []string{"https://sts.windows.net/{tenantid}/"},
		},
		{
			name: "China v1",
			a:    AzureADConfig{TenantID: "72f988bf-86f1-41af-91ab-2d7cd011db47", Cloud: AzureChina, AcceptedVersions: []int{1}, Audiences: []string{"a"}},
			wantSources: []sourceSpec{
				{issuer: "https://sts.chinacloudapi.cn/72f988bf-86f1-41af-91ab-2d7cd011db47/", discoveryURL: "https://login.chinacloudapi.cn/72f988bf-86f1-41af-91ab-2d7cd011db47/.well-known/openid-configuration", version: 1},
			},
			wantRefused: []string{"https://login.chinacloudapi.cn/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := IssuerConfig{Ref: "x", AzureAD: &tt.a}.normalize()
			noErr(t, err, "normalize")
			if diff := cmp.Diff(tt.wantSources, n.sources, cmp.AllowUnexported(sourceSpec{})); diff != "" {
				t.Errorf("sources (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantRefused, n.refused); diff != "" {
				t.Errorf("refused issuers (-want +got):\n%s", diff)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		name    string
		c       Config
		wantErr string
	}{
		{"zero", Config{}, ""},
		{"negative size", Config{MaxTokenSize: -1}, "maxTokenSize -1"},
		{"negative timeout", Config{FetchTimeout: -time.Second}, "fetchTimeout -1s"},
		{"min above max", Config{MinRefresh: 2 * time.Hour, MaxRefresh: time.Hour}, "minRefresh 2h0m0s exceeds maxRefresh 1h0m0s"},
		{"min above default max", Config{MinRefresh: 48 * time.Hour}, "exceeds maxRefresh 24h0m0s"},
		{"negative cache bytes", Config{CacheBytes: -1}, "cacheBytes -1"},
	} {
		err := tt.c.Validate()
		if (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: Validate: got %v, want error containing %q", tt.name, err, tt.wantErr)
		}
	}
}
