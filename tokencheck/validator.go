package tokencheck

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Validator validates bearer tokens against a live set of trusted issuers.
// It refreshes each issuer's keys in the background (one goroutine per
// distinct discovery document) and remembers verified tokens until they
// expire. All methods are safe for concurrent use.
type Validator struct {
	cfg   Config
	cache *tokenCache

	state atomic.Pointer[issuerSet]

	mu      sync.Mutex // serialises SetIssuers and Close
	sources map[string]*source
	closed  bool
}

// issuer is one configured IssuerConfig in force. When an update changes or
// removes it, it is retired, which invalidates the tokens it accepted.
type issuer struct {
	cfg     IssuerConfig
	n       *normalized
	sources []*source
	retired atomic.Bool
}

// route maps an iss (exact, or a {tenantid} template as prefix+suffix) to
// the issuer and source that accept it. A route without source recognises
// an issuer string of a version left out of AcceptedVersions.
type route struct {
	iss            *issuer
	src            *source
	prefix, suffix string // template routes only
	version        int
}

// issuerSet is an immutable snapshot of the trusted issuers.
type issuerSet struct {
	exact     map[string][]route
	templates []route
	issuers   []*issuer // sorted by Ref
}

// New returns a Validator trusting issuers and starts fetching their keys.
// Close stops it. Unlike SetIssuers, New fails if any issuer is invalid.
func New(cfg Config, issuers []IssuerConfig) (*Validator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tokencheck config: %w", err)
	}
	v := &Validator{cfg: cfg.withDefaults(), sources: map[string]*source{}}
	v.cache = newTokenCache(v.cfg.CacheEntries, v.cfg.CacheBytes)
	v.state.Store(&issuerSet{exact: map[string][]route{}})
	if err := v.SetIssuers(issuers); err != nil {
		v.Close()
		return nil, err
	}
	return v, nil
}

// SetIssuers replaces the trusted issuers. Issuers whose configuration is
// unchanged keep their keys and cached tokens; sources (discovery documents)
// still named by some issuer keep their keys.
//
// An invalid configuration, or a second one with the same Ref, is left out
// (its tokens are refused) while the others take effect: one broken Issuer
// object must not freeze every other. The returned error lists what was
// left out.
func (v *Validator) SetIssuers(cfgs []IssuerConfig) error {
	var errs []error
	var valid []IssuerConfig
	var norm []*normalized
	seen := map[string]bool{}
	for _, ic := range cfgs {
		n, err := ic.normalize()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[ic.Ref] {
			errs = append(errs, fmt.Errorf("issuer %s: duplicate ref", ic.Ref))
			continue
		}
		seen[ic.Ref] = true
		valid = append(valid, ic)
		norm = append(norm, n)
	}
	cfgs = valid

	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return errors.New("set issuers: validator closed")
	}
	old := v.state.Load()
	oldByRef := map[string]*issuer{}
	for _, is := range old.issuers {
		oldByRef[is.n.ref] = is
	}
	next := &issuerSet{exact: map[string][]route{}}
	kept := map[*issuer]bool{}
	for i, ic := range cfgs {
		is := oldByRef[ic.Ref]
		if is != nil && reflect.DeepEqual(is.cfg, ic) {
			kept[is] = true
		} else {
			is = &issuer{cfg: cloneIssuerConfig(ic), n: norm[i]}
			for _, spec := range is.n.sources {
				src := v.sources[spec.key()]
				if src == nil {
					src = newSource(spec, &v.cfg, v.purge)
					v.sources[spec.key()] = src
				}
				src.refs++
				is.sources = append(is.sources, src)
			}
		}
		next.issuers = append(next.issuers, is)
	}
	slices.SortFunc(next.issuers, func(a, b *issuer) int { return strings.Compare(a.n.ref, b.n.ref) })
	for _, is := range next.issuers {
		for i, spec := range is.n.sources {
			next.add(route{iss: is, src: is.sources[i], version: spec.version}, spec.issuer)
		}
		for _, iss := range is.n.refused {
			next.add(route{iss: is}, iss)
		}
	}
	v.state.Store(next)

	var stopped bool
	for _, is := range old.issuers {
		if kept[is] {
			continue
		}
		is.retired.Store(true)
		for _, src := range is.sources {
			src.refs--
			if src.refs == 0 {
				delete(v.sources, src.spec.key())
				src.stop()
				stopped = true
			}
		}
	}
	if len(next.issuers) > len(kept) && v.cache != nil {
		// An issuer was added (or replaced): the cached answer for a token
		// whose iss it accepts may no longer be the one a fresh validation
		// gives. A ClusterIssuer added for an iss a namespace's Issuer
		// accepted is tried first now, and must be the one named
		// (validateIn). Tokens of other iss keep their entries.
		var buf [4]route
		v.cache.drop(func(e *cacheEntry) bool {
			for _, rt := range next.lookup(e.claims.Issuer, buf[:0]) {
				if !kept[rt.iss] {
					return true
				}
			}
			return false
		})
	}
	if stopped || len(old.issuers) > len(kept) {
		v.purge()
	}
	return errors.Join(errs...)
}

