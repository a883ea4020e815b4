package idp

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const tenant = "aaaaaaaa-0000-4000-8000-00000000000a"

var (
	keysOnce sync.Once
	keys     []*rsa.PrivateKey
)

func testKeys(t *testing.T) []*rsa.PrivateKey {
	t.Helper()
	keysOnce.Do(func() {
		for range 2 {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			keys = append(keys, k)
		}
	})
	return keys
}

func newServer(t *testing.T) (*IDP, *httptest.Server) {
	t.Helper()
	p, err := New(Options{Tenants: []string{tenant}, Keys: testKeys(t)[:1]})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv := httptest.NewServer(nil)
	srv.Config.Handler = p.Handler(srv.URL)
	t.Cleanup(srv.Close)
	return p, srv
}

func getJSON(t *testing.T, url string, v any) *http.Response {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatalf("decode %s: %v", url, err)
		}
	}
	return resp
}

func TestDiscovery(t *testing.T) {
	_, srv := newServer(t)
	tests := []struct {
		path, wantIssuer, wantJWKS string
	}{
		{"/" + tenant + "/.well-known/openid-configuration", "https://sts.windows.net/" + tenant + "/", srv.URL + "/common/discovery/keys"},
		{"/" + tenant + "/v2.0/.well-known/openid-configuration", "https://login.microsoftonline.com/" + tenant + "/v2.0", srv.URL + "/" + tenant + "/discovery/v2.0/keys"},
		{"/organizations/v2.0/.well-known/openid-configuration", "https://login.microsoftonline.com/{tenantid}/v2.0", srv.URL + "/organizations/discovery/v2.0/keys"},
		{"/common/.well-known/openid-configuration", "https://sts.windows.net/{tenantid}/", srv.URL + "/common/discovery/keys"},
	}
	for _, tt := range tests {
		var doc struct {
			Issuer  string `json:"issuer"`
			JWKSURI string `json:"jwks_uri"`
		}
		if resp := getJSON(t, srv.URL+tt.path, &doc); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", tt.path, resp.Status)
		}
		if doc.Issuer != tt.wantIssuer || doc.JWKSURI != tt.wantJWKS {
			t.Errorf("GET %s: issuer %q, jwks_uri %q; want %q, %q", tt.path, doc.Issuer, doc.JWKSURI, tt.wantIssuer, tt.wantJWKS)
		}
	}
	if resp := getJSON(t, srv.URL+"/bbbbbbbb-0000-4000-8000-00000000000b/v2.0/.well-known/openid-configuration", nil); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("unknown tenant: got %s, want 400", resp.Status)
	}
}

type jwk struct {
	Kid, Kty, Use, N, E, X5t string
	X5c                      []string
}

func fetchJWKS(t *testing.T, srv *httptest.Server) ([]jwk, *http.Response) {
	t.Helper()
	var set struct{ Keys []jwk }
	resp := getJSON(t, srv.URL+"/"+tenant+"/discovery/v2.0/keys", &set)
	return set.Keys, resp
}

func TestJWKS(t *testing.T) {
	p, srv := newServer(t)
	set, resp := fetchJWKS(t, srv)
	if got := resp.Header.Get("Cache-Control"); got != "max-age=300" {
		t.Errorf("Cache-Control: got %q, want max-age=300", got)
	}
	if len(set) != 1 {
		t.Fatalf("keys: got %d, want 1", len(set))
	}
	k := set[0]
	der, err := base64.StdEncoding.DecodeString(k.X5c[0])
	if err != nil {
		t.Fatalf("decode x5c: %v", err)
	}
	sum := sha1.Sum(der)
	thumb := base64.RawURLEncoding.EncodeToString(sum[:])
	if k.Kid != thumb || k.X5t != thumb || k.Kty != "RSA" || k.Use != "sig" {
		t.Errorf("key: %+v; want kid = x5t = %s, RSA, sig", k, thumb)
	}
	n, _ := base64.RawURLEncoding.DecodeString(k.N)
	if new(big.Int).SetBytes(n).Cmp(testKeys(t)[0].N) != 0 || k.E != "AQAB" {
		t.Error("published modulus or exponent differ from the signing key")
	}
	if diff := cmp.Diff([]string{k.Kid}, p.KeyIDs()); diff != "" {
		t.Errorf("KeyIDs (-want +got):\n%s", diff)
	}
}

func decodeToken(t *testing.T, tok string) (hdr, claims map[string]any) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	for i, v := range []*map[string]any{&hdr, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatalf("decode part %d: %v", i, err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("unmarshal part %d: %v", i, err)
		}
	}
	return hdr, claims
}

