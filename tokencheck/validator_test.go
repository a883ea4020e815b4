package tokencheck

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
)

func TestValidateAcceptsV1AndV2(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	v := newValidator(t, testConfig(&clock{}), ti.azure("orders/entra", tenantA))
	iat := time.Now().Truncate(time.Second)

	tests := []struct {
		name string
		req  idp.TokenRequest
		want Claims
	}{
		{
			name: "v2 user",
			req: idp.TokenRequest{Version: 2, Audience: audID, UPN: "ada@example.com", Scopes: []string{"Orders.Read", "Orders.Write"},
				Roles: []string{"Orders.Admin"}, Groups: []string{"g1", "g2"}, WIDs: []string{"w1"}, ClientID: "cli-2", ObjectID: "oid-ada", Subject: "sub-ada"},
			want: Claims{Issuer: idp.Issuer(2, tenantA), IssuerRef: "orders/entra", Version: "2.0", Subject: "sub-ada", ObjectID: "oid-ada", TenantID: tenantA,
				ClientID: "cli-2", IDType: "user", Audience: []string{audID}, Roles: []string{"Orders.Admin"}, Groups: []string{"g1", "g2"},
				Scopes: []string{"Orders.Read", "Orders.Write"}, WIDs: []string{"w1"}, PreferredUsername: "ada@example.com"},
		},
		{
			name: "v1 user",
			req:  idp.TokenRequest{Version: 1, UPN: "bob@example.com", ClientID: "cli-1", ObjectID: "oid-bob", Subject: "sub-bob"},
			want: Claims{Issuer: idp.Issuer(1, tenantA), IssuerRef: "orders/entra", Version: "1.0", Subject: "sub-bob", ObjectID: "oid-bob", TenantID: tenantA,
				ClientID: "cli-1", IDType: "user", Audience: []string{audURI}, Scopes: []string{"user_impersonation"}, UPN: "bob@example.com"},
		},
		{
			name: "v2 app",
			req:  idp.TokenRequest{Version: 2, App: true, ClientID: "daemon", ObjectID: "sp-1", Roles: []string{"Orders.Sync"}},
			want: Claims{Issuer: idp.Issuer(2, tenantA), IssuerRef: "orders/entra", Version: "2.0", Subject: "sp-1", ObjectID: "sp-1", TenantID: tenantA,
				ClientID: "daemon", IDType: "app", Audience: []string{audURI}, Roles: []string{"Orders.Sync"}},
		},
		{
			name: "v1 app without idtyp",
			req:  idp.TokenRequest{Version: 1, App: true, ClientID: "daemon", ObjectID: "sp-1", Claims: map[string]any{"idtyp": nil}},
			want: Claims{Issuer: idp.Issuer(1, tenantA), IssuerRef: "orders/entra", Version: "1.0", Subject: "sp-1", ObjectID: "sp-1", TenantID: tenantA,
				ClientID: "daemon", IDType: "app", Audience: []string{audURI}},
		},
		{
			name: "group overage",
			req:  idp.TokenRequest{Version: 2, GroupOverage: true, ObjectID: "o", Subject: "s", UPN: "u@example.com"},
			want: Claims{Issuer: idp.Issuer(2, tenantA), IssuerRef: "orders/entra", Version: "2.0", Subject: "s", ObjectID: "o", TenantID: tenantA,
				ClientID: idp.DefaultClientID, IDType: "user", Audience: []string{audURI}, Scopes: []string{"user_impersonation"},
				GroupOverage: true, PreferredUsername: "u@example.com"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.req.IssuedAt = iat
			tok := ti.mint(t, tt.req)
			got, r, err := v.Validate(ctxT(t), tok)
			if err != nil || r != ReasonNone {
				t.Fatalf("Validate: reason %q, error %v; want accepted", r, err)
			}
			tt.want.IssuedAt, tt.want.NotBefore, tt.want.ExpiresAt = iat, iat, iat.Add(time.Hour)
			tt.want.KeyID = ti.KeyIDs()[0]
			if diff := cmp.Diff(tt.want, *got, cmpopts.IgnoreFields(Claims{}, "Raw"), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("claims (-want +got):\n%s", diff)
			}
			if got.Raw["tid"] != tenantA {
				t.Errorf("Raw[tid] = %v, want %s", got.Raw["tid"], tenantA)
			}
			// explain reads claims with ClaimsFromMap: it must agree with
			// Validate on everything but what the issuer and key add.
			fromMap, err := ClaimsFromMap(got.Raw)
			noErr(t, err, "ClaimsFromMap(Raw)")
			fromMap.IssuerRef, fromMap.KeyID = got.IssuerRef, got.KeyID
			if diff := cmp.Diff(got, fromMap); diff != "" {
				t.Errorf("ClaimsFromMap(Raw) disagrees with Validate (-Validate +ClaimsFromMap):\n%s", diff)
			}
			again, r, err := v.Validate(ctxT(t), tok)
			if err != nil || again != got {
				t.Errorf("second Validate: got %p (%q, %v), want the cached %p", again, r, err, got)
			}
		})
	}
}

