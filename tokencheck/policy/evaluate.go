package policy

import (
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/tokencheck"
)

// Workload is the destination pod as policies select it.
type Workload struct {
	// Namespace of the pod.
	Namespace string
	// Labels of the pod; nil means none.
	Labels map[string]string
	// DefaultDeny is true when the pod's namespace enforces by default
	// (portcullis.dev/enforce=enabled): a request is then refused with
	// ReasonNoPolicy unless an enforced Allow policy selects the pod and
	// port (and a rule matches). Deny-only and Audit-mode policies never
	// open such a pod. False means a pod no policy selects is not captured.
	DefaultDeny bool
}

// Input is everything a decision depends on. Evaluate only reads it.
type Input struct {
	// Workload is the destination pod.
	Workload Workload
	// Port is the destination port the connection was made to.
	Port uint16
	// Method, Path and Host are the request's method (as sent), path
	// (without the query, already normalised by the caller) and Host /
	// :authority header.
	Method string
	Path   string
	Host   string
	// Headers are the request headers, visible to CEL expressions only.
	Headers http.Header
	// Source is the caller as established by the datapath, never by
	// anything the client sent.
	Source identity.Source
	// Claims are the claims of a valid bearer token; nil means there is
	// no valid token.
	Claims *tokencheck.Claims
	// TokenReason says why Claims is nil: tokencheck.ReasonMissingToken
	// (or empty) when no token was sent, another reason when the token
	// was refused.
	TokenReason tokencheck.Reason
}

// tokenInvalid reports whether a token was sent and refused.
func (in *Input) tokenInvalid() bool {
	return in.Claims == nil && in.TokenReason != tokencheck.ReasonNone && in.TokenReason != tokencheck.ReasonMissingToken
}

// Outcome is what happens to the request. The zero value is OutcomeDeny,
// so a forgotten Decision fails closed.
type Outcome uint8

const (
	// OutcomeDeny refuses the request.
	OutcomeDeny Outcome = iota
	// OutcomeAllow forwards the request to the workload.
	OutcomeAllow
)

func (o Outcome) String() string {
	if o == OutcomeAllow {
		return "allow"
	}
	return "deny"
}

// Status is the HTTP status of a decision.
type Status uint16

const (
	// StatusOK: the request goes through.
	StatusOK Status = http.StatusOK
	// StatusUnauthenticated: a valid token is required and there is none
	// (RFC 6750 invalid_token).
	StatusUnauthenticated Status = http.StatusUnauthorized
	// StatusForbidden: the request is not allowed (RFC 6750
	// insufficient_scope when a token was presented).
	StatusForbidden Status = http.StatusForbidden
)

// Mode says whether a decision is enforced or reported only.
type Mode uint8

const (
	// ModeEnforce: the decision is what happens.
	ModeEnforce Mode = iota
	// ModeAudit: an Audit-mode policy decided; the request goes through
	// and AuditOutcome/AuditStatus say what enforcing would have done.
	ModeAudit
)

func (m Mode) String() string {
	if m == ModeAudit {
		return "audit"
	}
	return "enforce"
}

// Reason says why a decision was made. Values are stable snake_case
// strings, bounded, for audit records and metric labels.
type Reason string