func TestMint(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	p, err := New(Options{Tenants: []string{tenant}, Keys: testKeys(t)[:1], Now: func() time.Time { return now }})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	tests := []struct {
		name   string
		req    TokenRequest
		want   map[string]any // claims that must have these values
		absent []string
	}{
		{"v2 user", TokenRequest{Audience: "api://a", UPN: "ada@example.com", Scopes: []string{"r", "w"}, Roles: []string{"x"}},
			map[string]any{"iss": "https://login.microsoftonline.com/" + tenant + "/v2.0", "ver": "2.0", "aud": "api://a", "azp": DefaultClientID,
				"scp": "r w", "roles": []any{"x"}, "preferred_username": "ada@example.com", "tid": tenant, "iat": 1.8e9, "nbf": 1.8e9, "exp": 1.8e9 + 3600},
			[]string{"appid", "idtyp", "upn", "groups"}},
		{"v1 user", TokenRequest{Version: 1, Audience: "api://a", UPN: "bob@example.com", ClientID: "c1"},
			map[string]any{"iss": "https://sts.windows.net/" + tenant + "/", "ver": "1.0", "appid": "c1", "upn": "bob@example.com", "scp": "user_impersonation"},
			[]string{"azp", "preferred_username"}},
		{"v2 app", TokenRequest{App: true, Audience: "api://a", Roles: []string{"Sync"}, LifetimeSeconds: 60},
			map[string]any{"idtyp": "app", "roles": []any{"Sync"}, "exp": 1.8e9 + 60},
			[]string{"scp", "upn", "preferred_username"}},
		{"overage", TokenRequest{Audience: "api://a", GroupOverage: true, Groups: []string{"g"}},
			map[string]any{"_claim_names": map[string]any{"groups": "src1"}},
			[]string{"groups"}},
		{"overrides", TokenRequest{Audience: "api://a", Claims: map[string]any{"oid": "o", "scp": nil, "custom": true}},
			map[string]any{"oid": "o", "custom": true},
			[]string{"scp"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := p.Mint(tt.req)
			if err != nil {
				t.Fatalf("Mint: %v", err)
			}
			hdr, claims := decodeToken(t, tok)
			if hdr["alg"] != "RS256" || hdr["typ"] != "JWT" || hdr["kid"] != p.KeyIDs()[0] || hdr["x5t"] != hdr["kid"] {
				t.Errorf("header %v", hdr)
			}
			for k, want := range tt.want {
				if diff := cmp.Diff(want, claims[k]); diff != "" {
					t.Errorf("claim %s (-want +got):\n%s", k, diff)
				}
			}
			for _, k := range tt.absent {
				if v, ok := claims[k]; ok {
					t.Errorf("claim %s = %v, want absent", k, v)
				}
			}
			if claims["oid"] == "" || claims["sub"] == "" {
				t.Errorf("oid %v, sub %v; want both", claims["oid"], claims["sub"])
			}
			i := strings.LastIndexByte(tok, '.')
			sig, _ := base64.RawURLEncoding.DecodeString(tok[i+1:])
			digest := sha256.Sum256([]byte(tok[:i]))
			if err := rsa.VerifyPKCS1v15(&testKeys(t)[0].PublicKey, crypto.SHA256, digest[:], sig); err != nil {
				t.Errorf("signature: %v", err)
			}
		})
	}
	for name, req := range map[string]TokenRequest{
		"no audience":    {},
		"bad version":    {Audience: "a", Version: 3},
		"unknown tenant": {Audience: "a", Tenant: "bbbbbbbb-0000-4000-8000-00000000000b"},
		"app scopes":     {Audience: "a", App: true, Scopes: []string{"s"}},
		"unknown kid":    {Audience: "a", KeyID: "nope"},
	} {
		if _, err := p.Mint(req); err == nil {
			t.Errorf("Mint(%s): got nil error", name)
		}
	}
}

func TestRotate(t *testing.T) {
	p, srv := newServer(t)
	first := p.KeyIDs()[0]
	kid, err := p.AddKey(testKeys(t)[1], true)
	if err != nil {
		t.Fatalf("AddKey: %v", err)
	}
	if diff := cmp.Diff([]string{first, kid}, p.KeyIDs()); diff != "" {
		t.Errorf("after rotation keeping the old key (-want +got):\n%s", diff)
	}
	tok, _ := p.Mint(TokenRequest{Audience: "a"})
	if hdr, _ := decodeToken(t, tok); hdr["kid"] != kid {
		t.Errorf("minted with %v, want the new key %s", hdr["kid"], kid)
	}
	if err := p.RemoveKey(kid); err == nil {
		t.Error("RemoveKey(active): got nil error")
	}
	if err := p.RemoveKey(first); err != nil {
		t.Errorf("RemoveKey(old): %v", err)
	}
	if set, _ := fetchJWKS(t, srv); len(set) != 1 || set[0].Kid != kid {
		t.Errorf("JWKS after removal: %+v, want only %s", set, kid)
	}

	// Over HTTP, without keeping the old key.
	resp, err := http.Post(srv.URL+"/devidp/rotate", "application/json", strings.NewReader(`{"keepOld":false}`))
	if err != nil {
		t.Fatalf("POST rotate: %v", err)
	}
	var out struct {
		KID  string
		KIDs []string
	}
	err = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if err != nil || out.KID == "" || len(out.KIDs) != 1 || out.KIDs[0] != out.KID {
		t.Errorf("rotate response: %+v (%v); want one new kid", out, err)
	}
}

