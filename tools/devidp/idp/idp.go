// Package idp imitates Microsoft Entra ID on loopback: per-tenant v1 and v2
// OpenID discovery documents (and the multi-tenant "organizations" and
// "common" ones with the {tenantid} issuer template), a JWKS with kid and
// x5t, token minting in the v1 and v2 access-token shapes, and key rotation.
//
// Its tokens carry the real Entra issuer strings (https://sts.windows.net/{tid}/
// and https://login.microsoftonline.com/{tid}/v2.0) so that they exercise the
// same validation as production tokens; a validator trusts them only when its
// authorityHost points at this server's loopback address, where the keys are.
// It is a development and test tool: the token endpoint is unauthenticated,
// which is why servers refuse to listen on anything but loopback.
//
// Tests use it in-process: idp.New, then httptest.NewServer(p.Handler()).
package idp

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"sync"
	"time"
)

// Issuer formats of the public cloud, as Entra ID writes them.
const (
	V1IssuerFormat = "https://sts.windows.net/%s/"
	V2IssuerFormat = "https://login.microsoftonline.com/%s/v2.0"
)

// DefaultClientID is the azp/appid of minted tokens when none is given.
const DefaultClientID = "11111111-2222-3333-4444-555555555555"

// Options configures an IDP.
type Options struct {
	// Tenants are the tenant GUIDs served. Empty means one fixed tenant,
	// DefaultTenant.
	Tenants []string
	// Keys are the initial signing keys, the last one active. Empty means
	// one freshly generated RSA-2048 key.
	Keys []*rsa.PrivateKey
	// JWKSMaxAge is the Cache-Control max-age of key set responses. Zero
	// means 300 seconds; negative means no Cache-Control header.
	JWKSMaxAge time.Duration
	// Now is the clock for minted tokens. Nil means time.Now.
	Now func() time.Time
}

// DefaultTenant is the tenant served when Options.Tenants is empty.
const DefaultTenant = "72f988bf-0000-4000-8000-000000000001"

// IDP is an in-memory Entra-shaped issuer. Safe for concurrent use.
type IDP struct {
	tenants []string
	maxAge  time.Duration
	now     func() time.Time

	mu   sync.Mutex
	keys []*signingKey // published; the last one signs
}

type signingKey struct {
	kid  string
	priv *rsa.PrivateKey
	der  []byte
}

// New returns an IDP.
func New(opts Options) (*IDP, error) {
	p := &IDP{maxAge: opts.JWKSMaxAge, now: opts.Now}
	if p.maxAge == 0 {
		p.maxAge = 300 * time.Second
	}
	if p.now == nil {
		p.now = time.Now
	}
	p.tenants = slices.Clone(opts.Tenants)
	if len(p.tenants) == 0 {
		p.tenants = []string{DefaultTenant}
	}
	for _, t := range p.tenants {
		if !isGUID(t) {
			return nil, fmt.Errorf("tenant %q: want a lowercase GUID", t)
		}
	}
	keys := opts.Keys
	if len(keys) == 0 {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, fmt.Errorf("generate key: %w", err)
		}
		keys = []*rsa.PrivateKey{k}
	}
	for _, k := range keys {
		sk, err := newSigningKey(k)
		if err != nil {
			return nil, err
		}
		p.keys = append(p.keys, sk)
	}
	return p, nil
}

// newSigningKey wraps k in a self-signed certificate, as Entra publishes
// its keys (x5c), and names it by the certificate thumbprint: Entra's kid
// and x5t are both base64url(SHA-1(certificate)).
func newSigningKey(k *rsa.PrivateKey) (*signingKey, error) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "devidp signing key"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(5 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return nil, fmt.Errorf("create key certificate: %w", err)
	}
	sum := sha1.Sum(der)
	return &signingKey{kid: base64.RawURLEncoding.EncodeToString(sum[:]), priv: k, der: der}, nil
}

// Tenants returns the tenant GUIDs served.
func (p *IDP) Tenants() []string { return slices.Clone(p.tenants) }

// KeyIDs returns the published kids, the active one last.
func (p *IDP) KeyIDs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, len(p.keys))
	for i, k := range p.keys {
		out[i] = k.kid
	}
	return out
}

// Rotate publishes a new key and makes it the active signer. With keepOld,
// the previous keys stay published (as Entra does for a while), so tokens
// they signed stay valid; without, they are withdrawn.
func (p *IDP) Rotate(keepOld bool) (string, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", fmt.Errorf("generate key: %w", err)
	}
	return p.AddKey(k, keepOld)
}