const (
	// ReasonNotCaptured: no policy selects the workload and port.
	ReasonNotCaptured Reason = "not_captured"
	// ReasonNoPolicy: the workload's namespace enforces by default
	// (Workload.DefaultDeny) and no enforced Allow policy selects the
	// workload and port.
	ReasonNoPolicy Reason = "no_policy"
	// ReasonAllowed: the request matched an Allow rule.
	ReasonAllowed Reason = "allowed"
	// ReasonNoAllowPolicy: only Deny policies select the workload and
	// port, and none matched.
	ReasonNoAllowPolicy Reason = "no_allow_policy"
	// ReasonDenied: the request matched a Deny rule.
	ReasonDenied Reason = "denied"
	// ReasonNoMatchingRule: Allow policies select the workload and port
	// and no rule matched.
	ReasonNoMatchingRule Reason = "no_matching_rule"
	// ReasonTokenMissing: a rule that could allow (or deny) the request
	// needs a token and none was sent.
	ReasonTokenMissing Reason = "token_missing"
	// ReasonTokenInvalid: a rule needs a token and the one sent was
	// refused; Decision.TokenReason says why.
	ReasonTokenInvalid Reason = "token_invalid"
	// ReasonGroupOverage: a rule needs groups and the token has the
	// overage form instead of the list.
	ReasonGroupOverage Reason = Reason(tokencheck.ReasonGroupOverage)
	// ReasonTokenNotBound: tokenBoundToSource and the token's client is
	// not the calling workload's client ID (a replayed token).
	ReasonTokenNotBound Reason = "token_not_bound_to_source"
	// ReasonInvalidPolicy: an invalid AccessPolicy selects the workload;
	// compiled with Options.Quarantine, it denies everything until fixed.
	ReasonInvalidPolicy Reason = "invalid_policy"
	// ReasonExpressionError: a CEL expression failed to evaluate (e.g. a
	// missing key or the cost limit); the rule failed closed.
	ReasonExpressionError Reason = "expression_error"
)

// Decision is the answer for one request.
type Decision struct {
	// Outcome and Status are what is enforced.
	Outcome Outcome
	Status  Status
	// Reason says why; with ModeAudit it is the reason of the would-be
	// decision.
	Reason Reason
	// TokenReason is, for ReasonTokenInvalid/ReasonTokenMissing, why there
	// is no valid token, and tokencheck.ReasonGroupOverage for
	// ReasonGroupOverage; empty otherwise.
	TokenReason tokencheck.Reason
	// Policy ("namespace/name") and Rule (index in spec.rules) name the
	// rule that decided; "" and -1 when no single rule did.
	Policy string
	Rule   int
	// Mode is ModeAudit when an Audit-mode policy decided: then Outcome is
	// OutcomeAllow and AuditOutcome/AuditStatus are the would-be values.
	Mode         Mode
	AuditOutcome Outcome
	AuditStatus  Status
	// Captured is false when no policy selects the workload and port and
	// its namespace does not enforce by default: the datapath should not
	// have sent the request here at all.
	Captured bool
}

// Allowed reports whether the request goes through.
func (d Decision) Allowed() bool { return d.Outcome == OutcomeAllow }

// failure is the first field of a rule that did not match.
type failure uint8

const (
	fNone failure = iota
	fPort
	fFrom
	fMethod
	fPath
	fHost
	// The failures below happen after the caller and destination matched.
	fNoToken
	fIssuer
	fClient
	fRole
	fGroup
	fScope
	fClaim
	fExpr
	// Specific failures: reported as the reason of a 403.
	fExprError
	fNotBound
	fGroupOverage
)

var failureFields = [...]string{
	fNone:         "",
	fPort:         "to.ports",
	fFrom:         "from",
	fMethod:       "to.methods",
	fPath:         "to.paths",
	fHost:         "to.hosts",
	fNoToken:      "when (no valid token)",
	fIssuer:       "when.issuers",
	fClient:       "when.clients",
	fRole:         "when.roles",
	fGroup:        "when.groups",
	fScope:        "when.scopes",
	fClaim:        "when.claims",
	fExpr:         "when.expression",
	fExprError:    "when.expression (error)",
	fNotBound:     "when.tokenBoundToSource",
	fGroupOverage: "when.groups (group overage)",
}

func (f failure) String() string { return failureFields[f] }