func TestTokenEndpoint(t *testing.T) {
	_, srv := newServer(t)
	body, _ := json.Marshal(TokenRequest{Audience: "api://a", Version: 1, App: true})
	resp, err := http.Post(srv.URL+"/devidp/token", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST token: %v", err)
	}
	var out struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int    `json:"expires_in"`
	}
	err = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if err != nil || out.TokenType != "Bearer" || out.ExpiresIn != 3600 {
		t.Fatalf("token response: %+v (%v)", out, err)
	}
	if _, claims := decodeToken(t, out.AccessToken); claims["ver"] != "1.0" || claims["idtyp"] != "app" {
		t.Errorf("claims %v: want a v1 app token", claims)
	}
	resp, err = http.Post(srv.URL+"/devidp/token", "application/json", strings.NewReader(`{"audience":"a","bogus":1}`))
	if err != nil {
		t.Fatalf("POST token: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("unknown field: got %s, want 400", resp.Status)
	}
}

func TestLoopbackOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:8400": true, "127.1.2.3:0": true, "[::1]:0": true, "localhost:0": true,
		"0.0.0.0:8400": false, ":8400": false, "[::]:0": false, "10.1.2.3:80": false, "example.com:80": false, "nope": false,
	} {
		if err := CheckLoopback(addr); (err == nil) != ok {
			t.Errorf("CheckLoopback(%q): got %v, want ok %v", addr, err, ok)
		}
	}
	if ln, err := Listen("0.0.0.0:0"); err == nil {
		ln.Close()
		t.Error("Listen(0.0.0.0:0): got nil error")
	}
}

func TestServe(t *testing.T) {
	p, err := New(Options{Tenants: []string{tenant}, Keys: testKeys(t)[:1]})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, ln) }()
	var doc struct {
		JWKSURI string `json:"jwks_uri"`
	}
	getJSON(t, "http://"+ln.Addr().String()+"/"+tenant+"/v2.0/.well-known/openid-configuration", &doc)
	if want := "http://" + ln.Addr().String() + "/" + tenant + "/discovery/v2.0/keys"; doc.JWKSURI != want {
		t.Errorf("jwks_uri: got %q, want %q", doc.JWKSURI, want)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

func TestClientCredentials(t *testing.T) {
	_, srv := newServer(t)
	post := func(path string, form url.Values) (int, map[string]any) {
		t.Helper()
		resp, err := http.PostForm(srv.URL+path, form)
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatalf("decode: %v", err)
		}
		return resp.StatusCode, out
	}
	code, out := post("/"+tenant+"/oauth2/v2.0/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {"daemon"},
		"client_secret": {"x"}, "scope": {"api://orders/.default"}, "roles": {"Orders.Sync, Orders.Read"}})
	if code != http.StatusOK {
		t.Fatalf("v2 token: %d %v", code, out)
	}
	_, c := decodeToken(t, out["access_token"].(string))
	if c["aud"] != "api://orders" || c["azp"] != "daemon" || c["ver"] != "2.0" || c["idtyp"] != "app" ||
		!cmp.Equal(c["roles"], []any{"Orders.Sync", "Orders.Read"}) {
		t.Errorf("v2 claims %v", c)
	}
	code, out = post("/"+tenant+"/oauth2/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {"daemon"}, "resource": {"api://orders"}})
	if code != http.StatusOK {
		t.Fatalf("v1 token: %d %v", code, out)
	}
	if _, c := decodeToken(t, out["access_token"].(string)); c["appid"] != "daemon" || c["ver"] != "1.0" {
		t.Errorf("v1 claims %v", c)
	}
	for name, tt := range map[string]struct {
		path string
		form url.Values
		want string
	}{
		"password grant": {"/" + tenant + "/oauth2/v2.0/token", url.Values{"grant_type": {"password"}, "client_id": {"c"}, "scope": {"a/.default"}}, "unsupported_grant_type"},
		"no client":      {"/" + tenant + "/oauth2/v2.0/token", url.Values{"grant_type": {"client_credentials"}, "scope": {"a/.default"}}, "invalid_request"},
		"bad scope":      {"/" + tenant + "/oauth2/v2.0/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {"c"}, "scope": {"a"}}, "invalid_scope"},
		"no resource":    {"/" + tenant + "/oauth2/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {"c"}}, "invalid_request"},
		"common tenant":  {"/common/oauth2/v2.0/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {"c"}, "scope": {"a/.default"}}, "invalid_request"},
	} {
		if code, out := post(tt.path, tt.form); code != http.StatusBadRequest || out["error"] != tt.want {
			t.Errorf("%s: got %d %v, want 400 %s", name, code, out, tt.want)
		}
	}
}
