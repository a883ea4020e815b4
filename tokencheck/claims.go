package tokencheck

import (
	"math"
	"slices"
	"strings"
	"time"
)

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

// ClaimsFromMap types m, the claims of a JWT payload decoded as JSON
// (map[string]any, []any, string, float64, bool and nil values), into
// Claims. It is the one reading of claims: Validate uses it on every
// token's payload and `portcullis explain` on claims an operator gives, so
// explain cannot read claims differently from the data path.
//
// A claim of the wrong JSON type is an *Error with ReasonMalformed naming
// every such claim (errors.Is(err, ErrMalformed)); a missing claim is
// empty. The rules are the validator's, the stricter reading wherever
// readers of JWTs differ:
//   - aud is a string or a list of strings; roles, groups and wids must be
//     lists (Entra ID always sends them so; only aud has a single-string
//     form in RFC 7519).
//   - A null claim has the wrong type: it is not taken as absent.
//   - exp, nbf and iat are NumericDates: numbers from 0 to 2^33 seconds.
//   - azp and appid are both type-checked; ClientID is azp, else appid.
//   - scp is one string of space-separated scopes.
//   - Without idtyp, IDType is inferred: "app" when there is no scp and
//     sub equals a non-empty oid (an app-only token's sub is its service
//     principal's oid), "user" otherwise.
//   - GroupOverage is set by a `groups` member of `_claim_names` or by
//     `hasgroups: true`.
//
// It does not require any claim nor check one against an issuer: that is
// validation. Validate refuses a token without exp or iss; explain, which
// takes given claims as valid, does not. IssuerRef and KeyID are left for
// the caller to fill. The result keeps m as Raw without copying it.
func ClaimsFromMap(m map[string]any) (*Claims, error) {
	c, _, err := typeClaims(m)
	return c, err
}

// claimTimes are exp, nbf and iat in Unix seconds; has* say which were
// present.
type claimTimes struct {
	exp, nbf, iat          int64
	hasExp, hasNbf, hasIat bool
}

// claimReader reads typed claims out of m, recording the names of those
// of the wrong JSON type.
type claimReader struct {
	m   map[string]any
	bad []string
}

func (r *claimReader) str(name string) string {
	v, ok := r.m[name]
	if !ok {
		return ""
	}
	s, ok := v.(string)
	if !ok {
		r.bad = append(r.bad, name)
	}
	return s
}

func (r *claimReader) list(name string) []string {
	v, ok := r.m[name]
	if !ok {
		return nil
	}
	a, ok := v.([]any)
	if !ok {
		r.bad = append(r.bad, name)
		return nil
	}
	out := make([]string, len(a))
	for i, e := range a {
		s, ok := e.(string)
		if !ok {
			r.bad = append(r.bad, name)
			return nil
		}
		out[i] = s
	}
	return out
}

func (r *claimReader) numericDate(name string) (int64, bool) {
	v, ok := r.m[name]
	if !ok {
		return 0, false
	}
	f, ok := v.(float64)
	// Seconds; refuse what int64 nanoseconds cannot hold.
	if !ok || math.IsNaN(f) || f < 0 || f > 1<<33 {
		r.bad = append(r.bad, name)
		return 0, false
	}
	return int64(f), true
}

// typeClaims is ClaimsFromMap, also returning the times as Validate
// compares them.
func typeClaims(m map[string]any) (*Claims, claimTimes, error) {
	r := claimReader{m: m}
	c := &Claims{Raw: m}
	c.Issuer = r.str("iss")
	c.Subject = r.str("sub")
	c.ObjectID = r.str("oid")
	c.TenantID = r.str("tid")
	c.Version = r.str("ver")
	c.UPN = r.str("upn")
	c.PreferredUsername = r.str("preferred_username")
	c.IDType = r.str("idtyp")
	azp, appid := r.str("azp"), r.str("appid")
	c.ClientID = azp
	if c.ClientID == "" {
		c.ClientID = appid
	}
	if aud, ok := m["aud"].(string); ok {
		c.Audience = []string{aud}
	} else {
		c.Audience = r.list("aud")
	}
	c.Roles = r.list("roles")
	c.Groups = r.list("groups")
	c.WIDs = r.list("wids")
	if scp := r.str("scp"); scp != "" {
		c.Scopes = strings.Fields(scp)
	}
	if names, ok := m["_claim_names"].(map[string]any); ok {
		_, c.GroupOverage = names["groups"]
	}
	if hg, ok := m["hasgroups"].(bool); ok && hg {
		c.GroupOverage = true
	}
	var ts claimTimes
	ts.exp, ts.hasExp = r.numericDate("exp")
	ts.nbf, ts.hasNbf = r.numericDate("nbf")
	ts.iat, ts.hasIat = r.numericDate("iat")
	if len(r.bad) > 0 {
		slices.Sort(r.bad)
		if len(r.bad) == 1 {
			return nil, ts, &Error{ReasonMalformed, "claim " + r.bad[0] + " has the wrong JSON type"}
		}
		return nil, ts, &Error{ReasonMalformed, "claims " + strings.Join(r.bad, ", ") + " have the wrong JSON type"}
	}
	if c.IDType == "" {
		if _, hasScp := m["scp"]; !hasScp && c.Subject != "" && c.Subject == c.ObjectID {
			c.IDType = "app"
		} else {
			c.IDType = "user"
		}
	}
	if ts.hasExp {
		c.ExpiresAt = time.Unix(ts.exp, 0)
	}
	if ts.hasNbf {
		c.NotBefore = time.Unix(ts.nbf, 0)
	}
	if ts.hasIat {
		c.IssuedAt = time.Unix(ts.iat, 0)
	}
	return c, ts, nil
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