// tamper re-encodes one part of a token (0 header, 1 payload) through f,
// keeping the other parts.
func tamper(t *testing.T, tok string, part int, f func(m map[string]any)) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[part])
	noErr(t, err, "decode part")
	var m map[string]any
	noErr(t, json.Unmarshal(b, &m), "unmarshal part")
	f(m)
	b, err = json.Marshal(m)
	noErr(t, err, "marshal part")
	parts[part] = base64.RawURLEncoding.EncodeToString(b)
	return strings.Join(parts, ".")
}

func TestValidateRefusals(t *testing.T) {
	ti := newTestIDP(t, tenantA, tenantB)
	c := &clock{}
	v2only := ti.azure("v2only", tenantB)
	v2only.AzureAD.AcceptedVersions = []int{2}
	v := newValidator(t, testConfig(c), ti.azure("a", tenantA), v2only)
	now := time.Now()
	good := ti.mint(t, idp.TokenRequest{})
	hdr := func(h map[string]any) string { return ti.mint(t, idp.TokenRequest{Header: h}) }
	claims := func(cl map[string]any) string { return ti.mint(t, idp.TokenRequest{Claims: cl}) }
	other := ti.mint(t, idp.TokenRequest{UPN: "x@example.com"})

	tests := []struct {
		name  string
		token string
		want  Reason
	}{
		{"empty", "", ReasonMissingToken},
		{"too large", strings.Repeat("a", DefaultMaxTokenSize+1), ReasonTokenTooLarge},
		{"one part", "abc", ReasonMalformed},
		{"two parts", "abc.def", ReasonMalformed},
		{"four parts", good + ".x", ReasonMalformed},
		{"empty signature", good[:strings.LastIndexByte(good, '.')+1], ReasonMalformed},
		{"padding", good + "=", ReasonMalformed},
		{"standard alphabet", strings.Replace(good, good[len(good)-4:], "ab+/", 1), ReasonMalformed},
		{"newline inside", good[:10] + "\n" + good[10:], ReasonMalformed},
		{"header not JSON", base64.RawURLEncoding.EncodeToString([]byte("nope")) + good[strings.IndexByte(good, '.'):], ReasonMalformed},
		{"payload array", strings.Join([]string{strings.Split(good, ".")[0], base64.RawURLEncoding.EncodeToString([]byte("[1]")), strings.Split(good, ".")[2]}, "."), ReasonMalformed},
		{"no kid", hdr(map[string]any{"kid": nil}), ReasonMalformed},
		{"exp as string", claims(map[string]any{"exp": "tomorrow"}), ReasonMalformed},
		{"no exp", claims(map[string]any{"exp": nil}), ReasonMalformed},
		{"roles not strings", claims(map[string]any{"roles": []any{1, 2}}), ReasonMalformed},
		{"alg none", hdr(map[string]any{"alg": "none"}), ReasonAlgNotAllowed},
		{"alg HS256", hdr(map[string]any{"alg": "HS256"}), ReasonAlgNotAllowed},
		{"alg RS384 not on allow-list", hdr(map[string]any{"alg": "RS384"}), ReasonAlgNotAllowed},
		{"crit", hdr(map[string]any{"crit": []string{"exp"}, "exp": 1}), ReasonCritUnsupported},
		{"b64 false", hdr(map[string]any{"b64": false}), ReasonCritUnsupported},
		{"jku", hdr(map[string]any{"jku": "https://evil.example/keys"}), ReasonEmbeddedKey},
		{"jwk", hdr(map[string]any{"jwk": map[string]any{"kty": "RSA"}}), ReasonEmbeddedKey},
		{"x5u", hdr(map[string]any{"x5u": "https://evil.example/cert"}), ReasonEmbeddedKey},
		{"x5c", hdr(map[string]any{"x5c": []string{"MIIB"}}), ReasonEmbeddedKey},
		{"graph nonce", hdr(map[string]any{"nonce": "abc"}), ReasonGraphToken},
		{"unknown kid", hdr(map[string]any{"kid": "made-up"}), ReasonUnknownKID},
		{"payload changed", tamper(t, good, 1, func(m map[string]any) { m["roles"] = []string{"Admin"} }), ReasonBadSignature},
		{"header changed", tamper(t, good, 0, func(m map[string]any) { m["typ"] = "at+jwt" }), ReasonBadSignature},
		{"signature of another token", good[:strings.LastIndexByte(good, '.')] + other[strings.LastIndexByte(other, '.'):], ReasonBadSignature},
		{"expired", ti.mint(t, idp.TokenRequest{IssuedAt: now.Add(-2 * time.Hour)}), ReasonExpired},
		{"expired beyond skew", claims(map[string]any{"exp": now.Add(-61 * time.Second).Unix()}), ReasonExpired},
		{"nbf in the future", claims(map[string]any{"nbf": now.Add(5 * time.Minute).Unix()}), ReasonNotYetValid},
		{"iat in the future", claims(map[string]any{"iat": now.Add(5 * time.Minute).Unix()}), ReasonNotYetValid},
		{"v1 token for a v2-only issuer", ti.mint(t, idp.TokenRequest{Tenant: tenantB, Version: 1}), ReasonVersionNotAccepted},
		{"untrusted issuer", claims(map[string]any{"iss": idp.Issuer(2, tenantC)}), ReasonWrongIssuer},
		{"issuer host of the authority", claims(map[string]any{"iss": ti.srv.URL + "/" + tenantA + "/v2.0"}), ReasonWrongIssuer},
		{"no iss", claims(map[string]any{"iss": nil}), ReasonWrongIssuer},
		{"tid disagrees with iss", claims(map[string]any{"tid": tenantB}), ReasonWrongIssuer},
		{"ver disagrees with iss", claims(map[string]any{"ver": "1.0"}), ReasonWrongIssuer},
		{"ID token", claims(map[string]any{"azp": nil, "aud": audID, "nonce": "n", "scp": nil}), ReasonNotAccessToken},
		{"wrong audience", ti.mint(t, idp.TokenRequest{Audience: "api://payments"}), ReasonWrongAudience},
		{"no audience", claims(map[string]any{"aud": nil}), ReasonWrongAudience},
		{"audience list without ours", claims(map[string]any{"aud": []string{"api://a", "api://b"}}), ReasonWrongAudience},
	}
	sentinel := map[Reason]error{
		ReasonMissingToken: ErrMissingToken, ReasonTokenTooLarge: ErrTokenTooLarge, ReasonMalformed: ErrMalformed,
		ReasonAlgNotAllowed: ErrAlgNotAllowed, ReasonCritUnsupported: ErrCritUnsupported, ReasonEmbeddedKey: ErrEmbeddedKey,
		ReasonGraphToken: ErrGraphToken, ReasonUnknownKID: ErrUnknownKID, ReasonBadSignature: ErrBadSignature,
		ReasonExpired: ErrExpired, ReasonNotYetValid: ErrNotYetValid, ReasonWrongIssuer: ErrWrongIssuer,
		ReasonWrongAudience: ErrWrongAudience, ReasonVersionNotAccepted: ErrVersionNotAccepted,
		ReasonNotAccessToken: ErrNotAccessToken,
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, r, err := v.Validate(ctxT(t), tt.token)
			if r != tt.want || got != nil {
				t.Fatalf("Validate: got reason %q, claims %v, error %v; want reason %q", r, got != nil, err, tt.want)
			}
			if !errors.Is(err, sentinel[tt.want]) {
				t.Errorf("error %v: errors.Is(%v) = false", err, sentinel[tt.want])
			}
			if tt.token != "" && len(tt.token) > 40 && strings.Contains(err.Error(), tt.token[len(tt.token)-40:]) {
				t.Errorf("error %q echoes the token", err)
			}
		})
	}
	if _, r, err := v.Validate(ctxT(t), good); err != nil {
		t.Errorf("good token after refusals: reason %q, error %v", r, err)
	}
}

