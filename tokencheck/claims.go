package tokencheck

import "time"

// Claims is what a validated token says, typed for the policy engine. It is
// produced only by a successful validation and is read-only afterwards:
// cached tokens share one Claims value between requests.
type Claims struct {
	// Issuer is the token's exact `iss`.
	Issuer string
	// IssuerRef names the configured Issuer/ClusterIssuer that accepted the
	// token ("namespace/name" or "name" for cluster-scoped ones).
	IssuerRef string
	// Version is the access-token version from `ver` ("1.0" or "2.0").
	Version string
	// Subject, ObjectID and TenantID are `sub`, `oid` and `tid`.
	Subject  string
	ObjectID string
	TenantID string
	// ClientID is the calling application: `azp` in v2 tokens, `appid` in v1.
	ClientID string
	// IDType is `idtyp`: "app" for application tokens, "user" otherwise.
	IDType string
	// Audience is `aud`, always as a list.
	Audience []string
	// Roles (`roles`), Groups (`groups`), Scopes (`scp` split on spaces) and
	// WIDs (`wids`, directory role template IDs).
	Roles  []string
	Groups []string
	Scopes []string
	WIDs   []string
	// GroupOverage is true when the token carries the overage form
	// (`_claim_names.groups` or `hasgroups`) instead of the group list: the
	// groups are unknown, not empty.
	GroupOverage bool
	// UPN and PreferredUsername are `upn` and `preferred_username`.
	UPN               string
	PreferredUsername string
	// ExpiresAt, NotBefore and IssuedAt are `exp`, `nbf` and `iat`.
	ExpiresAt time.Time
	NotBefore time.Time
	IssuedAt  time.Time
	// KeyID is the `kid` of the key that verified the signature.
	KeyID string
	// Raw is every claim of the payload as decoded JSON, for CEL and
	// `claims:` conditions.
	Raw map[string]any
}

// HasRole reports whether r is among the token's roles.
func (c *Claims) HasRole(r string) bool { return contains(c.Roles, r) }

// HasGroup reports whether g is among the token's groups.
func (c *Claims) HasGroup(g string) bool { return contains(c.Groups, g) }

// HasScope reports whether s is among the token's scopes.
func (c *Claims) HasScope(s string) bool { return contains(c.Scopes, s) }

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
