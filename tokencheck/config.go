package tokencheck

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Cloud names a national cloud of Microsoft Entra ID. It fixes the default
// authority host and the issuer formats tokens must carry.
type Cloud string

const (
	// AzurePublic is the global cloud: authority https://login.microsoftonline.com,
	// issuers https://sts.windows.net/{tid}/ (v1) and
	// https://login.microsoftonline.com/{tid}/v2.0 (v2).
	AzurePublic Cloud = "AzurePublic"
	// AzureUSGovernment is Azure Government: authority
	// https://login.microsoftonline.us, issuers https://sts.windows.net/{tid}/
	// (v1) and https://login.microsoftonline.us/{tid}/v2.0 (v2).
	AzureUSGovernment Cloud = "AzureUSGovernment"
	// AzureChina is Azure operated by 21Vianet: authority
	// https://login.chinacloudapi.cn, issuers https://sts.chinacloudapi.cn/{tid}/
	// (v1) and https://login.chinacloudapi.cn/{tid}/v2.0 (v2).
	AzureChina Cloud = "AzureChina"
)

// cloudInfo is what a Cloud fixes: where its discovery documents live and
// what the v1 and v2 issuers look like ({tenantid} is the template
// placeholder Entra ID itself uses in the multi-tenant documents).
type cloudInfo struct {
	authority string
	v1Issuer  string
	v2Issuer  string
}

var clouds = map[Cloud]cloudInfo{
	AzurePublic: {
		authority: "https://login.microsoftonline.com",
		v1Issuer:  "https://sts.windows.net/{tenantid}/",
		v2Issuer:  "https://login.microsoftonline.com/{tenantid}/v2.0",
	},
	AzureUSGovernment: {
		authority: "https://login.microsoftonline.us",
		v1Issuer:  "https://sts.windows.net/{tenantid}/",
		v2Issuer:  "https://login.microsoftonline.us/{tenantid}/v2.0",
	},
	AzureChina: {
		authority: "https://login.chinacloudapi.cn",
		v1Issuer:  "https://sts.chinacloudapi.cn/{tenantid}/",
		v2Issuer:  "https://login.chinacloudapi.cn/{tenantid}/v2.0",
	},
}

// tenantTemplate is the placeholder of multi-tenant issuer strings.
const tenantTemplate = "{tenantid}"

// Multi-tenant pseudo tenants accepted as AzureADConfig.TenantID.
const (
	// TenantOrganizations accepts work and school accounts of any tenant
	// (restricted by AllowedTenants).
	TenantOrganizations = "organizations"
	// TenantCommon is the multi-tenant endpoint that also serves personal
	// accounts; for access tokens it behaves like TenantOrganizations here.
	TenantCommon = "common"
)

// AnyTenant in AzureADConfig.AllowedTenants accepts tokens from every tenant.
// Only meaningful for multi-tenant issuers; spelled out so it is never the
// accidental result of an empty list.
const AnyTenant = "*"

// IssuerConfig is one trusted token issuer: exactly one of AzureAD and OIDC
// is set. It is plain data so that the policy package can build it from
// Issuer/ClusterIssuer objects.
type IssuerConfig struct {
	// Ref names the issuer for Claims.IssuerRef, status and errors:
	// "namespace/name" for an Issuer, "name" for a ClusterIssuer. Required
	// and unique within a Validator.
	Ref string
	// Namespace scopes the issuer's trust: ValidateFor accepts its tokens
	// only for workloads of this namespace (an Issuer). Empty means every
	// namespace (a ClusterIssuer).
	Namespace string
	// AzureAD configures a Microsoft Entra ID tenant (or multi-tenant app).
	AzureAD *AzureADConfig
	// OIDC configures a generic OpenID Connect issuer.
	OIDC *OIDCConfig
	// ClockSkew is the leeway applied to exp, nbf and iat. Zero means 60s;
	// negative is an error.
	ClockSkew time.Duration
	// Algorithms is the JWS alg allow-list. Empty means ["RS256"]. Allowed
	// members: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384,
	// ES512. "none" and HMAC algorithms are refused by Validate.
	Algorithms []string
}