func TestValidateAcceptsWithinSkew(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	v := newValidator(t, testConfig(&clock{}), ti.azure("a", tenantA))
	now := time.Now()
	for name, cl := range map[string]map[string]any{
		"exp 30s ago": {"exp": now.Add(-30 * time.Second).Unix()},
		"nbf in 30s":  {"nbf": now.Add(30 * time.Second).Unix()},
		"aud list":    {"aud": []string{"api://other", audURI}},
	} {
		tok := ti.mint(t, idp.TokenRequest{Claims: cl})
		if _, r, err := v.Validate(ctxT(t), tok); err != nil {
			t.Errorf("%s: reason %q, error %v; want accepted", name, r, err)
		}
	}
}

func TestMultiTenant(t *testing.T) {
	ti := newTestIDP(t, tenantA, tenantB, tenantC)
	orgs := ti.azure("multi", TenantOrganizations)
	orgs.AzureAD.AllowedTenants = []string{tenantA, strings.ToUpper(tenantB)}
	anyT := ti.azure("any", TenantCommon)
	anyT.AzureAD.AllowedTenants = []string{AnyTenant}
	anyT.AzureAD.Audiences = []string{"api://any"}
	v := newValidator(t, testConfig(&clock{}), orgs, anyT)

	tests := []struct {
		name    string
		req     idp.TokenRequest
		want    Reason
		wantRef string
	}{
		{"allowed tenant v2", idp.TokenRequest{Tenant: tenantA}, ReasonNone, "multi"},
		{"allowed tenant v1", idp.TokenRequest{Tenant: tenantB, Version: 1}, ReasonNone, "multi"},
		{"tenant not allowed", idp.TokenRequest{Tenant: tenantC}, ReasonTenantNotAllowed, ""},
		{"tid disagrees with iss", idp.TokenRequest{Tenant: tenantC, Claims: map[string]any{"tid": tenantA}}, ReasonWrongIssuer, ""},
		{"iss not a GUID tenant", idp.TokenRequest{Tenant: tenantA, Claims: map[string]any{"iss": "https://login.microsoftonline.com/evil/v2.0", "tid": "evil"}}, ReasonWrongIssuer, ""},
		{"any tenant", idp.TokenRequest{Tenant: tenantC, Audience: "api://any"}, ReasonNone, "any"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, r, _ := v.Validate(ctxT(t), ti.mint(t, tt.req))
			if r != tt.want {
				t.Fatalf("reason: got %q, want %q", r, tt.want)
			}
			if tt.want == ReasonNone && c.IssuerRef != tt.wantRef {
				t.Errorf("IssuerRef: got %q, want %q", c.IssuerRef, tt.wantRef)
			}
		})
	}
}

