// Package policy is the claim-based access policy engine: it loads
// portcullis.dev/v1alpha1 Issuer, ClusterIssuer and AccessPolicy objects
// (from YAML files or the Kubernetes API), validates them along one path,
// compiles them into an immutable Set indexed by workload and port, and
// evaluates requests against a Set with the pure function Evaluate.
//
// Semantics, in order:
//
//   - A workload (and port) that no policy selects is not captured: the
//     datapath leaves it alone and Evaluate allows with ReasonNotCaptured.
//     In a namespace that enforces by default (Workload.DefaultDeny), it is
//     refused instead (403, ReasonNoPolicy), and so is every request that
//     no Deny rule refuses while no enforced Allow policy selects the
//     workload and port: Deny-only and Audit-mode policies never open it.
//   - Deny policies first: a request matching a Deny rule is refused (403).
//     A Deny rule with token conditions does not match a request without a
//     token; it refuses one with an invalid token as unauthenticated (401),
//     since the token might be the one the rule is meant to stop. A group
//     condition on a token in the group-overage form matches (fails closed).
//   - Then, if any Allow policy selects the workload and port, the request
//     must match one Allow rule. When none does: if a rule whose caller and
//     destination parts match needs a token and there is no valid one, the
//     answer is 401 (RFC 6750 invalid_token); otherwise 403
//     (insufficient_scope), with the most specific reason found (group
//     overage, token not bound to the caller, no matching rule).
//   - Audit-mode policies never change what is enforced: Evaluate reports
//     what they would decide (Decision.Mode == ModeAudit) and allows.
//   - Tokens: an Issuer vouches only for the workloads of its own
//     namespace, a ClusterIssuer for every workload (Issuer.Config sets
//     tokencheck.IssuerConfig.Namespace; validate with ValidateFor). A
//     rule without when.issuers accepts any issuer trusted for the
//     workload.
//
// A Store holds the Set in force and swaps it atomically after a successful
// compile; a Watcher recompiles local files when they change.
package policy