// AzureADConfig trusts access tokens of a Microsoft Entra ID tenant.
type AzureADConfig struct {
	// TenantID is the directory (tenant) GUID, or "organizations" or
	// "common" for a multi-tenant application, which then needs
	// AllowedTenants. Required.
	TenantID string
	// Cloud selects the national cloud. Empty means AzurePublic. It fixes
	// the accepted iss formats even when AuthorityHost is set.
	Cloud Cloud
	// AuthorityHost overrides where the discovery documents and keys are
	// fetched from, e.g. "http://127.0.0.1:8400" for tools/devidp or an
	// egress proxy. It never changes which iss is accepted: discovery
	// documents served there must still name the cloud's real issuer.
	// Must be https, or http on a loopback address. Empty means the cloud's
	// authority.
	AuthorityHost string
	// Audiences lists the accepted aud values: the App ID URI
	// ("api://orders") and/or the application (client) ID GUID. v1 tokens
	// usually carry the App ID URI, v2 tokens the client ID. Required.
	Audiences []string
	// AcceptedVersions lists the accepted access-token versions, 1 and/or
	// 2. Empty means both: which one a client receives is decided by the
	// API's app registration (accessTokenAcceptedVersion, v1 by default),
	// and both are signed by the same tenant keys.
	AcceptedVersions []int
	// AllowedTenants lists the tenant GUIDs accepted by a multi-tenant
	// issuer; "*" accepts every tenant. Must be empty for a single tenant.
	AllowedTenants []string
}

// OIDCConfig trusts a generic OpenID Connect issuer.
type OIDCConfig struct {
	// Issuer is the exact iss value tokens carry. Unless JWKSURI is set,
	// keys are found through Issuer + "/.well-known/openid-configuration",
	// whose "issuer" must equal Issuer. Must be https, or http on a loopback
	// address. Required.
	Issuer string
	// JWKSURI, when set, is where keys are fetched from; discovery is then
	// skipped. Same scheme rule as Issuer. Empty means use discovery.
	JWKSURI string
	// Audiences lists the accepted aud values. Required.
	Audiences []string
}

// Config tunes a Validator; the issuers themselves are IssuerConfig values.
type Config struct {
	// MaxTokenSize refuses longer tokens before any parsing. Zero means
	// 16 KiB.
	MaxTokenSize int
	// MinRefresh and MaxRefresh bound how often key sets are refreshed:
	// the JWKS response's Cache-Control max-age is clamped into
	// [MinRefresh, MaxRefresh]; without one, one hour is used, clamped the
	// same way. Zero means 5m and 24h.
	MinRefresh time.Duration
	MaxRefresh time.Duration
	// UnknownKIDInterval is the minimum time between two refreshes of one
	// issuer's keys triggered by tokens naming an unknown kid (or arriving
	// while no usable key set exists). Zero means 10s.
	UnknownKIDInterval time.Duration
	// FetchTimeout bounds one refresh (discovery document and key set
	// together); a request waiting for a refresh never waits longer. Zero
	// means 5s.
	FetchTimeout time.Duration
	// MaxStaleness is how long the last good key set keeps being used
	// while refreshes fail; past it, tokens of that issuer are refused with
	// ReasonJWKSUnavailable. Zero means 24h.
	MaxStaleness time.Duration
	// HTTPClient fetches discovery documents and key sets. Nil means a
	// client with the default transport (proxy from the environment) that
	// follows no redirects.
	HTTPClient *http.Client
	// CacheEntries bounds the verified-token cache. Zero means 10000;
	// negative disables the cache.
	CacheEntries int
	// CacheBytes bounds the estimated memory of the verified-token cache.
	// Zero means 32 MiB.
	CacheBytes int64
	// Now is the clock for token times and key-set staleness. Nil means
	// time.Now.
	Now func() time.Time
	// Logger receives key refresh outcomes (never tokens). Nil means no
	// logging.
	Logger *slog.Logger
}

// Defaults applied to zero Config and IssuerConfig fields.
const (
	DefaultClockSkew          = 60 * time.Second
	DefaultMaxTokenSize       = 16 << 10
	DefaultMinRefresh         = 5 * time.Minute
	DefaultMaxRefresh         = 24 * time.Hour
	DefaultUnknownKIDInterval = 10 * time.Second
	DefaultFetchTimeout       = 5 * time.Second
	DefaultMaxStaleness       = 24 * time.Hour
	DefaultCacheEntries       = 10000
	DefaultCacheBytes         = 32 << 20
	defaultRefresh            = time.Hour
)

var supportedAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}