func TestOIDCIssuer(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	c := &clock{}
	// A generic issuer with a fixed JWKS URI: the devidp v2 keys.
	v := newValidator(t, testConfig(c), IssuerConfig{
		Ref:  "generic",
		OIDC: &OIDCConfig{Issuer: idp.Issuer(2, tenantA), JWKSURI: ti.srv.URL + "/" + tenantA + "/discovery/v2.0/keys", Audiences: []string{audURI}},
	})
	cl, r, err := v.Validate(ctxT(t), ti.mint(t, idp.TokenRequest{}))
	if err != nil {
		t.Fatalf("Validate: %q %v", r, err)
	}
	if cl.IssuerRef != "generic" {
		t.Errorf("IssuerRef: got %q, want generic", cl.IssuerRef)
	}
}

func TestDiscoveryIssuerMustMatchCloud(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	ic := ti.azure("china", tenantA)
	ic.AzureAD.Cloud = AzureChina // devidp serves public-cloud issuers
	v := newValidator(t, testConfig(&clock{}), ic)
	_, r, _ := v.Validate(ctxT(t), ti.mint(t, idp.TokenRequest{}))
	if r != ReasonWrongIssuer {
		t.Errorf("reason: got %q, want %q", r, ReasonWrongIssuer)
	}
	st := v.Issuers()[0].Sources[0]
	if st.HasKeys || !strings.Contains(st.LastError, `want "https://sts.chinacloudapi.cn/`) {
		t.Errorf("status: HasKeys %v, LastError %q; want no keys and an issuer mismatch", st.HasKeys, st.LastError)
	}
}

