package policy

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/cel-go/cel"
	v1 "github.com/portcullis-mesh/portcullis/tokencheck/policy/apis/v1alpha1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Set is a compiled, immutable policy configuration. It is safe for
// concurrent use; build one with Compile and replace it whole (Store).
type Set struct {
	namespaces map[string]*nsIndex
	issuers    []Issuer
	issuerRefs []string
	policies   []*cpolicy // by namespace/name
	rules      int
}

// Issuer is a validated Issuer or ClusterIssuer of a Set.
type Issuer struct {
	// Ref is how tokencheck.Claims.IssuerRef names it: "namespace/name"
	// for an Issuer, "name" for a ClusterIssuer.
	Ref string
	// Namespace is empty for a ClusterIssuer.
	Namespace string
	Name      string
	Spec      v1.IssuerSpec
}

// nsIndex holds the policies of one namespace, split by what they do, so
// evaluation never looks at a policy that cannot apply.
type nsIndex struct {
	enforceDeny, enforceAllow, auditDeny, auditAllow group
}

// group indexes policies by one label their selector requires, so a
// workload only visits the policies whose required label it carries.
type group struct {
	unindexed []*cpolicy             // empty selectors and matchExpressions only; by ordinal
	byLabel   map[labelKV][]*cpolicy // by ordinal
	indexKeys []string               // the label keys of byLabel, sorted
	all       []*cpolicy             // by ordinal, for Capture
}

type labelKV struct{ key, value string }

func (g *group) add(p *cpolicy) {
	g.all = append(g.all, p)
	if p.indexKey == nil {
		g.unindexed = append(g.unindexed, p)
		return
	}
	if g.byLabel == nil {
		g.byLabel = make(map[labelKV][]*cpolicy)
	}
	if i, found := slices.BinarySearch(g.indexKeys, p.indexKey.key); !found {
		g.indexKeys = slices.Insert(g.indexKeys, i, p.indexKey.key)
	}
	g.byLabel[*p.indexKey] = append(g.byLabel[*p.indexKey], p)
}

func (g *group) empty() bool { return len(g.all) == 0 }

// cpolicy is a compiled AccessPolicy.
type cpolicy struct {
	ord       int
	key       string // namespace/name
	audit     bool
	deny      bool
	selector  labels.Selector // nil: every pod of the namespace
	indexKey  *labelKV        // one label the selector requires, if any
	allPorts  bool            // some rule has no port restriction (or no rules)
	ports     []uint16        // sorted union of rule ports, when !allPorts
	rules     []crule
	tokenRule bool // some rule needs a token
	// index narrows rules by port and path; nil for few rules.
	index *ruleIndex
	// invalid marks the deny-all stand-in of an invalid policy (Options.Quarantine).
	invalid bool
}

// quarantined returns the stand-in of an invalid AccessPolicy: it denies
// every request to the pods it selects, on every port.
func quarantined(ap *v1.AccessPolicy, ord int) *cpolicy {
	p := &cpolicy{ord: ord, key: ap.Namespace + "/" + ap.Name, deny: true, allPorts: true, rules: []crule{{}}, invalid: true}
	if sel := ap.Spec.Selector; sel != nil && (len(sel.MatchLabels) > 0 || len(sel.MatchExpressions) > 0) {
		if ls, err := metav1.LabelSelectorAsSelector(sel); err == nil {
			p.selector = ls
			if len(sel.MatchLabels) > 0 {
				k := slices.Sorted(mapKeys(sel.MatchLabels))[0]
				p.indexKey = &labelKV{key: k, value: sel.MatchLabels[k]}
			}
		}
	}
	return p
}

func (p *cpolicy) selects(w *Workload) bool {
	return p.selector == nil || p.selector.Matches(labels.Set(w.Labels))
}

func (p *cpolicy) coversPort(port uint16) bool {
	if p.allPorts {
		return true
	}
	_, ok := slices.BinarySearch(p.ports, port)
	return ok
}

