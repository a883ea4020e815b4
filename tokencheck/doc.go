// Package tokencheck answers "is this bearer token a real, current Azure AD
// (Entra ID) or OIDC token meant for this API, and what does it say?".
//
// It discovers issuers, caches and rotates their signing keys, validates
// tokens (signature, algorithm allow-list, iss, aud, tid, exp/nbf/iat) and
// returns typed Claims or a typed Reason. It knows nothing of sockets or
// Kubernetes. The claim-based policy engine lives in tokencheck/policy.
package tokencheck