// Validate reports the first problem of c, or nil.
func (c Config) Validate() error {
	if c.MaxTokenSize < 0 {
		return fmt.Errorf("maxTokenSize %d: must not be negative", c.MaxTokenSize)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"minRefresh", c.MinRefresh}, {"maxRefresh", c.MaxRefresh},
		{"unknownKIDInterval", c.UnknownKIDInterval}, {"fetchTimeout", c.FetchTimeout},
		{"maxStaleness", c.MaxStaleness},
	} {
		if d.v < 0 {
			return fmt.Errorf("%s %v: must not be negative", d.name, d.v)
		}
	}
	n := c.withDefaults()
	if n.MinRefresh > n.MaxRefresh {
		return fmt.Errorf("minRefresh %v exceeds maxRefresh %v", n.MinRefresh, n.MaxRefresh)
	}
	if c.CacheBytes < 0 {
		return fmt.Errorf("cacheBytes %d: must not be negative", c.CacheBytes)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.MaxTokenSize == 0 {
		c.MaxTokenSize = DefaultMaxTokenSize
	}
	if c.MinRefresh == 0 {
		c.MinRefresh = DefaultMinRefresh
	}
	if c.MaxRefresh == 0 {
		c.MaxRefresh = DefaultMaxRefresh
	}
	if c.UnknownKIDInterval == 0 {
		c.UnknownKIDInterval = DefaultUnknownKIDInterval
	}
	if c.FetchTimeout == 0 {
		c.FetchTimeout = DefaultFetchTimeout
	}
	if c.MaxStaleness == 0 {
		c.MaxStaleness = DefaultMaxStaleness
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{
			Transport: http.DefaultTransport,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
	}
	if c.CacheEntries == 0 {
		c.CacheEntries = DefaultCacheEntries
	}
	if c.CacheBytes == 0 {
		c.CacheBytes = DefaultCacheBytes
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first problem of ic, or nil. Errors name the field
// the way the Issuer API spells it.
func (ic IssuerConfig) Validate() error {
	_, err := ic.normalize()
	return err
}

// normalized is an IssuerConfig with defaults applied and identifiers in
// canonical form.
type normalized struct {
	ref       string
	namespace string // "" for every namespace
	skew      time.Duration
	algs      []string
	audiences []string
	// sources: what to fetch and which iss each accepts.
	sources []sourceSpec
	// refused lists issuer strings this issuer recognises but does not
	// accept (versions left out of AcceptedVersions).
	refused []string
	// tenant is the single tenant (lowercase) or "" for multi-tenant.
	tenant string
	// allowed is the multi-tenant allow-list (lowercase); anyTenant when
	// "*" was given.
	allowed   []string
	anyTenant bool
	azure     bool
}

// sourceSpec says where one key set comes from and which iss it accepts.
type sourceSpec struct {
	// issuer is the expected discovery "issuer", possibly with {tenantid}.
	issuer string
	// discoveryURL is empty when jwksURI is fixed.
	discoveryURL string
	jwksURI      string
	// version is 1 or 2 for Azure AD, 0 for OIDC.
	version int
	// cloudAuthority and authority are set when AuthorityHost overrides the
	// cloud's authority: a jwks_uri on the cloud's authority (as a proxied
	// real discovery document names it) is then fetched from authority too.
	cloudAuthority, authority string
}

// key identifies a source for sharing between issuers and across updates.
func (s sourceSpec) key() string {
	return s.issuer + "\x00" + s.discoveryURL + "\x00" + s.jwksURI + "\x00" + s.authority
}

func (ic IssuerConfig) normalize() (*normalized, error) {
	n := &normalized{ref: ic.Ref, namespace: ic.Namespace}
	if ic.Ref == "" {
		return nil, errors.New("ref: must not be empty")
	}
	wrap := func(err error) error { return fmt.Errorf("issuer %s: %w", ic.Ref, err) }
	switch {
	case ic.ClockSkew < 0:
		return nil, wrap(fmt.Errorf("clockSkew %v: must not be negative", ic.ClockSkew))
	case ic.ClockSkew == 0:
		n.skew = DefaultClockSkew
	default:
		n.skew = ic.ClockSkew
	}
	n.algs = []string{"RS256"}
	if len(ic.Algorithms) > 0 {
		n.algs = nil
		for _, a := range ic.Algorithms {
			if !slices.Contains(supportedAlgs, a) {
				return nil, wrap(fmt.Errorf("algorithms: %q not supported (want one of %s)", a, strings.Join(supportedAlgs, ", ")))
			}
			if !slices.Contains(n.algs, a) {
				n.algs = append(n.algs, a)
			}
		}
	}
	switch {
	case ic.AzureAD != nil && ic.OIDC != nil:
		return nil, wrap(errors.New("azureAD and oidc are mutually exclusive"))
	case ic.AzureAD != nil:
		if err := ic.AzureAD.normalize(n); err != nil {
			return nil, wrap(fmt.Errorf("azureAD: %w", err))
		}
	case ic.OIDC != nil:
		if err := ic.OIDC.normalize(n); err != nil {
			return nil, wrap(fmt.Errorf("oidc: %w", err))
		}
	default:
		return nil, wrap(errors.New("one of azureAD and oidc is required"))
	}
	return n, nil
}

func (a *AzureADConfig) normalize(n *normalized) error {
	n.azure = true
	cloud := a.Cloud
	if cloud == "" {
		cloud = AzurePublic
	}
	ci, ok := clouds[cloud]
	if !ok {
		return fmt.Errorf("cloud %q: want AzurePublic, AzureUSGovernment or AzureChina", a.Cloud)
	}
	authority := ci.authority
	if a.AuthorityHost != "" {
		u, err := checkURL(a.AuthorityHost)
		if err != nil {
			return fmt.Errorf("authorityHost: %w", err)
		}
		if u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("authorityHost %q: want scheme://host[:port] only", a.AuthorityHost)
		}
		authority = u.Scheme + "://" + u.Host
	}
	tenant := strings.ToLower(a.TenantID)
	switch {
	case tenant == "":
		return errors.New("tenantID: must not be empty")
	case tenant == TenantOrganizations || tenant == TenantCommon:
		if len(a.AllowedTenants) == 0 {
			return fmt.Errorf("allowedTenants: required with tenantID %q (use %q to accept every tenant)", tenant, AnyTenant)
		}
		for _, t := range a.AllowedTenants {
			if t == AnyTenant {
				n.anyTenant = true
				continue
			}
			lt := strings.ToLower(t)
			if !isGUID(lt) {
				return fmt.Errorf("allowedTenants: %q is not a tenant GUID", t)
			}
			n.allowed = append(n.allowed, lt)
		}
	case isGUID(tenant):
		if len(a.AllowedTenants) > 0 {
			return fmt.Errorf("allowedTenants: only valid with tenantID %q or %q", TenantOrganizations, TenantCommon)
		}
		n.tenant = tenant
	default:
		return fmt.Errorf("tenantID %q: want a GUID, %q or %q", a.TenantID, TenantOrganizations, TenantCommon)
	}
	if len(a.Audiences) == 0 {
		return errors.New("audiences: at least one is required")
	}
	for _, aud := range a.Audiences {
		if aud == "" {
			return errors.New("audiences: empty value")
		}
	}
	n.audiences = slices.Clone(a.Audiences)
	versions := a.AcceptedVersions
	if len(versions) == 0 {
		versions = []int{1, 2}
	}
	for _, v := range versions {
		if v != 1 && v != 2 {
			return fmt.Errorf("acceptedVersions: %d is not 1 or 2", v)
		}
	}
	fill := func(tmpl string) string {
		if n.tenant == "" {
			return tmpl
		}
		return strings.Replace(tmpl, tenantTemplate, n.tenant, 1)
	}
	for _, v := range []int{1, 2} {
		var spec sourceSpec
		switch v {
		case 1:
			spec = sourceSpec{
				issuer:       fill(ci.v1Issuer),
				discoveryURL: authority + "/" + tenant + "/.well-known/openid-configuration",
				version:      1,
			}
		case 2:
			spec = sourceSpec{
				issuer:       fill(ci.v2Issuer),
				discoveryURL: authority + "/" + tenant + "/v2.0/.well-known/openid-configuration",
				version:      2,
			}
		}
		if authority != ci.authority {
			spec.cloudAuthority, spec.authority = ci.authority, authority
		}
		if slices.Contains(versions, v) {
			n.sources = append(n.sources, spec)
		} else {
			n.refused = append(n.refused, spec.issuer)
		}
	}
	return nil
}

func (o *OIDCConfig) normalize(n *normalized) error {
	if o.Issuer == "" {
		return errors.New("issuer: must not be empty")
	}
	if _, err := checkURL(o.Issuer); err != nil {
		return fmt.Errorf("issuer: %w", err)
	}
	if strings.Contains(o.Issuer, tenantTemplate) {
		return fmt.Errorf("issuer %q: templates are only supported for azureAD", o.Issuer)
	}
	spec := sourceSpec{issuer: o.Issuer}
	if o.JWKSURI != "" {
		if _, err := checkURL(o.JWKSURI); err != nil {
			return fmt.Errorf("jwksURI: %w", err)
		}
		spec.jwksURI = o.JWKSURI
	} else {
		spec.discoveryURL = strings.TrimSuffix(o.Issuer, "/") + "/.well-known/openid-configuration"
	}
	if len(o.Audiences) == 0 {
		return errors.New("audiences: at least one is required")
	}
	for _, aud := range o.Audiences {
		if aud == "" {
			return errors.New("audiences: empty value")
		}
	}
	n.audiences = slices.Clone(o.Audiences)
	n.sources = []sourceSpec{spec}
	return nil
}

// checkURL accepts absolute https URLs, and http ones whose host is a
// loopback address (tools/devidp, tests): keys must never travel in clear
// text over a network.
func checkURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("parse %q: %w", raw, err)
	}
	if u.Host == "" || u.User != nil {
		return nil, fmt.Errorf("%q: want an absolute URL without user info", raw)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopbackHost(u.Hostname()) {
			return nil, fmt.Errorf("%q: http is only allowed on loopback addresses", raw)
		}
	default:
		return nil, fmt.Errorf("%q: scheme must be https", raw)
	}
	return u, nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// isGUID reports whether s is a lowercase 8-4-4-4-12 hexadecimal GUID, the
// form Entra ID uses in tid and issuers.
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