// matchRule returns fNone when r matches, or the first field that fails.
func matchRule(r *crule, in *Input) failure {
	if len(r.ports) > 0 {
		if _, ok := slices.BinarySearch(r.ports, in.Port); !ok {
			return fPort
		}
	}
	if r.fromSet && !r.matchFrom(&in.Source) {
		return fFrom
	}
	if len(r.methods) > 0 && !anyEqualFold(r.methods, in.Method) {
		return fMethod
	}
	if r.paths != nil && !r.paths.match(in.Path) {
		return fPath
	}
	if r.hosts != nil && !matchHosts(r.hosts, in.Host) {
		return fHost
	}
	if !r.needsToken {
		return r.evalExpr(in)
	}
	c := in.Claims
	if c == nil {
		return fNoToken
	}
	if len(r.issuers) > 0 && !slices.Contains(r.issuers, c.IssuerRef) {
		return fIssuer
	}
	if r.clients != nil && !r.clients.matchOne(c.ClientID) {
		return fClient
	}
	if r.roles != nil && !r.roles.match(c.Roles) {
		return fRole
	}
	if r.groups != nil {
		if c.GroupOverage {
			return fGroupOverage
		}
		if !r.groups.match(c.Groups) {
			return fGroup
		}
	}
	if r.scopes != nil && !r.scopes.match(c.Scopes) {
		return fScope
	}
	for i := range r.claims {
		if !matchClaim(c.Raw[r.claims[i].name], r.claims[i].values) {
			return fClaim
		}
	}
	if r.bound && (in.Source.Anonymous || in.Source.ClientID == "" || c.ClientID != in.Source.ClientID) {
		return fNotBound
	}
	return r.evalExpr(in)
}

func (r *crule) evalExpr(in *Input) failure {
	if r.expr == nil {
		return fNone
	}
	ok, err := r.expr.eval(in)
	switch {
	case err != nil:
		return fExprError
	case !ok:
		return fExpr
	}
	return fNone
}

func (r *crule) matchFrom(s *identity.Source) bool {
	if s.Anonymous || s.Namespace == "" {
		return r.anonymous
	}
	return r.namespaces.has(s.Namespace) || r.workloads.has(nsSA{s.Namespace, s.ServiceAccount})
}

// nsSA keys workloads without building "ns/sa" strings per request.
type nsSA struct{ ns, sa string }

func anyEqualFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

func (m *stringMatch) matchOne(v string) bool {
	if len(m.anyOf) > 0 {
		if _, ok := slices.BinarySearch(m.anyOf, v); !ok {
			return false
		}
	}
	for _, want := range m.allOf {
		if want != v {
			return false
		}
	}
	return true
}

// matchClaim reports whether a decoded JSON claim value (or, for a list,
// one of its elements) formats to one of values.
func matchClaim(v any, values []string) bool {
	switch v := v.(type) {
	case nil:
		return false
	case []any:
		for _, el := range v {
			if matchClaim(el, values) {
				return true
			}
		}
		return false
	case []string:
		for _, el := range v {
			if slices.Contains(values, el) {
				return true
			}
		}
		return false
	case string:
		return slices.Contains(values, v)
	case bool:
		return slices.Contains(values, strconv.FormatBool(v))
	case float64:
		return slices.Contains(values, strconv.FormatFloat(v, 'f', -1, 64))
	case interface{ String() string }: // json.Number
		return slices.Contains(values, v.String())
	}
	return false
}

// groupResult accumulates what one group of policies said.
type groupResult struct {
	selected bool
	// match is the first matching rule (lowest policy ordinal); for Deny
	// groups matchFail is fGroupOverage/fExprError when it matched by
	// failing closed.
	match     *cpolicy
	rule      int
	matchFail failure
	// needToken: a rule whose caller and destination matched needs a
	// token the request does not have.
	needToken bool
	// best is the most specific token failure seen, and its rule.
	best       failure
	bestPolicy *cpolicy
	bestRule   int
}