// AddKey publishes k and makes it the active signer, like Rotate.
func (p *IDP) AddKey(k *rsa.PrivateKey, keepOld bool) (string, error) {
	sk, err := newSigningKey(k)
	if err != nil {
		return "", err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !keepOld {
		p.keys = nil
	}
	p.keys = append(p.keys, sk)
	return sk.kid, nil
}

// RemoveKey withdraws the key kid from the JWKS. The active key cannot be
// removed; rotate first.
func (p *IDP) RemoveKey(kid string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := slices.IndexFunc(p.keys, func(k *signingKey) bool { return k.kid == kid })
	switch {
	case i < 0:
		return fmt.Errorf("remove key %s: not published", kid)
	case i == len(p.keys)-1:
		return fmt.Errorf("remove key %s: it is the active key", kid)
	}
	p.keys = slices.Delete(p.keys, i, i+1)
	return nil
}

// jwks returns the key set document.
func (p *IDP) jwks() map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	keys := make([]map[string]any, 0, len(p.keys))
	for _, k := range p.keys {
		keys = append(keys, map[string]any{
			"kty": "RSA",
			"use": "sig",
			"kid": k.kid,
			"x5t": k.kid,
			"n":   base64.RawURLEncoding.EncodeToString(k.priv.N.Bytes()),
			"e":   base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.priv.E)).Bytes()),
			"x5c": []string{base64.StdEncoding.EncodeToString(k.der)},
		})
	}
	return map[string]any{"keys": keys}
}

// TokenRequest describes a token to mint. JSON names are those of the
// /devidp/token endpoint.
type TokenRequest struct {
	// Tenant is the tid. Empty means the first tenant served.
	Tenant string `json:"tenant,omitempty"`
	// Version is 1 or 2 (the access-token shape). Zero means 2.
	Version int `json:"version,omitempty"`
	// Audience is aud, e.g. "api://orders" or a client ID. Required.
	Audience string `json:"audience"`
	// App mints an application (client credentials) token: no scp, oid ==
	// sub, idtyp "app". Otherwise a delegated user token.
	App bool `json:"app,omitempty"`
	// ClientID is azp (v2) / appid (v1). Empty means DefaultClientID.
	ClientID string `json:"clientID,omitempty"`
	// ObjectID is oid; Subject is sub. Empty means derived from ClientID
	// (app) or UPN (user), stable across calls.
	ObjectID string `json:"objectID,omitempty"`
	Subject  string `json:"subject,omitempty"`
	// UPN is the user's name: upn and unique_name (v1) or
	// preferred_username (v2). Empty means "dev@example.com" for users.
	UPN string `json:"upn,omitempty"`
	// Roles, Groups, Scopes (joined into scp) and WIDs.
	Roles  []string `json:"roles,omitempty"`
	Groups []string `json:"groups,omitempty"`
	Scopes []string `json:"scopes,omitempty"`
	WIDs   []string `json:"wids,omitempty"`
	// GroupOverage replaces groups with the overage form (_claim_names and
	// _claim_sources pointing at Microsoft Graph), as Entra does for users
	// in too many groups.
	GroupOverage bool `json:"groupOverage,omitempty"`
	// IDType adds the optional idtyp claim ("app" or "user"). Empty means
	// "app" for app tokens and none for user tokens, as with the optional
	// claim configured for apps only.
	IDType string `json:"idtyp,omitempty"`
	// LifetimeSeconds is exp - iat. Zero means 3600.
	LifetimeSeconds int64 `json:"lifetimeSeconds,omitempty"`
	// IssuedAt overrides iat (and nbf); zero means now.
	IssuedAt time.Time `json:"issuedAt,omitzero"`
	// Claims are added to or override the payload; a null value removes a
	// claim.
	Claims map[string]any `json:"claims,omitempty"`
	// Header members are added to or override the JOSE header (tests: a
	// nonce, jku, another alg); a null value removes one.
	Header map[string]any `json:"header,omitempty"`
	// KeyID signs with this published key instead of the active one.
	KeyID string `json:"kid,omitempty"`
}

// Issuer returns the iss of tokens of version ver (1 or 2) for tenant.
func Issuer(ver int, tenant string) string {
	if ver == 1 {
		return fmt.Sprintf(V1IssuerFormat, tenant)
	}
	return fmt.Sprintf(V2IssuerFormat, tenant)
}