func (s *issuerSet) add(r route, iss string) {
	if pre, suf, ok := strings.Cut(iss, tenantTemplate); ok {
		r.prefix, r.suffix = pre, suf
		s.templates = append(s.templates, r)
		return
	}
	s.exact[iss] = append(s.exact[iss], r)
}

// lookup returns the routes accepting iss; for template routes the filled
// tenant must look like a GUID (it is compared with tid later).
func (s *issuerSet) lookup(iss string, buf []route) []route {
	buf = append(buf, s.exact[iss]...)
	for _, r := range s.templates {
		if len(iss) > len(r.prefix)+len(r.suffix) && strings.HasPrefix(iss, r.prefix) && strings.HasSuffix(iss, r.suffix) &&
			isGUID(iss[len(r.prefix):len(iss)-len(r.suffix)]) {
			buf = append(buf, r)
		}
	}
	return buf
}

func cloneIssuerConfig(ic IssuerConfig) IssuerConfig {
	ic.Algorithms = slices.Clone(ic.Algorithms)
	if ic.AzureAD != nil {
		a := *ic.AzureAD
		a.Audiences = slices.Clone(a.Audiences)
		a.AcceptedVersions = slices.Clone(a.AcceptedVersions)
		a.AllowedTenants = slices.Clone(a.AllowedTenants)
		ic.AzureAD = &a
	}
	if ic.OIDC != nil {
		o := *ic.OIDC
		o.Audiences = slices.Clone(o.Audiences)
		ic.OIDC = &o
	}
	return ic
}

func (v *Validator) purge() {
	if v.cache != nil {
		v.cache.purge(v.cfg.Now().UnixNano())
	}
}

// Close stops every background refresh and waits for it. Afterwards every
// token is refused with ReasonWrongIssuer.
func (v *Validator) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	v.closed = true
	old := v.state.Swap(&issuerSet{exact: map[string][]route{}})
	for _, is := range old.issuers {
		is.retired.Store(true)
	}
	for k, src := range v.sources {
		src.stop()
		delete(v.sources, k)
	}
	v.purge()
	return nil
}

// WaitReady waits until every issuer's first key fetch has ended (with or
// without keys), or ctx is done. It lets an agent report readiness only
// once tokens can be judged on their merits.
func (v *Validator) WaitReady(ctx context.Context) error {
	for _, is := range v.state.Load().issuers {
		for _, src := range is.sources {
			for {
				src.mu.Lock()
				done, attempted := src.inflight, !src.lastAttempt.IsZero()
				src.mu.Unlock()
				if attempted || done == nil {
					break
				}
				select {
				case <-done:
				case <-ctx.Done():
					return fmt.Errorf("wait for keys of %s: %w", is.n.ref, ctx.Err())
				}
			}
		}
	}
	return nil
}

// Validate checks raw (the bearer token, without "Bearer ") against every
// configured issuer, whatever its namespace, and returns its claims, or a
// Reason and an *Error saying why it is refused. It is for tools that look
// at a token outside any workload (a debug API); authorization decisions
// must use ValidateFor, which keeps a namespaced issuer's trust inside its
// namespace. The issuer is chosen as ValidateFor does, over all issuers.
func (v *Validator) Validate(ctx context.Context, raw string) (*Claims, Reason, error) {
	return v.validateIn(ctx, raw, scope{all: true})
}

// ValidateFor checks raw (the bearer token, without "Bearer ") for a
// workload of namespace and returns its claims, or a Reason and an *Error
// saying why it is refused. Only the issuers trusted for that namespace
// are considered: those without IssuerConfig.Namespace (ClusterIssuers)
// and those of namespace itself. An issuer of another namespace can
// neither accept a token here nor shadow one that accepts the same iss.
//
// The issuer is chosen by the token's iss (and tid for multi-tenant
// issuers): the first issuer in scope that accepts the token, trying those
// of every namespace before the namespace's own, each in Ref order. Then
// everything is checked against that issuer's own configuration and keys.
//
// A token seen before and still valid is answered from memory without
// allocating, when the issuer that accepted it is in scope. Otherwise
// ValidateFor may wait, bounded by ctx and FetchTimeout, for a key refresh
// when the token names a kid the issuer's key set lacks (rate-limited per
// issuer by UnknownKIDInterval).
//
// The returned Claims are shared between callers and must not be modified.
// An accepted raw is kept in the cache until exp: pass the header value
// itself, not a slice of a larger buffer that should not stay in memory.
func (v *Validator) ValidateFor(ctx context.Context, raw, namespace string) (*Claims, Reason, error) {
	return v.validateIn(ctx, raw, scope{namespace: namespace})
}