func (g *groupResult) merge(o *groupResult) {
	g.selected = g.selected || o.selected
	g.needToken = g.needToken || o.needToken
	if o.match != nil && (g.match == nil || o.match.ord < g.match.ord) {
		g.match, g.rule, g.matchFail = o.match, o.rule, o.matchFail
	}
	if o.best > g.best {
		g.best, g.bestPolicy, g.bestRule = o.best, o.bestPolicy, o.bestRule
	}
}

// tracer collects an explanation; nil on the fast path.
type tracer struct {
	rules []RuleTrace
}

func evalGroup(g *group, in *Input, deny, audit bool, res *groupResult, tr *tracer) {
	if g.empty() {
		return
	}
	evalList(g.unindexed, in, deny, audit, res, tr)
	// Usually few label keys index policies ("app"): look those up in the
	// workload's labels; otherwise look the workload's labels up.
	if len(g.indexKeys) > len(in.Workload.Labels) {
		for k, v := range in.Workload.Labels {
			if list := g.byLabel[labelKV{k, v}]; list != nil {
				evalList(list, in, deny, audit, res, tr)
			}
		}
		return
	}
	for _, k := range g.indexKeys {
		if v, ok := in.Workload.Labels[k]; ok {
			if list := g.byLabel[labelKV{k, v}]; list != nil {
				evalList(list, in, deny, audit, res, tr)
			}
		}
	}
}

func evalList(list []*cpolicy, in *Input, deny, audit bool, res *groupResult, tr *tracer) {
	for _, p := range list {
		if res.match != nil && p.ord > res.match.ord && tr == nil {
			return // sorted by ordinal: nothing later can win
		}
		if !p.coversPort(in.Port) || !p.selects(&in.Workload) {
			continue
		}
		res.selected = true
		if p.index != nil && tr == nil {
			evalIndexed(p, in, deny, res)
			continue
		}
		for i := range p.rules {
			f := matchRule(&p.rules[i], in)
			matched := res.record(p, i, f, deny, in)
			if tr != nil {
				tr.add(p, i, deny, audit, matched, f)
			}
			if matched {
				break
			}
		}
	}
}

// record notes the outcome f of rule i of p and reports whether the rule
// matched (for a Deny rule, also by failing closed).
func (res *groupResult) record(p *cpolicy, i int, f failure, deny bool, in *Input) bool {
	if f == fNone || (deny && (f == fGroupOverage || f == fExprError)) {
		if res.match == nil || p.ord < res.match.ord {
			res.match, res.rule, res.matchFail = p, i, f
		}
		return true
	}
	switch {
	case f == fNoToken:
		if !deny || in.tokenInvalid() {
			res.needToken = true
		}
	case f > fNoToken && f > res.best && !deny:
		res.best, res.bestPolicy, res.bestRule = f, p, i
	}
	return false
}

// evalIndexed is the rule loop of evalList for a policy with a ruleIndex:
// only rules whose port and path can match are looked at. Rules left out
// would fail on port or path, which never makes a token needed nor gives
// a specific reason, so the outcome is the one of the full loop.
func evalIndexed(p *cpolicy, in *Input, deny bool, res *groupResult) {
	cand := p.index.candidates(in.Port, in.Path)
	for i := cand.next(0, p.index.words); i >= 0; i = cand.next(i+1, p.index.words) {
		if res.record(p, i, matchRule(&p.rules[i], in), deny, in) {
			return
		}
	}
}

// Evaluate decides one request. It is a pure function of its arguments,
// safe for concurrent use, and does not allocate unless a CEL expression
// runs. A nil Set captures nothing.
func Evaluate(s *Set, in Input) Decision {
	return s.decide(&in, nil)
}