// Mint returns a signed access token described by req.
func (p *IDP) Mint(req TokenRequest) (string, error) {
	tenant := req.Tenant
	if tenant == "" {
		tenant = p.tenants[0]
	}
	if !slices.Contains(p.tenants, tenant) {
		return "", fmt.Errorf("mint: tenant %q is not served", tenant)
	}
	ver := req.Version
	if ver == 0 {
		ver = 2
	}
	if ver != 1 && ver != 2 {
		return "", fmt.Errorf("mint: version %d: want 1 or 2", ver)
	}
	if req.Audience == "" {
		return "", errors.New("mint: audience is required")
	}
	client := req.ClientID
	if client == "" {
		client = DefaultClientID
	}
	upn := req.UPN
	if upn == "" && !req.App {
		upn = "dev@example.com"
	}
	oid := req.ObjectID
	if oid == "" {
		if req.App {
			oid = stableGUID("sp:" + tenant + ":" + client)
		} else {
			oid = stableGUID("user:" + tenant + ":" + upn)
		}
	}
	sub := req.Subject
	if sub == "" {
		if req.App {
			sub = oid
		} else {
			// Entra's sub is pairwise (per application) for users.
			sum := sha256.Sum256([]byte(oid + ":" + req.Audience))
			sub = base64.RawURLEncoding.EncodeToString(sum[:])
		}
	}
	iat := req.IssuedAt
	if iat.IsZero() {
		iat = p.now()
	}
	life := req.LifetimeSeconds
	if life == 0 {
		life = 3600
	}
	c := map[string]any{
		"aud": req.Audience,
		"iss": Issuer(ver, tenant),
		"iat": iat.Unix(),
		"nbf": iat.Unix(),
		"exp": iat.Unix() + life,
		"oid": oid,
		"sub": sub,
		"tid": tenant,
		"ver": fmt.Sprintf("%d.0", ver),
		"rh":  "0.devidp",
		"uti": randomID(),
	}
	if ver == 1 {
		c["appid"] = client
		c["appidacr"] = "1"
		c["idp"] = Issuer(1, tenant)
	} else {
		c["azp"] = client
		c["azpacr"] = "1"
	}
	if !req.App {
		if ver == 1 {
			c["upn"] = upn
			c["unique_name"] = upn
			c["amr"] = []string{"pwd"}
		} else {
			c["preferred_username"] = upn
		}
		c["name"] = strings.SplitN(upn, "@", 2)[0]
		scopes := req.Scopes
		if len(scopes) == 0 {
			scopes = []string{"user_impersonation"}
		}
		c["scp"] = strings.Join(scopes, " ")
	} else if len(req.Scopes) > 0 {
		return "", errors.New("mint: app tokens carry roles, not scopes")
	}
	switch idt := req.IDType; {
	case idt != "":
		c["idtyp"] = idt
	case req.App:
		c["idtyp"] = "app"
	}
	if len(req.Roles) > 0 {
		c["roles"] = req.Roles
	}
	if len(req.WIDs) > 0 {
		c["wids"] = req.WIDs
	}
	switch {
	case req.GroupOverage:
		c["_claim_names"] = map[string]any{"groups": "src1"}
		c["_claim_sources"] = map[string]any{"src1": map[string]any{
			"endpoint": "https://graph.microsoft.com/v1.0/users/" + oid + "/getMemberObjects",
		}}
	case len(req.Groups) > 0:
		c["groups"] = req.Groups
	}
	for k, v := range req.Claims {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return p.Sign(req.Header, c, req.KeyID)
}

// Sign signs claims with RS256 under the published key kid (empty: the
// active key). header members are merged over {"typ":"JWT","alg":"RS256",
// "kid":…,"x5t":…}; a nil value removes one. The signature is always
// RS256, whatever header says, so tests can craft tokens that lie.
func (p *IDP) Sign(header, claims map[string]any, kid string) (string, error) {
	p.mu.Lock()
	sk := p.keys[len(p.keys)-1]
	if kid != "" {
		i := slices.IndexFunc(p.keys, func(k *signingKey) bool { return k.kid == kid })
		if i < 0 {
			p.mu.Unlock()
			return "", fmt.Errorf("sign: key %s is not published", kid)
		}
		sk = p.keys[i]
	}
	p.mu.Unlock()
	h := map[string]any{"typ": "JWT", "alg": "RS256", "kid": sk.kid, "x5t": sk.kid}
	for k, v := range header {
		if v == nil {
			delete(h, k)
		} else {
			h[k] = v
		}
	}
	hb, err := json.Marshal(h)
	if err != nil {
		return "", fmt.Errorf("sign: encode header: %w", err)
	}
	pb, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("sign: encode claims: %w", err)
	}
	input := base64.RawURLEncoding.EncodeToString(hb) + "." + base64.RawURLEncoding.EncodeToString(pb)
	sum := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(nil, sk.priv, crypto.SHA256, sum[:])
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// stableGUID derives a GUID-shaped identifier from s, so that the same
// user or app gets the same oid in every token.
func stableGUID(s string) string {
	b := sha256.Sum256([]byte(s))
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}
