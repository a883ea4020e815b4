package policy

import (
	"github.com/portcullis-mesh/portcullis/tokencheck"
	v1 "github.com/portcullis-mesh/portcullis/tokencheck/policy/apis/v1alpha1"
)

// Config converts the Issuer into what tokencheck validates tokens with,
// trusted only for its namespace (every namespace for a ClusterIssuer).
// ForwardClaims is not part of it: forwarding is the verifier's job.
func (is Issuer) Config() tokencheck.IssuerConfig {
	ic := issuerConfig(is.Ref, &is.Spec)
	ic.Namespace = is.Namespace
	return ic
}

// TrustedIn reports whether the Issuer may vouch for tokens sent to a
// workload of namespace: a ClusterIssuer everywhere, an Issuer only in its
// own namespace.
func (is Issuer) TrustedIn(namespace string) bool {
	return is.Namespace == "" || is.Namespace == namespace
}

func issuerConfig(ref string, s *v1.IssuerSpec) tokencheck.IssuerConfig {
	ic := tokencheck.IssuerConfig{Ref: ref, Algorithms: append([]string(nil), s.Algorithms...)}
	if s.ClockSkew != nil {
		ic.ClockSkew = s.ClockSkew.Duration
	}
	if a := s.AzureAD; a != nil {
		az := &tokencheck.AzureADConfig{
			TenantID:       a.TenantID,
			Cloud:          tokencheck.Cloud(a.Cloud),
			AuthorityHost:  a.AuthorityHost,
			Audiences:      append([]string(nil), a.Audiences...),
			AllowedTenants: append([]string(nil), a.AllowedTenants...),
		}
		for _, v := range a.AcceptedVersions {
			az.AcceptedVersions = append(az.AcceptedVersions, int(v))
		}
		ic.AzureAD = az
	}
	if o := s.OIDC; o != nil {
		ic.OIDC = &tokencheck.OIDCConfig{
			Issuer:    o.Issuer,
			JWKSURI:   o.JWKSURI,
			Audiences: append([]string(nil), o.Audiences...),
		}
	}
	return ic
}

// IssuerConfigs returns the tokencheck configuration of every Issuer and
// ClusterIssuer of the Set, by Ref.
func (s *Set) IssuerConfigs() []tokencheck.IssuerConfig {
	if s == nil {
		return nil
	}
	out := make([]tokencheck.IssuerConfig, 0, len(s.issuers))
	for _, is := range s.issuers {
		out = append(out, is.Config())
	}
	return out
}