func (s *Set) decide(in *Input, tr *tracer) Decision {
	if s == nil {
		return uncaptured(in)
	}
	ns := s.namespaces[in.Workload.Namespace]
	if ns == nil {
		return uncaptured(in)
	}
	var deny, allow groupResult
	evalGroup(&ns.enforceDeny, in, true, false, &deny, tr)
	if d, done := denyDecision(&deny, in); done {
		if tr != nil {
			tr.rest(ns, in, true)
		}
		return d
	}
	evalGroup(&ns.enforceAllow, in, false, false, &allow, tr)
	// An enforced refusal stands whatever the Audit policies say, the
	// default deny of an enforced namespace included: Audit only ever
	// reports on top of what is enforced.
	enforced := allowDecision(&deny, &allow, in)
	if enforced.Outcome == OutcomeDeny || (ns.auditDeny.empty() && ns.auditAllow.empty()) {
		if tr != nil {
			tr.rest(ns, in, false)
		}
		return enforced
	}
	var adeny, aallow groupResult
	evalGroup(&ns.auditDeny, in, true, true, &adeny, tr)
	evalGroup(&ns.auditAllow, in, false, true, &aallow, tr)
	if !adeny.selected && !aallow.selected {
		return enforced
	}
	adeny.merge(&deny)
	aallow.merge(&allow)
	would, done := denyDecision(&adeny, in)
	if !done {
		would = allowDecision(&adeny, &aallow, in)
	}
	if would.Outcome == enforced.Outcome && enforced.Captured {
		return enforced
	}
	audited := would
	audited.Mode = ModeAudit
	audited.AuditOutcome, audited.AuditStatus = would.Outcome, would.Status
	audited.Outcome, audited.Status = OutcomeAllow, StatusOK
	audited.Captured = true
	return audited
}

var (
	notCaptured = Decision{Outcome: OutcomeAllow, Status: StatusOK, Reason: ReasonNotCaptured, Rule: -1}
	noPolicy    = Decision{Outcome: OutcomeDeny, Status: StatusForbidden, Reason: ReasonNoPolicy, Rule: -1, Captured: true}
)

// uncaptured is the decision when no policy selects the workload and port.
func uncaptured(in *Input) Decision {
	if in.Workload.DefaultDeny {
		return noPolicy
	}
	return notCaptured
}

// denyDecision returns the decision of the Deny policies, if they made one.
func denyDecision(g *groupResult, in *Input) (Decision, bool) {
	switch {
	case g.match != nil:
		d := Decision{Outcome: OutcomeDeny, Status: StatusForbidden, Reason: ReasonDenied, Policy: g.match.key, Rule: g.rule, Captured: true}
		switch {
		case g.match.invalid:
			d.Reason = ReasonInvalidPolicy
		case g.matchFail == fGroupOverage:
			d.Reason, d.TokenReason = ReasonGroupOverage, tokencheck.ReasonGroupOverage
		case g.matchFail == fExprError:
			d.Reason = ReasonExpressionError
		}
		return d, true
	case g.needToken:
		return unauthenticated(in, "", -1), true
	}
	return Decision{}, false
}

func unauthenticated(in *Input, policy string, rule int) Decision {
	d := Decision{Outcome: OutcomeDeny, Status: StatusUnauthenticated, Reason: ReasonTokenMissing,
		TokenReason: tokencheck.ReasonMissingToken, Policy: policy, Rule: rule, Captured: true}
	if in.tokenInvalid() {
		d.Reason, d.TokenReason = ReasonTokenInvalid, in.TokenReason
	}
	return d
}

// allowDecision combines the Allow policies once no Deny matched. Without
// a selecting Allow policy, a default-deny workload is refused.
func allowDecision(deny, allow *groupResult, in *Input) Decision {
	switch {
	case !allow.selected && (in.Workload.DefaultDeny || !deny.selected):
		return uncaptured(in)
	case !allow.selected:
		return Decision{Outcome: OutcomeAllow, Status: StatusOK, Reason: ReasonNoAllowPolicy, Rule: -1, Captured: true}
	case allow.match != nil:
		return Decision{Outcome: OutcomeAllow, Status: StatusOK, Reason: ReasonAllowed, Policy: allow.match.key, Rule: allow.rule, Captured: true}
	case allow.needToken && in.Claims == nil:
		return unauthenticated(in, "", -1)
	}
	d := Decision{Outcome: OutcomeDeny, Status: StatusForbidden, Reason: ReasonNoMatchingRule, Rule: -1, Captured: true}
	switch allow.best {
	case fGroupOverage:
		d.Reason, d.TokenReason = ReasonGroupOverage, tokencheck.ReasonGroupOverage
	case fNotBound:
		d.Reason = ReasonTokenNotBound
	case fExprError:
		d.Reason = ReasonExpressionError
	default:
		return d
	}
	d.Policy, d.Rule = allow.bestPolicy.key, allow.bestRule
	return d
}