func TestRotation(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	c := &clock{}
	v := newValidator(t, testConfig(c), ti.azure("a", tenantA))
	oldTok := ti.mint(t, idp.TokenRequest{})
	if _, r, err := v.Validate(ctxT(t), oldTok); err != nil {
		t.Fatalf("old token: %q %v", r, err)
	}

	// A new key is published and used: the first token naming it triggers
	// a refresh and is accepted in the same call.
	newKID, err := ti.AddKey(testKey(t, 1), true)
	noErr(t, err, "AddKey")
	hits := ti.jwksHits.Load()
	if _, r, err := v.Validate(ctxT(t), ti.mint(t, idp.TokenRequest{})); err != nil {
		t.Fatalf("token of the new key: %q %v", r, err)
	}
	if got := ti.jwksHits.Load() - hits; got != 1 {
		t.Errorf("key set fetches for the new kid: got %d, want 1", got)
	}
	if _, r, err := v.Validate(ctxT(t), oldTok); err != nil {
		t.Errorf("old token while its key is still published: %q %v", r, err)
	}

	// The old key is withdrawn and a third key appears; once the refresh
	// for the third key has run, the cached old token is refused.
	noErr(t, ti.RemoveKey(ti.KeyIDs()[0]), "RemoveKey")
	_, err = ti.AddKey(testKey(t, 2), true)
	noErr(t, err, "AddKey")
	c.Advance(DefaultUnknownKIDInterval)
	if _, r, err := v.Validate(ctxT(t), ti.mint(t, idp.TokenRequest{})); err != nil {
		t.Fatalf("token of the third key: %q %v", r, err)
	}
	if _, r, _ := v.Validate(ctxT(t), oldTok); r != ReasonUnknownKID {
		t.Errorf("cached token of a withdrawn key: got %q, want %q", r, ReasonUnknownKID)
	}
	if _, r, err := v.Validate(ctxT(t), ti.mint(t, idp.TokenRequest{KeyID: newKID})); err != nil {
		t.Errorf("token of the kept key: %q %v", r, err)
	}
}

func TestUnknownKIDRefreshIsRateLimited(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	c := &clock{}
	v := newValidator(t, testConfig(c), ti.azure("a", tenantA))
	hits := ti.jwksHits.Load()
	for i := range 50 {
		tok := ti.mint(t, idp.TokenRequest{Header: map[string]any{"kid": fmt.Sprintf("made-up-%d", i)}})
		if _, r, _ := v.Validate(ctxT(t), tok); r != ReasonUnknownKID {
			t.Fatalf("made-up kid %d: got %q, want %q", i, r, ReasonUnknownKID)
		}
	}
	if got := ti.jwksHits.Load() - hits; got != 1 {
		t.Errorf("key set fetches for 50 made-up kids: got %d, want 1", got)
	}
	c.Advance(DefaultUnknownKIDInterval + time.Second)
	tok := ti.mint(t, idp.TokenRequest{Header: map[string]any{"kid": "made-up-later"}})
	if _, r, _ := v.Validate(ctxT(t), tok); r != ReasonUnknownKID {
		t.Fatalf("made-up kid later: got %q, want %q", r, ReasonUnknownKID)
	}
	if got := ti.jwksHits.Load() - hits; got != 2 {
		t.Errorf("key set fetches after the interval: got %d, want 2", got)
	}
}

func TestOutage(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	c := &clock{}
	v := newValidator(t, testConfig(c), ti.azure("a", tenantA))
	cached := ti.mint(t, idp.TokenRequest{})
	if _, r, err := v.Validate(ctxT(t), cached); err != nil {
		t.Fatalf("before the outage: %q %v", r, err)
	}
	ti.setMode(modeDown)

	// Keys already fetched keep working, for new tokens too.
	if _, r, err := v.Validate(ctxT(t), ti.mint(t, idp.TokenRequest{UPN: "new@example.com"})); err != nil {
		t.Errorf("new token during the outage: %q %v", r, err)
	}
	// An unknown kid cannot be fetched: refused, and the failure is visible.
	if _, r, _ := v.Validate(ctxT(t), ti.mint(t, idp.TokenRequest{Header: map[string]any{"kid": "rotated"}})); r != ReasonUnknownKID {
		t.Errorf("unknown kid during the outage: got %q, want %q", r, ReasonUnknownKID)
	}
	for _, src := range v.Issuers()[0].Sources {
		if src.Version == 2 && (!src.HasKeys || src.LastError == "" || src.RefreshFailed == 0) {
			t.Errorf("v2 source status during the outage: %+v; want keys, a last error and a failed refresh", src)
		}
	}

	// Past MaxStaleness the last key set is no longer trusted, cached
	// tokens included.
	c.Advance(DefaultMaxStaleness + time.Minute)
	for name, tok := range map[string]string{"cached": cached, "new": ti.mint(t, idp.TokenRequest{IssuedAt: c.Now(), UPN: "x@example.com"})} {
		if _, r, _ := v.Validate(ctxT(t), tok); r != ReasonJWKSUnavailable {
			t.Errorf("%s token past max staleness: got %q, want %q", name, r, ReasonJWKSUnavailable)
		}
	}
	st := v.Issuers()[0].Sources[0]
	if !st.Stale || st.KeySetAge < DefaultMaxStaleness {
		t.Errorf("status past max staleness: Stale %v, KeySetAge %v", st.Stale, st.KeySetAge)
	}

	// The IdP comes back: the next refresh (request-triggered) restores service.
	ti.setMode(modeOK)
	c.Advance(DefaultUnknownKIDInterval)
	if _, r, err := v.Validate(ctxT(t), ti.mint(t, idp.TokenRequest{IssuedAt: c.Now(), UPN: "y@example.com"})); err != nil {
		t.Errorf("after the outage: %q %v", r, err)
	}
}

