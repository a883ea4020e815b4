package policy

// PolicySummary describes one AccessPolicy of a Set, for listings (the
// debug API and CLI).
type PolicySummary struct {
	// Key is "namespace/name".
	Key string
	// Deny and Audit give the action and mode.
	Deny  bool
	Audit bool
	// Selector is the label selector in its canonical string form; empty
	// selects every pod of the namespace.
	Selector string
	// Rules counts the policy's rules.
	Rules int
	// AllPorts is true when some rule applies to every port; otherwise
	// Ports lists the ports the policy applies to.
	AllPorts bool
	Ports    []uint16
}

// Summaries lists the Set's policies, sorted by key. A nil Set has none.
func (s *Set) Summaries() []PolicySummary {
	if s == nil {
		return nil
	}
	out := make([]PolicySummary, 0, len(s.policies))
	for _, p := range s.policies {
		ps := PolicySummary{Key: p.key, Deny: p.deny, Audit: p.audit, Rules: len(p.rules), AllPorts: p.allPorts}
		if p.selector != nil {
			ps.Selector = p.selector.String()
		}
		ps.Ports = append(ps.Ports, p.ports...)
		out = append(out, ps)
	}
	return out
}

// Selects reports whether the policy with key selects w (any port).
func (s *Set) Selects(key string, w Workload) bool {
	if s == nil {
		return false
	}
	for _, p := range s.policies {
		if p.key == key {
			return p.selects(&w)
		}
	}
	return false
}

// ReportedReason is the reason a refusal is reported with (audit records,
// metrics, RFC 6750 error_description, explain): why the token was refused
// when that decided (expired, wrong_audience, missing_token, …), else the
// policy's Reason. One function, so that explain and the live path agree.
func (d Decision) ReportedReason() string {
	if d.TokenReason != "" {
		return string(d.TokenReason)
	}
	return string(d.Reason)
}