// RuleTrace says how one candidate rule fared.
type RuleTrace struct {
	// Policy is "namespace/name"; Rule the index in spec.rules.
	Policy string
	Rule   int
	// Action is "Allow" or "Deny"; Mode the policy's mode.
	Action string
	Mode   Mode
	// Matched is true when the rule matched the request (for a Deny rule,
	// also when it matched by failing closed).
	Matched bool
	// Failed names the first field that did not match ("to.paths",
	// "when.roles", ...), or that failed closed; empty when it matched
	// outright.
	Failed string
}

// rest traces the groups an early decision skipped, so an explanation
// shows every candidate rule: the enforced Allow policies (when a Deny
// decided) and the audited ones.
func (t *tracer) rest(ns *nsIndex, in *Input, allowToo bool) {
	var scratch groupResult
	if allowToo {
		evalGroup(&ns.enforceAllow, in, false, false, &scratch, t)
	}
	evalGroup(&ns.auditDeny, in, true, true, &scratch, t)
	evalGroup(&ns.auditAllow, in, false, true, &scratch, t)
}

func (t *tracer) add(p *cpolicy, rule int, deny, audit, matched bool, f failure) {
	rt := RuleTrace{Policy: p.key, Rule: rule, Action: "Allow", Matched: matched, Failed: f.String()}
	if deny {
		rt.Action = "Deny"
	}
	if audit {
		rt.Mode = ModeAudit
	}
	t.rules = append(t.rules, rt)
}

// Explanation is a decision with the trace of every candidate rule: the
// rules of the policies that select the workload and port.
type Explanation struct {
	Decision Decision
	Rules    []RuleTrace
}

// Explain is Evaluate with a trace, for the debug CLI. It evaluates every
// candidate rule (Evaluate stops at the first decisive match, and skips
// rules its index rules out), grouped in evaluation order: enforced Deny,
// enforced Allow, audited Deny, audited Allow; within a policy, rules after
// the first matching one are not listed.
func Explain(s *Set, in Input) Explanation {
	tr := &tracer{}
	d := s.decide(&in, tr)
	return Explanation{Decision: d, Rules: tr.rules}
}

// Capture says which ports of a workload the policies select.
type Capture struct {
	// Selected is true when at least one policy (any action or mode)
	// selects the workload.
	Selected bool
	// AllPorts is true when a selecting policy applies to every port;
	// otherwise Ports lists the selected ports, sorted.
	AllPorts bool
	Ports    []uint16
}

// Capture tells the agent which pods and ports to enroll in the datapath.
func (s *Set) Capture(w Workload) Capture {
	var c Capture
	if s == nil {
		return c
	}
	ns := s.namespaces[w.Namespace]
	if ns == nil {
		return c
	}
	for _, g := range []*group{&ns.enforceDeny, &ns.enforceAllow, &ns.auditDeny, &ns.auditAllow} {
		for _, p := range g.all {
			if !p.selects(&w) {
				continue
			}
			c.Selected = true
			if p.allPorts {
				c.AllPorts = true
			}
			c.Ports = append(c.Ports, p.ports...)
		}
	}
	if c.AllPorts {
		c.Ports = nil
		return c
	}
	slices.Sort(c.Ports)
	c.Ports = slices.Compact(c.Ports)
	return c
}