func TestFailClosedBeforeFirstKeys(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	ti.setMode(modeDown)
	v := newValidator(t, testConfig(&clock{}), ti.azure("a", tenantA))
	_, r, err := v.Validate(ctxT(t), ti.mint(t, idp.TokenRequest{}))
	if r != ReasonJWKSUnavailable || !errors.Is(err, ErrJWKSUnavailable) {
		t.Errorf("got %q (%v), want %q", r, err, ReasonJWKSUnavailable)
	}
	if st := v.Issuers()[0].Sources[0]; st.HasKeys || st.LastError == "" {
		t.Errorf("status: %+v; want no keys and a last error", st)
	}
}

// waitGoroutines waits, bounded, for the goroutine count to drop to at
// most n; goroutines of finished HTTP connections exit asynchronously.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d, want at most %d\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHangingIdP(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	ti.setMode(modeHang)
	tok := ti.mint(t, idp.TokenRequest{})
	base := runtime.NumGoroutine()
	cfg := testConfig(&clock{})
	cfg.FetchTimeout = 300 * time.Millisecond
	v, err := New(cfg, []IssuerConfig{ti.azure("a", tenantA)})
	noErr(t, err, "New")
	t.Cleanup(func() { v.Close() })

	const callers = 100
	start := time.Now()
	var wg sync.WaitGroup
	reasons := make([]Reason, callers)
	for i := range callers {
		wg.Go(func() { _, reasons[i], _ = v.Validate(context.Background(), tok) })
	}
	wg.Wait()
	if d := time.Since(start); d > 2*cfg.FetchTimeout+time.Second {
		t.Errorf("%d callers against a hanging IdP took %v, want about FetchTimeout (%v)", callers, d, cfg.FetchTimeout)
	}
	for i, r := range reasons {
		if r != ReasonJWKSUnavailable {
			t.Fatalf("caller %d: got %q, want %q", i, r, ReasonJWKSUnavailable)
		}
	}
	// One refresh goroutine per source plus HTTP connections, not one per
	// caller.
	if n := runtime.NumGoroutine(); n > base+20 {
		t.Errorf("goroutines while the IdP hangs: %d, base %d", n, base)
	}
	v.Close()
	waitGoroutines(t, base+2)
}