// crule is a compiled Rule. Nil/empty fields do not constrain.
type crule struct {
	// from
	fromSet    bool
	workloads  memberSet[nsSA]
	namespaces memberSet[string]
	anonymous  bool
	// to
	ports   []uint16
	methods []string // upper case
	paths   *pathMatcher
	hosts   []hostPattern
	// when
	needsToken bool
	issuers    []string // Claims.IssuerRef values
	clients    *stringMatch
	roles      *stringMatch
	groups     *stringMatch
	scopes     *stringMatch
	claims     []claimMatch
	bound      bool
	expr       *compiledExpr
}

type claimMatch struct {
	name   string
	values []string
}

// Compile validates objs and compiles them into a Set. Every problem
// found is returned at once as an *Error; a configuration with any
// problem yields no Set.
func Compile(objs *Objects) (*Set, error) {
	return CompileWithOptions(objs, Options{})
}

// Options tune compilation.
type Options struct {
	// Quarantine keeps one bad object from freezing every update (the
	// Kubernetes mode, where objects arrive one by one and in any order).
	// An invalid AccessPolicy is then replaced by one that denies every
	// request to the workloads it selects (every pod of its namespace when
	// the selector itself is invalid), with ReasonInvalidPolicy; an
	// invalid Issuer is left out, so the policies naming it are invalid
	// too. Compile then returns the Set and an *Error listing the problems.
	// False (strict, local files) refuses the whole configuration instead.
	Quarantine bool
	// RestrictNamespacedIssuers refuses, on a namespaced Issuer, what
	// makes the node agent fetch from a URL of the Issuer author's
	// choosing beyond the issuer itself: azureAD.authorityHost,
	// oidc.jwksURI and http (loopback) oidc.issuer URLs. Whoever can
	// create an Issuer in one namespace could otherwise point the agent at
	// services reachable from the node (server-side request forgery).
	// ClusterIssuers may still use them. A namespaced oidc issuer is still
	// fetched from its https issuer URL and the jwks_uri its discovery
	// document names. False (the zero value) allows them on every Issuer,
	// as local files written by the node's administrator need.
	RestrictNamespacedIssuers bool
}

// CompileWithOptions is Compile with Options. With Quarantine it returns a
// Set whenever the objects could be looked at, together with the *Error of
// the quarantined objects (nil when there is none).
func CompileWithOptions(objs *Objects, opts Options) (*Set, error) {
	env, err := celEnv()
	if err != nil {
		return nil, err
	}
	c := &compiler{objs: objs, env: env, opts: opts, set: &Set{namespaces: make(map[string]*nsIndex)}}
	c.compile()
	if len(c.problems) == 0 {
		return c.set, nil
	}
	sortProblems(c.problems)
	if opts.Quarantine {
		return c.set, &Error{Problems: c.problems}
	}
	return nil, &Error{Problems: c.problems}
}

// Validate reports every problem of objs as an *Error, or nil. It is
// Compile without keeping the result: the API-server path and local files
// share it.
func Validate(objs *Objects) error {
	_, err := Compile(objs)
	return err
}

type compiler struct {
	opts     Options
	objs     *Objects
	env      *cel.Env
	set      *Set
	problems []Problem
	// issuer refs known, in Claims.IssuerRef form
	known map[string]bool
}

// report records a problem about object o at field path.
func (c *compiler) report(o any, kind, path, format string, args ...any) {
	p := Problem{Kind: kind, Field: path, Message: fmt.Sprintf(format, args...)}
	if m, ok := objectMeta(o); ok {
		p.Namespace, p.Name = m.Namespace, m.Name
	}
	if or, ok := c.objs.origins[o]; ok {
		p.File = or.file
		n := nodeAt(or.doc, path)
		p.Line, p.Column = n.Line, n.Column
	}
	c.problems = append(c.problems, p)
}

