// Package authz joins token validation (tokencheck) and the policy engine
// (tokencheck/policy) into the verifier's Authorizer: for one request it
// validates the bearer token if one was sent, evaluates the policy set in
// force for the destination workload, and turns the outcome into the
// verifier's Decision, with the forwardClaims headers of the accepting
// issuer. An Issuer vouches only for the workloads of its own namespace; a
// ClusterIssuer for every workload.
package authz

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portcullis-mesh/portcullis/agent/verifier"
	"github.com/portcullis-mesh/portcullis/tokencheck"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

// TokenValidator validates bearer tokens; *tokencheck.Validator is one.
//
// When it also implements ScopedTokenValidator, as *tokencheck.Validator
// does, the Engine asks it only about the issuers trusted for the
// workload's namespace. Otherwise the claims of a token accepted by an
// issuer of another namespace are dropped after the fact: trust stays
// scoped, but such an issuer can then shadow an in-scope one that accepts
// the same iss.
type TokenValidator interface {
	Validate(ctx context.Context, raw string) (*tokencheck.Claims, tokencheck.Reason, error)
}

// ScopedTokenValidator validates a bearer token for a workload of a
// namespace, with only the issuers trusted there (see
// tokencheck.Validator.ValidateFor).
type ScopedTokenValidator interface {
	ValidateFor(ctx context.Context, raw, namespace string) (*tokencheck.Claims, tokencheck.Reason, error)
}

// Engine decides requests for every workload of the node. It is safe for
// concurrent use.
type Engine struct {
	tokens TokenValidator
	store  *policy.Store
	// view caches what Engine derives from the Set in force (forwardClaims
	// by issuer), rebuilt when the Set pointer changes.
	view atomic.Pointer[setView]
	mu   sync.Mutex // serialises rebuilding view
}

type setView struct {
	set     *policy.Set
	issuers map[string]policy.Issuer  // by ref
	forward map[string][]forwardClaim // issuer ref → claims to forward
	// cluster is the forwardClaims headers of the ClusterIssuers, which
	// apply to every workload; byNS adds, for each namespace that has
	// Issuers, theirs. An Issuer's headers are stripped only from the
	// requests of its own namespace's workloads: it is trusted nowhere else.
	cluster stripHeaders
	byNS    map[string]*stripHeaders
}

// stripHeaders is a set of forwardClaims header names.
type stripHeaders struct {
	names []string        // sorted, unique ignoring case
	set   map[string]bool // names, canonical: verifier.Decision.Strip
}

// stripFor returns the claim headers of the issuers trusted in namespace.
func (v *setView) stripFor(namespace string) *stripHeaders {
	if h, ok := v.byNS[namespace]; ok {
		return h
	}
	return &v.cluster
}

// trustedIn reports whether the issuer named ref is in the set and may
// vouch for tokens sent to a workload of namespace.
func (v *setView) trustedIn(ref, namespace string) bool {
	is, ok := v.issuers[ref]
	return ok && is.TrustedIn(namespace)
}

type forwardClaim struct{ claim, header string }

// New returns an Engine over a token validator and a policy store.
func New(tokens TokenValidator, store *policy.Store) *Engine {
	return &Engine{tokens: tokens, store: store}
}