// scope is the set of issuers a validation may use: every issuer (all), or
// those of every namespace and those of namespace.
type scope struct {
	all       bool
	namespace string
}

func (s scope) has(is *issuer) bool {
	return s.all || is.n.namespace == "" || is.n.namespace == s.namespace
}

func (v *Validator) validateIn(ctx context.Context, raw string, sc scope) (*Claims, Reason, error) {
	if raw == "" {
		return nil, ReasonMissingToken, ErrMissingToken
	}
	if len(raw) > v.cfg.MaxTokenSize {
		r, err := refuse(ReasonTokenTooLarge, "%d bytes, limit %d", len(raw), v.cfg.MaxTokenSize)
		return nil, r, err
	}
	now := v.cfg.Now()
	// The cache holds one answer per token. It is the answer for every
	// scope that includes its issuer: issuers of every namespace are tried
	// first, in a fixed order, so one accepted by such an issuer is
	// accepted by the same one whatever the namespace; one accepted by a
	// namespace's issuer was refused by every issuer of every namespace.
	// SetIssuers drops the entries of the iss an issuer it adds accepts,
	// whose answer that could change.
	if v.cache != nil {
		if c := v.cache.get(raw, now.UnixNano(), sc); c != nil {
			return c, ReasonNone, nil
		}
	}
	return v.validate(ctx, raw, now, sc)
}

func (v *Validator) validate(ctx context.Context, raw string, now time.Time, sc scope) (*Claims, Reason, error) {
	t, r, err := parseToken(raw)
	if err != nil {
		return nil, r, err
	}
	var buf [4]route
	routes := v.state.Load().lookup(t.claims.Issuer, buf[:0])
	var firstReason Reason
	var firstErr error
	tried := false
	// Issuers of every namespace first, then those of the namespace (see
	// validateIn for why the order is fixed this way).
	for _, cluster := range [...]bool{true, false} {
		for _, rt := range routes {
			if (rt.iss.n.namespace == "") != cluster || !sc.has(rt.iss) {
				continue
			}
			tried = true
			if rt.src == nil {
				r, err = refuse(ReasonVersionNotAccepted, "issuer %s does not accept tokens of iss %q", rt.iss.n.ref, t.claims.Issuer)
			} else {
				var k *key
				k, r, err = v.check(ctx, rt, t, now)
				if err == nil {
					c := t.claims
					c.IssuerRef = rt.iss.n.ref
					if exp := time.Unix(t.exp, 0).UnixNano(); v.cache != nil && exp > now.UnixNano() {
						v.cache.put(raw, c, exp, k, rt.iss, now.UnixNano())
					}
					return c, ReasonNone, nil
				}
			}
			// Several issuers may accept one iss (say, a ClusterIssuer and
			// a namespace's Issuer trusting one tenant for different
			// audiences): report the refusal of the one that got
			// furthest, and the first of those.
			if firstErr == nil || stage(r) > stage(firstReason) {
				firstReason, firstErr = r, err
			}
		}
	}
	if !tried {
		if len(routes) > 0 {
			r, err := refuse(ReasonWrongIssuer, "iss %q is not trusted in namespace %q", clip(t.claims.Issuer), sc.namespace)
			return nil, r, err
		}
		r, err := refuse(ReasonWrongIssuer, "iss %q is not trusted", clip(t.claims.Issuer))
		return nil, r, err
	}
	return nil, firstReason, firstErr
}

// stage orders refusals by how far checking got before them.
func stage(r Reason) int {
	switch r {
	case ReasonVersionNotAccepted:
		return 0
	case ReasonAlgNotAllowed:
		return 1
	case ReasonJWKSUnavailable:
		return 2
	case ReasonUnknownKID:
		return 3
	case ReasonBadSignature:
		return 4
	case ReasonExpired, ReasonNotYetValid:
		return 5
	case ReasonNotAccessToken:
		return 6
	case ReasonWrongIssuer:
		return 7
	case ReasonWrongAudience:
		return 8
	case ReasonTenantNotAllowed:
		return 9
	}
	return 0
}

