package debugapi

import (
	"errors"
	"fmt"
	"strings"

	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
)

// Filter selects decision records for TailDecisions.
type Filter struct {
	decision string
	reason   string
	// workload is "ns/name", or "ns/" to match a namespace.
	workload string
	// source is a SPIFFE ID, "anonymous", or the suffix "/ns/<ns>/sa/<sa>".
	source       string
	sourceSuffix bool
}

// NewFilter checks the filter fields of req and compiles them.
func NewFilter(req *debugv1.TailDecisionsRequest) (Filter, error) {
	f := Filter{
		decision: strings.ToLower(req.GetDecision()),
		reason:   req.GetReason(),
		workload: req.GetWorkload(),
	}
	switch f.decision {
	case "", "allow", "deny":
	default:
		return Filter{}, fmt.Errorf("decision filter %q: want allow or deny", req.GetDecision())
	}
	if w := f.workload; w != "" {
		ns, _, ok := strings.Cut(w, "/")
		if !ok || ns == "" {
			return Filter{}, fmt.Errorf("workload filter %q: want namespace/name or namespace/", w)
		}
	}
	switch src := req.GetSource(); {
	case src == "", src == "anonymous", strings.HasPrefix(src, "spiffe://"):
		f.source = src
	default:
		ns, sa, ok := strings.Cut(src, "/")
		if !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
			return Filter{}, fmt.Errorf("source filter %q: want namespace/serviceaccount, a SPIFFE ID or anonymous", src)
		}
		f.source, f.sourceSuffix = "/ns/"+ns+"/sa/"+sa, true
	}
	return f, nil
}

// Match reports whether r passes every set field of the filter.
func (f Filter) Match(r *debugv1.DecisionRecord) bool {
	if f.decision != "" && !strings.EqualFold(r.GetDecision(), f.decision) {
		return false
	}
	if f.reason != "" && r.GetReason() != f.reason {
		return false
	}
	if f.workload != "" {
		if strings.HasSuffix(f.workload, "/") {
			if !strings.HasPrefix(r.GetDestination(), f.workload) {
				return false
			}
		} else if r.GetDestination() != f.workload {
			return false
		}
	}
	if f.source != "" {
		src := r.GetSource()
		if f.sourceSuffix {
			if !strings.HasPrefix(src, "spiffe://") || !strings.HasSuffix(src, f.source) {
				return false
			}
		} else if src != f.source {
			return false
		}
	}
	return true
}

// ValidateExplain checks an ExplainRequest before it reaches a Backend or
// the offline evaluator.
func ValidateExplain(req *debugv1.ExplainRequest) error {
	ns, name, ok := strings.Cut(req.GetWorkload(), "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("workload %q: want namespace/name", req.GetWorkload())
	}
	if p := req.GetPort(); p == 0 || p > 65535 {
		return fmt.Errorf("port %d: want 1-65535", p)
	}
	if req.GetMethod() == "" {
		return errors.New("method is empty")
	}
	if !strings.HasPrefix(req.GetPath(), "/") {
		return fmt.Errorf("path %q: want an absolute path", req.GetPath())
	}
	if src := req.GetSource(); src != "" && src != "anonymous" {
		ns, sa, ok := strings.Cut(src, "/")
		if !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
			return fmt.Errorf("source %q: want namespace/serviceaccount or anonymous", src)
		}
	}
	if req.GetToken() != "" && req.GetClaims() != nil {
		return errors.New("both a token and claims: give one")
	}
	return nil
}