func (e *Engine) current() *setView {
	set := e.store.Load()
	if v := e.view.Load(); v != nil && v.set == set {
		return v
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if v := e.view.Load(); v != nil && v.set == set {
		return v
	}
	v := buildView(set)
	e.view.Store(v)
	return v
}

func buildView(set *policy.Set) *setView {
	v := &setView{set: set, issuers: map[string]policy.Issuer{}, forward: map[string][]forwardClaim{}}
	if set == nil {
		return v
	}
	var cluster []string
	namespaced := map[string][]string{}
	for _, is := range set.Issuers() {
		v.issuers[is.Ref] = is
		claims := make([]string, 0, len(is.Spec.ForwardClaims))
		for c := range is.Spec.ForwardClaims {
			claims = append(claims, c)
		}
		sort.Strings(claims)
		for _, c := range claims {
			h := string(is.Spec.ForwardClaims[c])
			v.forward[is.Ref] = append(v.forward[is.Ref], forwardClaim{claim: c, header: h})
			if is.Namespace == "" {
				cluster = append(cluster, h)
			} else {
				namespaced[is.Namespace] = append(namespaced[is.Namespace], h)
			}
		}
	}
	v.cluster = newStripHeaders(cluster)
	// A namespace whose Issuers forward no claims gets cluster's list.
	if len(namespaced) > 0 {
		v.byNS = make(map[string]*stripHeaders, len(namespaced))
	}
	for ns, names := range namespaced {
		h := newStripHeaders(append(names, cluster...))
		v.byNS[ns] = &h
	}
	return v
}

func newStripHeaders(names []string) stripHeaders {
	var h stripHeaders
	seen := map[string]bool{}
	for _, n := range names {
		if !seen[strings.ToLower(n)] {
			seen[strings.ToLower(n)] = true
			h.names = append(h.names, n)
		}
	}
	sort.Strings(h.names)
	for _, n := range h.names {
		if h.set == nil {
			h.set = make(map[string]bool, len(h.names))
		}
		h.set[http.CanonicalHeaderKey(n)] = true
	}
	return h
}

// Workload is the destination as the Engine needs it: its key and what
// policies select on. The agent keeps one per enrolled pod and replaces it
// when labels change.
type Workload struct {
	Key    string
	Policy policy.Workload
	// NamespaceEnforced is true when the workload's namespace carries
	// portcullis.dev/enforce=enabled: it is captured even when no policy
	// selects it, and nothing is allowed (ReasonNoPolicy) unless an
	// enforced Allow policy selects it and a rule matches
	// (policy.Workload.DefaultDeny).
	NamespaceEnforced bool
}

// ReasonNoPolicy refuses requests to a workload of an enforced namespace
// that no enforced Allow policy selects: enforcement by namespace is
// default-deny.
const ReasonNoPolicy = "no_policy" // policy.ReasonNoPolicy, untyped

// For returns the verifier.Authorizer of one workload. w is read on every
// request, so label changes apply to the next request.
func (e *Engine) For(w *atomic.Pointer[Workload]) *Authorizer {
	return &Authorizer{e: e, w: w}
}

// Authorizer decides the requests of one workload (Engine.For). Besides
// the verifier.Authorizer method, it has AuthorizeStrip.
type Authorizer struct {
	e *Engine
	w *atomic.Pointer[Workload]
}

// Authorize decides one request.
func (a *Authorizer) Authorize(ctx context.Context, r *verifier.Request) verifier.Decision {
	return a.e.Authorize(ctx, a.w.Load(), r)
}

// AuthorizeStrip is Engine.AuthorizeStrip for this workload.
func (a *Authorizer) AuthorizeStrip(ctx context.Context, r *verifier.Request) (verifier.Decision, []string) {
	return a.e.AuthorizeStrip(ctx, a.w.Load(), r)
}

// ForL4 returns the L4 authorizer of one workload's passthrough ports: only
// the `from` part of policies can match, since there is no request or token.
func (e *Engine) ForL4(w *atomic.Pointer[Workload]) verifier.L4Authorizer {
	return verifier.L4AuthorizerFunc(func(ctx context.Context, c *verifier.ConnRequest) verifier.Decision {
		return e.Authorize(ctx, w.Load(), &verifier.Request{
			Workload:    c.Workload,
			Source:      c.Source,
			SourceAddr:  c.SourceAddr,
			Destination: c.Destination,
			Protocol:    verifier.TCP,
		})
	})
}

// Input builds the policy input of a request, validating its token. It is
// what Authorize evaluates, exposed so that the debug API's Explain sees
// exactly what the live path sees.
func (e *Engine) Input(ctx context.Context, w *Workload, r *verifier.Request) (policy.Input, time.Duration) {
	in := policy.Input{
		Port:    r.Destination.Port(),
		Method:  r.Method,
		Path:    r.Path,
		Host:    r.Host,
		Headers: r.Header,
		Source:  r.Source,
	}
	if w != nil {
		in.Workload = w.Policy
		in.Workload.DefaultDeny = w.NamespaceEnforced
	}
	if r.Token == "" {
		in.TokenReason = tokencheck.ReasonMissingToken
		return in, 0
	}
	start := time.Now()
	var claims *tokencheck.Claims
	var reason tokencheck.Reason
	if sv, ok := e.tokens.(ScopedTokenValidator); ok {
		claims, reason, _ = sv.ValidateFor(ctx, r.Token, in.Workload.Namespace)
	} else {
		claims, reason, _ = e.tokens.Validate(ctx, r.Token)
	}
	in.Claims, in.TokenReason = claims, reason
	return in, time.Since(start)
}

// Authorize decides one request for workload w.
func (e *Engine) Authorize(ctx context.Context, w *Workload, r *verifier.Request) verifier.Decision {
	d, _ := e.AuthorizeStrip(ctx, w, r)
	return d
}

// AuthorizeStrip is Authorize that also returns the forwardClaims header
// names (sorted, shared: do not modify) of the issuers trusted for w's
// namespace in the very policy set that made the decision: those whose
// client-sent copies must be removed from this request (Decision.Strip).
// They cannot lag behind the set in force.
func (e *Engine) AuthorizeStrip(ctx context.Context, w *Workload, r *verifier.Request) (verifier.Decision, []string) {
	in, _ := e.Input(ctx, w, r)
	v := e.current()
	_, d := e.decide(v, in)
	return d, v.stripFor(in.Workload.Namespace).names
}

// ReasonNoPolicySet is the reason of every refusal while no valid policy
// set has ever been loaded: nothing can be allowed (fail closed).
const ReasonNoPolicySet = "no_policy_set"

// Decide evaluates an input against the set in force and returns both the
// policy's decision (with its rule trace available through Explain) and the
// verifier's.
//
// Claims accepted by an issuer the set does not trust for the workload's
// namespace (an Issuer of another namespace, or one no longer in the set)
// count as a token refused with wrong_issuer: they neither satisfy a rule
// nor have their forwardClaims applied.
func (e *Engine) Decide(in policy.Input) (policy.Decision, verifier.Decision) {
	return e.decide(e.current(), in)
}

func (e *Engine) decide(v *setView, in policy.Input) (policy.Decision, verifier.Decision) {
	if v.set == nil {
		d := policy.Decision{Outcome: policy.OutcomeDeny, Status: policy.StatusForbidden, Reason: ReasonNoPolicySet, Rule: -1}
		return d, verifier.Decision{Status: int(d.Status), Reason: ReasonNoPolicySet}
	}
	if c := in.Claims; c != nil && !v.trustedIn(c.IssuerRef, in.Workload.Namespace) {
		in.Claims, in.TokenReason = nil, tokencheck.ReasonWrongIssuer
	}
	d := policy.Evaluate(v.set, in)
	return d, e.convert(v, in, d)
}

// Set returns the policy set in force (nil before the first valid one).
func (e *Engine) Set() *policy.Set { return e.current().set }

// Convert turns a policy decision into the verifier's.
func (e *Engine) convert(v *setView, in policy.Input, d policy.Decision) verifier.Decision {
	out := verifier.Decision{
		Allow:  d.Allowed(),
		Policy: d.Policy,
		Reason: verifier.Reason(d.Reason),
		// Client copies of the claim headers of every issuer trusted in
		// the workload's namespace are removed, whether or not this token
		// has the claim.
		Strip: v.stripFor(in.Workload.Namespace).set,
	}
	if d.Rule >= 0 {
		out.Rule = strconv.Itoa(d.Rule)
	}
	status := d.Status
	if d.Mode == policy.ModeAudit {
		out.Mode = verifier.AuditOnly
		// The record shows the would-be decision; the verifier forwards
		// anyway because Mode is AuditOnly.
		out.Allow = d.AuditOutcome == policy.OutcomeAllow
		status = d.AuditStatus
	}
	if !out.Allow {
		out.Status = int(status)
		// 401s say why the token was refused (expired, wrong_audience…),
		// which is what a client developer needs to fix it.
		out.Reason = verifier.Reason(d.ReportedReason())
	} else {
		out.Reason = verifier.ReasonNone
	}
	if c := in.Claims; c != nil {
		out.Token = verifier.TokenInfo{Issuer: c.Issuer, Tenant: c.TenantID, ObjectID: c.ObjectID, Subject: c.Subject, ClientID: c.ClientID}
		if out.Allow {
			for _, fc := range v.forward[c.IssuerRef] {
				if val, ok := claimString(c, fc.claim); ok {
					out.Headers = append(out.Headers, verifier.HeaderField{Name: fc.header, Value: val})
				}
			}
		}
	}
	return out
}

// claimString renders a claim for a header: strings as they are, lists
// joined by commas, numbers and booleans in JSON form. Objects are not
// forwarded.
func claimString(c *tokencheck.Claims, name string) (string, bool) {
	raw, ok := c.Raw[name]
	if !ok {
		return "", false
	}
	switch x := raw.(type) {
	case string:
		return x, true
	case []any:
		parts := make([]string, 0, len(x))
		for _, e := range x {
			if s, ok := e.(string); ok {
				parts = append(parts, s)
			}
		}
		return strings.Join(parts, ","), len(parts) > 0
	case []string:
		return strings.Join(x, ","), len(x) > 0
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case bool:
		return strconv.FormatBool(x), true
	case fmt.Stringer:
		return x.String(), true
	}
	return "", false
}