func (c *compiler) compile() {
	c.known = make(map[string]bool)
	seen := make(map[string]bool)
	dup := func(o any, kind string, m *metav1.ObjectMeta) bool {
		k := kind + " " + m.Namespace + "/" + m.Name
		if seen[k] {
			c.report(o, kind, "metadata.name", "duplicate name")
			return true
		}
		seen[k] = true
		return false
	}
	for _, is := range c.objs.Issuers {
		// Bad metadata leaves the Issuer out, as a bad spec does: kept
		// with an empty namespace, it would be trusted in every namespace
		// like a ClusterIssuer.
		before := len(c.problems)
		c.checkMeta(is, v1.KindIssuer, &is.ObjectMeta, true)
		if dup(is, v1.KindIssuer, &is.ObjectMeta) {
			continue
		}
		c.checkIssuerSpec(is, v1.KindIssuer, &is.Spec)
		if c.opts.RestrictNamespacedIssuers {
			c.checkNamespacedFetch(is, &is.Spec)
		}
		if len(c.problems) > before {
			continue
		}
		if is.Namespace == "" { // checkMeta refused it; never trust it cluster-wide
			continue
		}
		ref := is.Namespace + "/" + is.Name
		c.known[ref] = true
		c.set.issuers = append(c.set.issuers, Issuer{Ref: ref, Namespace: is.Namespace, Name: is.Name, Spec: *is.Spec.DeepCopy()})
	}
	for _, is := range c.objs.ClusterIssuers {
		c.checkMeta(is, v1.KindClusterIssuer, &is.ObjectMeta, false)
		if dup(is, v1.KindClusterIssuer, &is.ObjectMeta) {
			continue
		}
		before := len(c.problems)
		c.checkIssuerSpec(is, v1.KindClusterIssuer, &is.Spec)
		if len(c.problems) > before {
			continue
		}
		c.known[is.Name] = true
		c.set.issuers = append(c.set.issuers, Issuer{Ref: is.Name, Name: is.Name, Spec: *is.Spec.DeepCopy()})
	}
	slices.SortFunc(c.set.issuers, func(a, b Issuer) int { return cmp.Compare(a.Ref, b.Ref) })

	pols := slices.Clone(c.objs.AccessPolicies)
	slices.SortStableFunc(pols, func(a, b *v1.AccessPolicy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	refs := make(map[string]bool)
	for _, ap := range pols {
		c.checkMeta(ap, v1.KindAccessPolicy, &ap.ObjectMeta, true)
		if dup(ap, v1.KindAccessPolicy, &ap.ObjectMeta) {
			continue
		}
		p := c.compilePolicy(ap, len(c.set.policies), refs)
		if p == nil && c.opts.Quarantine {
			p = quarantined(ap, len(c.set.policies))
		}
		if p == nil {
			continue
		}
		c.set.policies = append(c.set.policies, p)
		c.set.rules += len(p.rules)
		ns := c.set.namespaces[ap.Namespace]
		if ns == nil {
			ns = &nsIndex{}
			c.set.namespaces[ap.Namespace] = ns
		}
		switch {
		case p.deny && p.audit:
			ns.auditDeny.add(p)
		case p.deny:
			ns.enforceDeny.add(p)
		case p.audit:
			ns.auditAllow.add(p)
		default:
			ns.enforceAllow.add(p)
		}
	}
	for r := range refs {
		c.set.issuerRefs = append(c.set.issuerRefs, r)
	}
	slices.Sort(c.set.issuerRefs)
}

func (c *compiler) checkMeta(o any, kind string, m *metav1.ObjectMeta, namespaced bool) {
	if m.Name == "" {
		c.report(o, kind, "metadata.name", "name is required")
	} else if errs := validation.IsDNS1123Subdomain(m.Name); len(errs) > 0 {
		c.report(o, kind, "metadata.name", "invalid name %q: %s", m.Name, strings.Join(errs, "; "))
	}
	switch {
	case namespaced && m.Namespace == "":
		c.report(o, kind, "metadata.namespace", "namespace is required")
	case namespaced:
		if errs := validation.IsDNS1123Label(m.Namespace); len(errs) > 0 {
			c.report(o, kind, "metadata.namespace", "invalid namespace %q: %s", m.Namespace, strings.Join(errs, "; "))
		}
	case m.Namespace != "":
		c.report(o, kind, "metadata.namespace", "%s is cluster-scoped: remove the namespace", kind)
	}
}

var (
	tenantRE = regexp.MustCompile(`^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|common|organizations)$`)
	guidRE   = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	// hostRE accepts an https authority, or http on loopback (a local
	// test issuer such as tools/devidp), like tokencheck does.
	hostRE = regexp.MustCompile(`^(https://[^/?#]+|http://(127\.[0-9.]+|localhost|\[::1\])(:[0-9]+)?)/?$`)
	// urlRE is the same rule for issuer and JWKS URLs with a path.
	urlRE    = regexp.MustCompile(`^(https://|http://(127\.[0-9.]+|localhost|\[::1\])(:[0-9]+)?(/|$))`)
	headerRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

// checkIssuerSpec mirrors the CRD schema (the API server checks it too;
// local mode has only this).
func (c *compiler) checkIssuerSpec(o any, kind string, s *v1.IssuerSpec) {
	before := len(c.problems)
	switch {
	case s.AzureAD == nil && s.OIDC == nil:
		c.report(o, kind, "spec", "exactly one of azureAD or oidc must be set")
	case s.AzureAD != nil && s.OIDC != nil:
		c.report(o, kind, "spec", "exactly one of azureAD or oidc must be set")
	}
	if a := s.AzureAD; a != nil {
		if !tenantRE.MatchString(a.TenantID) {
			c.report(o, kind, "spec.azureAD.tenantID", "invalid tenant ID %q: want a GUID, common or organizations", a.TenantID)
		}
		switch a.Cloud {
		case "", v1.AzureCloudPublic, v1.AzureCloudUSGovernment, v1.AzureCloudChina:
		default:
			c.report(o, kind, "spec.azureAD.cloud", "unsupported value %q: want AzurePublic, AzureUSGovernment or AzureChina", a.Cloud)
		}
		if a.AuthorityHost != "" && !hostRE.MatchString(a.AuthorityHost) {
			c.report(o, kind, "spec.azureAD.authorityHost", "invalid authority host %q: want https://host[:port] (or http on loopback)", a.AuthorityHost)
		}
		c.checkAudiences(o, kind, "spec.azureAD.audiences", a.Audiences)
		for i, v := range a.AcceptedVersions {
			if v != 1 && v != 2 {
				c.report(o, kind, fmt.Sprintf("spec.azureAD.acceptedVersions[%d]", i), "unsupported version %d: want 1 or 2", v)
			}
		}
		multi := a.TenantID == "common" || a.TenantID == "organizations"
		switch {
		case len(a.AllowedTenants) > 0 && !multi:
			c.report(o, kind, "spec.azureAD.allowedTenants", "allowedTenants is only valid with tenantID common or organizations")
		case len(a.AllowedTenants) == 0 && multi:
			c.report(o, kind, "spec.azureAD.tenantID", "tenantID %s requires allowedTenants (\"*\" accepts every tenant)", a.TenantID)
		}
		for i, t := range a.AllowedTenants {
			if t != "*" && !guidRE.MatchString(t) {
				c.report(o, kind, fmt.Sprintf("spec.azureAD.allowedTenants[%d]", i), "invalid tenant ID %q: want a GUID or \"*\"", t)
			}
		}
	}
	if oi := s.OIDC; oi != nil {
		if !urlRE.MatchString(oi.Issuer) {
			c.report(o, kind, "spec.oidc.issuer", "invalid issuer %q: want an https URL (or http on loopback)", oi.Issuer)
		}
		if oi.JWKSURI != "" && !urlRE.MatchString(oi.JWKSURI) {
			c.report(o, kind, "spec.oidc.jwksURI", "invalid JWKS URI %q: want an https URL (or http on loopback)", oi.JWKSURI)
		}
		c.checkAudiences(o, kind, "spec.oidc.audiences", oi.Audiences)
	}
	if s.ClockSkew != nil && (s.ClockSkew.Duration < 0 || s.ClockSkew.Duration > 10*time.Minute) {
		c.report(o, kind, "spec.clockSkew", "clock skew %s out of range: want 0 to 10m", s.ClockSkew.Duration)
	}
	for i, alg := range s.Algorithms {
		if !slices.Contains(supportedAlgorithms, alg) {
			c.report(o, kind, fmt.Sprintf("spec.algorithms[%d]", i), "unsupported algorithm %q: want one of %s", alg, strings.Join(supportedAlgorithms, ", "))
		}
	}
	for _, claim := range slices.Sorted(mapKeys(s.ForwardClaims)) {
		h := string(s.ForwardClaims[claim])
		switch {
		case len(h) > maxHeaderName:
			c.report(o, kind, "spec.forwardClaims["+claim+"]", "header name of %d bytes: at most %d", len(h), maxHeaderName)
		case !headerRE.MatchString(h):
			c.report(o, kind, "spec.forwardClaims["+claim+"]", "invalid header name %q", h)
		case reservedHeader(h) != "":
			c.report(o, kind, "spec.forwardClaims["+claim+"]", "header %q is reserved (%s): choose another name, such as X-Claim-%s", h, reservedHeader(h), claimHeaderSuffix(claim))
		case strings.IndexByte(h, '_') >= 0:
			// nginx, Apache and gunicorn drop such names and CGI-style
			// stacks read them as the '-' name, which the verifier would
			// not strip from the client: the claim would be forgeable.
			c.report(o, kind, "spec.forwardClaims["+claim+"]", "header %q has '_', which many servers drop or read as '-' (a client could then set the claim): use %q", h, strings.ReplaceAll(h, "_", "-"))
		}
	}
	if len(c.problems) > before {
		return
	}
	// The token checker has the last word on what it can run; its
	// message names the field as this API spells it.
	if err := issuerConfig("check", s).Validate(); err != nil {
		c.report(o, kind, "spec", "%s", strings.TrimPrefix(err.Error(), "issuer check: "))
	}
}

// rulePaths returns the path patterns a rule matches with: a Deny rule's
// are widened (denyPaths).
func rulePaths(paths []string, deny bool) []string {
	if deny && len(paths) > 0 {
		return denyPaths(paths)
	}
	return paths
}

// maxHeaderName mirrors the CRD's maxLength of a forwardClaims header.
const maxHeaderName = 256

// checkNamespacedFetch applies Options.RestrictNamespacedIssuers.
func (c *compiler) checkNamespacedFetch(o *v1.Issuer, s *v1.IssuerSpec) {
	const why = "only a ClusterIssuer may choose where the agent fetches keys from"
	if a := s.AzureAD; a != nil && a.AuthorityHost != "" {
		c.report(o, v1.KindIssuer, "spec.azureAD.authorityHost", "authorityHost is not allowed on a namespaced Issuer: %s", why)
	}
	if oi := s.OIDC; oi != nil {
		if oi.JWKSURI != "" {
			c.report(o, v1.KindIssuer, "spec.oidc.jwksURI", "jwksURI is not allowed on a namespaced Issuer: %s", why)
		}
		if strings.HasPrefix(oi.Issuer, "http://") {
			c.report(o, v1.KindIssuer, "spec.oidc.issuer", "an http issuer is not allowed on a namespaced Issuer: %s", why)
		}
	}
}

// supportedAlgorithms mirrors the CRD enum of IssuerSpec.Algorithms.
var supportedAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func (c *compiler) checkAudiences(o any, kind, path string, auds []string) {
	if len(auds) == 0 {
		c.report(o, kind, path, "at least one audience is required")
	}
	for i, a := range auds {
		if a == "" {
			c.report(o, kind, fmt.Sprintf("%s[%d]", path, i), "empty audience")
		}
	}
}

var (
	workloadRE  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$`)
	namespaceRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	methodRE    = regexp.MustCompile(`^[A-Za-z]+$`)
)

// compilePolicy checks and compiles one AccessPolicy; nil when it has
// problems (already reported).
func (c *compiler) compilePolicy(ap *v1.AccessPolicy, ord int, refs map[string]bool) *cpolicy {
	before := len(c.problems)
	const kind = v1.KindAccessPolicy
	report := func(path, format string, args ...any) { c.report(ap, kind, path, format, args...) }
	s := &ap.Spec
	p := &cpolicy{ord: ord, key: ap.Namespace + "/" + ap.Name}
	switch s.Mode {
	case "", v1.ModeEnforce:
	case v1.ModeAudit:
		p.audit = true
	default:
		report("spec.mode", "unsupported value %q: want Enforce or Audit", s.Mode)
	}
	switch s.Action {
	case "", v1.ActionAllow:
	case v1.ActionDeny:
		p.deny = true
	default:
		report("spec.action", "unsupported value %q: want Allow or Deny", s.Action)
	}
	if sel := s.Selector; sel != nil && (len(sel.MatchLabels) > 0 || len(sel.MatchExpressions) > 0) {
		ls, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			report("spec.selector", "invalid selector: %v", err)
		} else {
			p.selector = ls
		}
		if len(sel.MatchLabels) > 0 {
			k := slices.Sorted(mapKeys(sel.MatchLabels))[0]
			p.indexKey = &labelKV{key: k, value: sel.MatchLabels[k]}
		}
	}
	if len(s.Rules) == 0 {
		p.allPorts = true
	}
	if len(s.Rules) > maxRulesPerPolicy {
		report("spec.rules", "%d rules: at most %d per policy", len(s.Rules), maxRulesPerPolicy)
		return nil
	}
	ports := make(map[uint16]bool)
	for i := range s.Rules {
		r := c.compileRule(ap, fmt.Sprintf("spec.rules[%d]", i), &s.Rules[i], p.deny, refs)
		if len(r.ports) == 0 {
			p.allPorts = true
		}
		for _, port := range r.ports {
			ports[port] = true
		}
		p.tokenRule = p.tokenRule || r.needsToken
		p.rules = append(p.rules, r)
	}
	if !p.allPorts {
		for port := range ports {
			p.ports = append(p.ports, port)
		}
		slices.Sort(p.ports)
	}
	if len(c.problems) > before {
		return nil
	}
	if len(p.rules) >= ruleIndexMin {
		patterns := make([][]string, len(s.Rules))
		for i := range s.Rules {
			if s.Rules[i].To != nil {
				patterns[i] = rulePaths(s.Rules[i].To.Paths, p.deny)
			}
		}
		p.index = newRuleIndex(p.rules, patterns)
	}
	return p
}

func (c *compiler) compileRule(ap *v1.AccessPolicy, path string, r *v1.Rule, deny bool, refs map[string]bool) crule {
	const kind = v1.KindAccessPolicy
	report := func(field, format string, args ...any) { c.report(ap, kind, path+field, format, args...) }
	var cr crule
	if f := r.From; f != nil {
		cr.fromSet = true
		if len(f.Workloads) == 0 && len(f.Namespaces) == 0 && !f.Anonymous {
			report(".from", "from must list workloads, namespaces or anonymous: true")
		}
		for i, w := range f.Workloads {
			if !workloadRE.MatchString(w) {
				report(fmt.Sprintf(".from.workloads[%d]", i), "invalid workload %q: want namespace/serviceaccount", w)
			}
			ns, sa, _ := strings.Cut(w, "/")
			cr.workloads.add(nsSA{ns, sa})
		}
		for i, n := range f.Namespaces {
			if !namespaceRE.MatchString(n) {
				report(fmt.Sprintf(".from.namespaces[%d]", i), "invalid namespace %q", n)
			}
			cr.namespaces.add(n)
		}
		cr.anonymous = f.Anonymous
	}
	if t := r.To; t != nil {
		for i, port := range t.Ports {
			if port < 1 || port > 65535 {
				report(fmt.Sprintf(".to.ports[%d]", i), "port %d out of range 1-65535", port)
				continue
			}
			cr.ports = append(cr.ports, uint16(port))
		}
		slices.Sort(cr.ports)
		cr.ports = slices.Compact(cr.ports)
		for i, m := range t.Methods {
			if !methodRE.MatchString(m) {
				report(fmt.Sprintf(".to.methods[%d]", i), "invalid method %q", m)
			}
			cr.methods = append(cr.methods, strings.ToUpper(m))
		}
		for i, pth := range t.Paths {
			if err := checkPathPattern(pth); err != nil {
				report(fmt.Sprintf(".to.paths[%d]", i), "%v", err)
			}
		}
		if len(t.Paths) > 0 {
			cr.paths = newPathMatcher(rulePaths(t.Paths, deny))
		}
		for i, h := range t.Hosts {
			if err := checkHostPattern(h); err != nil {
				report(fmt.Sprintf(".to.hosts[%d]", i), "%v", err)
			}
		}
		cr.hosts = newHostPatterns(t.Hosts)
		if len(cr.hosts) == 0 {
			cr.hosts = nil
		}
	}
	w := r.When
	if w == nil {
		return cr
	}
	for i, ref := range w.Issuers {
		field := fmt.Sprintf(".when.issuers[%d]", i)
		var key string
		switch ref.Kind {
		case "", v1.KindIssuer:
			key = ap.Namespace + "/" + ref.Name
		case v1.KindClusterIssuer:
			key = ref.Name
		default:
			report(field+".kind", "unsupported kind %q: want Issuer or ClusterIssuer", ref.Kind)
			continue
		}
		if !c.known[key] {
			k := cmp.Or(ref.Kind, v1.KindIssuer)
			if k == v1.KindIssuer {
				report(field, "Issuer %q not found in namespace %q", ref.Name, ap.Namespace)
			} else {
				report(field, "ClusterIssuer %q not found", ref.Name)
			}
			continue
		}
		refs[key] = true
		cr.issuers = append(cr.issuers, key)
	}
	sm := func(field string, m *v1.StringMatch) *stringMatch {
		if m == nil {
			return nil
		}
		if len(m.AnyOf) == 0 && len(m.AllOf) == 0 {
			report(".when."+field, "anyOf or allOf must be non-empty")
		}
		return newStringMatch(m.AnyOf, m.AllOf)
	}
	cr.clients = sm("clients", w.Clients)
	cr.roles = sm("roles", w.Roles)
	cr.groups = sm("groups", w.Groups)
	cr.scopes = sm("scopes", w.Scopes)
	for i, cm := range w.Claims {
		if cm.Name == "" {
			report(fmt.Sprintf(".when.claims[%d].name", i), "claim name is required")
		}
		if len(cm.Values) == 0 {
			report(fmt.Sprintf(".when.claims[%d].values", i), "at least one value is required")
		}
		cr.claims = append(cr.claims, claimMatch{name: cm.Name, values: cm.Values})
	}
	cr.bound = w.TokenBoundToSource
	if cr.bound && deny {
		report(".when.tokenBoundToSource", "tokenBoundToSource is only meaningful in Allow policies")
	}
	if w.Expression != "" {
		e, err := compileExprCached(c.env, w.Expression)
		if err != nil {
			report(".when.expression", "%v", err)
		} else {
			cr.expr = e
		}
	}
	cr.needsToken = len(cr.issuers) > 0 || cr.clients != nil || cr.roles != nil || cr.groups != nil ||
		cr.scopes != nil || len(cr.claims) > 0 || cr.bound || (cr.expr != nil && cr.expr.usesClaims)
	return cr
}

// Rules returns the number of compiled rules. A nil Set has none.
func (s *Set) Rules() int {
	if s == nil {
		return 0
	}
	return s.rules
}

// Policies returns the number of compiled AccessPolicies.
func (s *Set) Policies() int {
	if s == nil {
		return 0
	}
	return len(s.policies)
}

// Issuers returns the validated Issuers and ClusterIssuers, by Ref.
func (s *Set) Issuers() []Issuer {
	if s == nil {
		return nil
	}
	return slices.Clone(s.issuers)
}

// IssuerRefs returns, sorted, the issuers that some rule names in
// when.issuers, in tokencheck.Claims.IssuerRef form.
func (s *Set) IssuerRefs() []string {
	if s == nil {
		return nil
	}
	return slices.Clone(s.issuerRefs)
}