func TestContextBoundsWait(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	ti.setMode(modeHang)
	v, err := New(testConfig(&clock{}), []IssuerConfig{ti.azure("a", tenantA)})
	noErr(t, err, "New")
	t.Cleanup(func() { v.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, r, _ := v.Validate(ctx, ti.mint(t, idp.TokenRequest{}))
	if d := time.Since(start); r != ReasonJWKSUnavailable || d > time.Second {
		t.Errorf("got %q after %v, want %q within the context's 50ms", r, d, ReasonJWKSUnavailable)
	}
}

func TestSetIssuers(t *testing.T) {
	ti := newTestIDP(t, tenantA, tenantB)
	v := newValidator(t, testConfig(&clock{}), ti.azure("a", tenantA))
	tok := ti.mint(t, idp.TokenRequest{})
	first, _, err := v.Validate(ctxT(t), tok)
	noErr(t, err, "Validate")
	fetches := ti.allHits.Load()

	// Unchanged issuer plus a new one: the cache and keys of the first stay.
	noErr(t, v.SetIssuers([]IssuerConfig{ti.azure("a", tenantA), ti.azure("b", tenantB)}), "SetIssuers")
	again, _, err := v.Validate(ctxT(t), tok)
	if err != nil || again != first {
		t.Errorf("after adding an issuer: got %p (%v), want the cached claims %p", again, err, first)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	noErr(t, v.WaitReady(ctx), "WaitReady")
	if _, r, err := v.Validate(ctxT(t), ti.mint(t, idp.TokenRequest{Tenant: tenantB})); err != nil {
		t.Errorf("token of the new issuer: %q %v", r, err)
	}
	if got := ti.allHits.Load() - fetches; got != 4 {
		t.Errorf("fetches after adding one issuer: got %d, want 4 (two discovery documents, two key sets)", got)
	}

	// An invalid issuer is left out; the others stay in force.
	err = v.SetIssuers([]IssuerConfig{{Ref: "broken"}, ti.azure("a", tenantA), ti.azure("a", tenantB)})
	if err == nil || !strings.Contains(err.Error(), "issuer broken:") || !strings.Contains(err.Error(), "issuer a: duplicate ref") {
		t.Errorf("SetIssuers with an invalid and a duplicate issuer: got %v, want both named", err)
	}
	if again, _, err := v.Validate(ctxT(t), tok); err != nil || again != first {
		t.Errorf("after a partly refused update: got %p (%v), want the cached claims %p", again, err, first)
	}
	if refs := len(v.Issuers()); refs != 1 {
		t.Errorf("issuers after a partly refused update: %d, want 1", refs)
	}

	// A changed audience list takes effect for cached tokens too.
	changed := ti.azure("a", tenantA)
	changed.AzureAD.Audiences = []string{"api://elsewhere"}
	noErr(t, v.SetIssuers([]IssuerConfig{changed}), "SetIssuers")
	if _, r, _ := v.Validate(ctxT(t), tok); r != ReasonWrongAudience {
		t.Errorf("cached token after its audience was removed: got %q, want %q", r, ReasonWrongAudience)
	}
	noErr(t, v.SetIssuers(nil), "SetIssuers(nil)")
	if _, r, _ := v.Validate(ctxT(t), tok); r != ReasonWrongIssuer {
		t.Errorf("after removing every issuer: got %q, want %q", r, ReasonWrongIssuer)
	}
	if n := len(v.Issuers()); n != 0 {
		t.Errorf("Issuers after removing all: %d, want 0", n)
	}
	v.mu.Lock()
	running := len(v.sources)
	v.mu.Unlock()
	if running != 0 {
		t.Errorf("key sources still running after removing every issuer: %d", running)
	}
}

func TestConcurrentValidation(t *testing.T) {
	ti := newTestIDP(t, tenantA, tenantB)
	c := &clock{}
	v := newValidator(t, testConfig(c), ti.azure("a", tenantA), ti.azure("b", tenantB))
	var toks []string
	for i := range 20 {
		toks = append(toks, ti.mint(t, idp.TokenRequest{Tenant: []string{tenantA, tenantB}[i%2], UPN: fmt.Sprintf("u%d@example.com", i)}))
	}
	bad := ti.mint(t, idp.TokenRequest{Audience: "api://nope"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 300 {
				tok := toks[(g+i)%len(toks)]
				if _, r, err := v.Validate(ctx, tok); err != nil {
					t.Errorf("goroutine %d: %q %v", g, r, err)
					return
				}
				if _, r, _ := v.Validate(ctx, bad); r != ReasonWrongAudience {
					t.Errorf("goroutine %d: bad token got %q", g, r)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 30 {
			issuers := []IssuerConfig{ti.azure("a", tenantA), ti.azure("b", tenantB)}
			if i%2 == 1 {
				issuers[1].ClockSkew = 2 * time.Minute // changes b, keeps a
			}
			if err := v.SetIssuers(issuers); err != nil {
				t.Errorf("SetIssuers: %v", err)
			}
			_ = v.Issuers()
			_ = v.Stats()
		}
	})
	wg.Wait()
	if s := v.Stats(); s.CacheHits == 0 {
		t.Errorf("stats: %+v, want cache hits", s)
	}
}

func TestCacheBounds(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	cfg := testConfig(&clock{})
	cfg.CacheEntries = cacheShards * 4
	v := newValidator(t, cfg, ti.azure("a", tenantA))
	for i := range 500 {
		tok := ti.mint(t, idp.TokenRequest{UPN: fmt.Sprintf("u%d@example.com", i)})
		if _, r, err := v.Validate(ctxT(t), tok); err != nil {
			t.Fatalf("token %d: %q %v", i, r, err)
		}
	}
	s := v.Stats()
	if s.CacheEntries > cfg.CacheEntries || s.CacheEvictions == 0 {
		t.Errorf("stats: %+v; want at most %d entries and evictions", s, cfg.CacheEntries)
	}

	cfg.CacheEntries = -1
	off := newValidator(t, cfg, ti.azure("a", tenantA))
	tok := ti.mint(t, idp.TokenRequest{})
	a, _, _ := off.Validate(ctxT(t), tok)
	b, _, _ := off.Validate(ctxT(t), tok)
	if a == nil || a == b {
		t.Errorf("cache disabled: got the same claims twice (%p, %p)", a, b)
	}
}

func TestCacheNeverServesPastExp(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	c := &clock{}
	v := newValidator(t, testConfig(c), ti.azure("a", tenantA))
	tok := ti.mint(t, idp.TokenRequest{LifetimeSeconds: 120})
	if _, r, err := v.Validate(ctxT(t), tok); err != nil {
		t.Fatalf("Validate: %q %v", r, err)
	}
	hits := v.Stats().CacheHits
	c.Advance(121 * time.Second) // past exp, within skew: re-verified, not served from cache
	if _, r, err := v.Validate(ctxT(t), tok); err != nil {
		t.Fatalf("within skew: %q %v", r, err)
	}
	if got := v.Stats().CacheHits; got != hits {
		t.Errorf("cache hits after exp: got %d, want %d", got, hits)
	}
	c.Advance(time.Minute)
	if _, r, _ := v.Validate(ctxT(t), tok); r != ReasonExpired {
		t.Errorf("past exp and skew: got %q, want %q", r, ReasonExpired)
	}
}

func TestCloseRefusesEverything(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	v := newValidator(t, testConfig(&clock{}), ti.azure("a", tenantA))
	tok := ti.mint(t, idp.TokenRequest{})
	if _, _, err := v.Validate(ctxT(t), tok); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	noErr(t, v.Close(), "Close")
	if _, r, _ := v.Validate(ctxT(t), tok); r != ReasonWrongIssuer {
		t.Errorf("after Close: got %q, want %q", r, ReasonWrongIssuer)
	}
	if err := v.SetIssuers(nil); err == nil {
		t.Error("SetIssuers after Close: got nil error")
	}
}

func TestRefreshInterval(t *testing.T) {
	ti := newTestIDP(t, tenantA) // JWKS Cache-Control: max-age=300
	for _, tt := range []struct {
		name     string
		min, max time.Duration
		want     time.Duration
	}{
		{"max-age within bounds", time.Minute, time.Hour, 300 * time.Second},
		{"clamped to MaxRefresh", time.Minute, 2 * time.Minute, 2 * time.Minute},
		{"clamped to MinRefresh", 10 * time.Minute, time.Hour, 10 * time.Minute},
	} {
		cfg := testConfig(&clock{})
		cfg.MinRefresh, cfg.MaxRefresh = tt.min, tt.max
		v := newValidator(t, cfg, ti.azure("a", tenantA))
		for _, st := range v.Issuers()[0].Sources {
			if got := st.NextRefresh.Sub(st.LastAttempt); got != tt.want {
				t.Errorf("%s: next refresh in %v, want %v", tt.name, got, tt.want)
			}
		}
		v.Close()
	}

	// Refreshes happen in the background, without requests.
	cfg := testConfig(&clock{})
	cfg.MinRefresh, cfg.MaxRefresh = 20*time.Millisecond, 20*time.Millisecond
	newValidator(t, cfg, ti.azure("a", tenantA))
	start := ti.jwksHits.Load()
	deadline := time.Now().Add(5 * time.Second)
	for ti.jwksHits.Load() < start+4 {
		if time.Now().After(deadline) {
			t.Fatalf("background refreshes in 5s: %d, want at least 4", ti.jwksHits.Load()-start)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An authorityHost that proxies real documents (jwks_uri on the cloud's
// host) is also where keys are fetched from.
func TestAuthorityHostRewritesJWKSURI(t *testing.T) {
	ti := newTestIDP(t, tenantA)
	proxy := httptest.NewServer(ti.Handler("https://login.microsoftonline.com"))
	t.Cleanup(proxy.Close)
	ic := ti.azure("a", tenantA)
	ic.AzureAD.AuthorityHost = proxy.URL
	ic.AzureAD.AcceptedVersions = []int{2}
	v := newValidator(t, testConfig(&clock{}), ic)
	if _, r, err := v.Validate(ctxT(t), ti.mint(t, idp.TokenRequest{})); err != nil {
		t.Fatalf("Validate: %q %v", r, err)
	}
	if got, want := v.Issuers()[0].Sources[0].JWKSURI, proxy.URL+"/"+tenantA+"/discovery/v2.0/keys"; got != want {
		t.Errorf("JWKSURI: got %q, want %q", got, want)
	}
}