// check verifies t against one route: key, signature, then claims.
func (v *Validator) check(ctx context.Context, rt route, t *token, now time.Time) (*key, Reason, error) {
	is, src, c := rt.iss, rt.src, t.claims
	if !slices.Contains(is.n.algs, t.hdr.Alg) {
		r, err := refuse(ReasonAlgNotAllowed, "issuer %s does not allow alg %s", is.n.ref, t.hdr.Alg)
		return nil, r, err
	}
	ks := src.usable(now)
	if ks == nil {
		src.awaitRefresh(ctx)
		if ks = src.usable(v.cfg.Now()); ks == nil {
			r, err := refuse(ReasonJWKSUnavailable, "issuer %s has no current key set", is.n.ref)
			return nil, r, err
		}
	}
	k := ks.keys[t.hdr.Kid]
	if k == nil {
		src.awaitRefresh(ctx)
		if ks = src.usable(v.cfg.Now()); ks != nil {
			k = ks.keys[t.hdr.Kid]
		}
		if k == nil {
			r, err := refuse(ReasonUnknownKID, "issuer %s has no key %q", is.n.ref, clip(t.hdr.Kid))
			return nil, r, err
		}
	}
	if k.alg != "" && k.alg != t.hdr.Alg {
		r, err := refuse(ReasonAlgNotAllowed, "key %s of issuer %s is for %s, token uses %s", k.kid, is.n.ref, k.alg, t.hdr.Alg)
		return nil, r, err
	}
	if !verifySignature(k.pub, t.hdr.Alg, t.signingInput, t.sig) {
		r, err := refuse(ReasonBadSignature, "signature does not verify with key %s of issuer %s", k.kid, is.n.ref)
		return nil, r, err
	}
	skew := int64(is.n.skew / time.Second)
	sec := now.Unix()
	if sec > t.exp+skew {
		r, err := refuse(ReasonExpired, "exp %s is before now %s (skew %v)", time.Unix(t.exp, 0).UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), is.n.skew)
		return nil, r, err
	}
	if t.hasNbf && t.nbf > sec+skew {
		r, err := refuse(ReasonNotYetValid, "nbf %s is after now %s (skew %v)", time.Unix(t.nbf, 0).UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), is.n.skew)
		return nil, r, err
	}
	if t.hasIat && t.iat > sec+skew {
		r, err := refuse(ReasonNotYetValid, "iat %s is after now %s (skew %v)", time.Unix(t.iat, 0).UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), is.n.skew)
		return nil, r, err
	}
	if is.n.azure {
		if c.ClientID == "" {
			// Entra access tokens always name the calling application;
			// ID tokens do not, and their aud is the client ID an API may
			// list among its audiences.
			r, err := refuse(ReasonNotAccessToken, "no azp or appid claim: not an access token")
			return nil, r, err
		}
		if want := [...]string{"", "1.0", "2.0"}[rt.version]; c.Version != want {
			r, err := refuse(ReasonWrongIssuer, "ver %q disagrees with iss %q (want %q)", clip(c.Version), c.Issuer, want)
			return nil, r, err
		}
		if r, err := checkTenantConsistent(rt, c); err != nil {
			return nil, r, err
		}
	}
	if !slices.ContainsFunc(c.Audience, func(a string) bool { return slices.Contains(is.n.audiences, a) }) {
		r, err := refuse(ReasonWrongAudience, "aud %q is not an audience of issuer %s", clipList(c.Audience), is.n.ref)
		return nil, r, err
	}
	if n := is.n; n.azure && n.tenant == "" && !n.anyTenant && !slices.Contains(n.allowed, c.TenantID) {
		r, err := refuse(ReasonTenantNotAllowed, "tenant %s is not allowed by issuer %s", c.TenantID, n.ref)
		return nil, r, err
	}
	return k, ReasonNone, nil
}

// checkTenantConsistent ties tid to iss: the issuer's own tenant, or the
// tenant filled into a {tenantid} template.
func checkTenantConsistent(rt route, c *Claims) (Reason, error) {
	n := rt.iss.n
	if n.tenant != "" {
		if c.TenantID != n.tenant {
			return refuse(ReasonWrongIssuer, "tid %q disagrees with iss %q", clip(c.TenantID), c.Issuer)
		}
		return ReasonNone, nil
	}
	filled := c.Issuer[len(rt.prefix) : len(c.Issuer)-len(rt.suffix)]
	if c.TenantID != filled {
		return refuse(ReasonWrongIssuer, "tid %q disagrees with iss %q", clip(c.TenantID), c.Issuer)
	}
	return ReasonNone, nil
}

func clipList(l []string) string {
	if len(l) > 4 {
		l = l[:4]
	}
	out := make([]string, len(l))
	for i, s := range l {
		out[i] = clip(s)
	}
	return strings.Join(out, ",")
}
