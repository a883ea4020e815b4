package debugapi

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/tokencheck"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

// ExplainEnv is what the evaluator needs beyond an ExplainRequest: what the
// agent knows about the workloads and what became of the token. The agent's
// Backend.Explain and the CLI's offline explain both fill one and call
// Explain, so the two cannot disagree on how a request is read.
type ExplainEnv struct {
	// TrustDomain of SPIFFE IDs; empty means identity.DefaultTrustDomain.
	TrustDomain string
	// Labels of the destination pod; nil means none.
	Labels map[string]string
	// SourceClientID is the calling workload's Entra Workload ID client ID,
	// used when the request does not give one; empty means none.
	SourceClientID string
	// Claims of the token (validated, or given as claims); nil means no
	// valid token.
	Claims *tokencheck.Claims
	// TokenReason says why Claims is nil: empty or ReasonMissingToken when
	// no token was given.
	TokenReason tokencheck.Reason
	// Token is the verdict reported in the response; nil when the request
	// carried neither a token nor claims.
	Token *debugv1.TokenVerdict
	// DefaultDeny is true when the destination's namespace is enforced by
	// default (portcullis.dev/enforce=enabled): policy.Workload.DefaultDeny.
	// False (offline, where namespaces are unknown) evaluates without it.
	DefaultDeny bool
}

// Source returns the caller identity an ExplainRequest names: anonymous
// when req.Source is empty or "anonymous", else namespace/serviceaccount in
// trustDomain. req must have passed ValidateExplain.
func Source(req *debugv1.ExplainRequest, trustDomain, clientID string) identity.Source {
	ns, sa, ok := strings.Cut(req.GetSource(), "/")
	if !ok {
		return identity.AnonymousSource
	}
	if req.GetSourceClientId() != "" {
		clientID = req.GetSourceClientId()
	}
	return identity.Source{
		ID:             identity.SPIFFEID(trustDomain, ns, sa),
		Namespace:      ns,
		ServiceAccount: sa,
		ClientID:       clientID,
	}
}

// Input builds the policy input of req. req must have passed
// ValidateExplain.
func Input(req *debugv1.ExplainRequest, env ExplainEnv) policy.Input {
	ns, _, _ := strings.Cut(req.GetWorkload(), "/")
	var h http.Header
	if len(req.GetHeaders()) > 0 {
		h = make(http.Header, len(req.GetHeaders()))
		for k, v := range req.GetHeaders() {
			h.Set(k, v)
		}
	}
	reason := env.TokenReason
	if env.Claims == nil && reason == tokencheck.ReasonNone {
		reason = tokencheck.ReasonMissingToken
	}
	return policy.Input{
		Workload:    policy.Workload{Namespace: ns, Labels: env.Labels, DefaultDeny: env.DefaultDeny},
		Port:        uint16(req.GetPort()),
		Method:      req.GetMethod(),
		Path:        req.GetPath(),
		Host:        req.GetHost(),
		Headers:     h,
		Source:      Source(req, env.TrustDomain, env.SourceClientID),
		Claims:      env.Claims,
		TokenReason: reason,
	}
}

// Explain evaluates req against set with a trace of every candidate rule.
// req must have passed ValidateExplain.
func Explain(set *policy.Set, req *debugv1.ExplainRequest, env ExplainEnv) *debugv1.ExplainResponse {
	in := Input(req, env)
	ex := policy.Explain(set, in)
	d := ex.Decision
	resp := &debugv1.ExplainResponse{
		Decision:    d.Outcome.String(),
		Reason:      d.ReportedReason(),
		Status:      uint32(d.Status),
		Policy:      d.Policy,
		Rule:        int32(d.Rule),
		Mode:        d.Mode.String(),
		Token:       env.Token,
		Captured:    d.Captured,
		TokenReason: string(d.TokenReason),
	}
	if d.Mode == policy.ModeAudit {
		resp.WouldDeny = d.AuditOutcome == policy.OutcomeDeny
		resp.AuditStatus = uint32(d.AuditStatus)
	}
	for _, rt := range ex.Rules {
		resp.Trace = append(resp.Trace, &debugv1.RuleTrace{
			Policy:      rt.Policy,
			Action:      rt.Action,
			Mode:        rt.Mode.String(),
			Rule:        int32(rt.Rule),
			Matched:     rt.Matched,
			FailedField: rt.Failed,
			Detail:      traceDetail(rt, &in),
		})
	}
	return resp
}

// traceDetail says in words why a rule did or did not match, from the
// field the evaluator names and the request.
func traceDetail(rt policy.RuleTrace, in *policy.Input) string {
	if rt.Matched {
		if rt.Failed != "" {
			return "matched by failing closed on " + rt.Failed
		}
		return "matched"
	}
	c := in.Claims
	switch rt.Failed {
	case "to.ports":
		return fmt.Sprintf("port %d is not among the rule's ports", in.Port)
	case "from":
		return fmt.Sprintf("caller %s is not among the rule's sources", in.Source)
	case "to.methods":
		return fmt.Sprintf("method %s is not among the rule's methods", in.Method)
	case "to.paths":
		return fmt.Sprintf("path %s matches none of the rule's paths", in.Path)
	case "to.hosts":
		return fmt.Sprintf("host %q matches none of the rule's hosts", in.Host)
	case "when (no valid token)":
		if in.TokenReason == tokencheck.ReasonMissingToken || in.TokenReason == tokencheck.ReasonNone {
			return "the rule needs a valid token and none was given"
		}
		return fmt.Sprintf("the rule needs a valid token and the token was refused (%s)", in.TokenReason)
	}
	if c == nil {
		return "the rule's token conditions need a valid token"
	}
	switch rt.Failed {
	case "when.issuers":
		return fmt.Sprintf("token issuer %s is not among the rule's issuers", cellOr(c.IssuerRef, c.Issuer))
	case "when.clients":
		return fmt.Sprintf("calling application %s is not among the rule's clients", cellOr(c.ClientID, "(none)"))
	case "when.roles":
		return fmt.Sprintf("token roles %s do not satisfy the rule's roles", listOf(c.Roles))
	case "when.groups":
		return fmt.Sprintf("token groups %s do not satisfy the rule's groups", listOf(c.Groups))
	case "when.scopes":
		return fmt.Sprintf("token scopes %s do not satisfy the rule's scopes", listOf(c.Scopes))
	case "when.claims":
		return "a claims condition did not match"
	case "when.expression":
		return "the CEL expression returned false"
	case "when.expression (error)":
		return "the CEL expression failed to evaluate; the rule fails closed"
	case "when.tokenBoundToSource":
		return fmt.Sprintf("token client %s is not the caller's workload client ID %s", cellOr(c.ClientID, "(none)"), cellOr(in.Source.ClientID, "(none)"))
	case "when.groups (group overage)":
		return "the token carries the group overage form instead of its groups"
	}
	return "did not match on " + rt.Failed
}

func cellOr(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}

func listOf(s []string) string { return "[" + strings.Join(s, " ") + "]" }
