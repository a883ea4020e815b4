package debugapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
	"github.com/portcullis-mesh/portcullis/tokencheck"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

// TokenValidator validates bearer tokens; *tokencheck.Validator is one.
type TokenValidator interface {
	Validate(ctx context.Context, raw string) (*tokencheck.Claims, tokencheck.Reason, error)
}

// ScopedTokenValidator is a TokenValidator that can try only the issuers
// trusted in one namespace, as the live path does (*tokencheck.Validator
// is one); ResolveToken uses it when v has it.
type ScopedTokenValidator interface {
	ValidateFor(ctx context.Context, raw, namespace string) (*tokencheck.Claims, tokencheck.Reason, error)
}

// ReasonNotVerified is the verdict reason of a token whose claims were read
// without checking its signature (offline explain: there are no live keys).
const ReasonNotVerified = "not_verified_offline"

// maxTokenBytes bounds what the unverified decoder reads; access tokens are
// a few kilobytes.
const maxTokenBytes = 64 << 10

// Verdict turns the result of a validation into the API's verdict.
func Verdict(c *tokencheck.Claims, r tokencheck.Reason, err error) *debugv1.TokenVerdict {
	if err == nil && c != nil {
		v := &debugv1.TokenVerdict{Valid: true, IssuerRef: c.IssuerRef}
		if !c.ExpiresAt.IsZero() {
			v.ExpiresAt = timestamppb.New(c.ExpiresAt)
		}
		return v
	}
	v := &debugv1.TokenVerdict{Reason: string(r)}
	var te *tokencheck.Error
	switch {
	case errors.As(err, &te):
		v.Detail = te.Detail
		if v.Reason == "" {
			v.Reason = string(te.Reason)
		}
	case err != nil:
		v.Detail = err.Error()
	}
	return v
}

// InspectToken validates raw with v and decodes its header and payload for
// display, also when v refuses it. It never logs raw.
func InspectToken(ctx context.Context, v TokenValidator, raw string) *debugv1.InspectTokenResponse {
	c, r, err := v.Validate(ctx, raw)
	resp := &debugv1.InspectTokenResponse{Verdict: Verdict(c, r, err)}
	hdr, claims, derr := DecodeUnverified(raw)
	if derr != nil {
		if resp.Verdict.Detail == "" {
			resp.Verdict.Detail = derr.Error()
		}
		return resp
	}
	resp.Alg, resp.Kid, resp.Typ = str(hdr["alg"]), str(hdr["kid"]), str(hdr["typ"])
	if s, err := structpb.NewStruct(claims); err == nil {
		resp.Claims = s
	}
	if resp.Verdict.ExpiresAt == nil {
		if exp, ok := claims["exp"].(float64); ok {
			resp.Verdict.ExpiresAt = &timestamppb.Timestamp{Seconds: int64(exp)}
		}
	}
	return resp
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// DecodeUnverified decodes the header and payload of a compact JWS without
// verifying anything, with tokencheck's own strict decoders: for display and
// offline explain only.
func DecodeUnverified(raw string) (header, claims map[string]any, err error) {
	if len(raw) > maxTokenBytes {
		return nil, nil, fmt.Errorf("token is larger than %d bytes", maxTokenBytes)
	}
	return tokencheck.DecodeUnverified(raw)
}

// ResolveToken fills env's Claims, TokenReason and Token from the token or
// claims of req. A token is validated with v; with a nil v (offline) its
// claims are decoded without verification and used as if valid, and the
// verdict says so. Claims given as JSON are taken as valid, accepted by the
// issuer of set they name (IssuerRefFor) among those trusted in the
// workload's namespace: no claim is required and none is checked against
// the issuer, but claims only an issuer of another namespace would accept
// are refused (wrong_issuer), as the live path refuses them. Claims of the wrong JSON type (read by
// tokencheck.ClaimsFromMap, as Validate reads them) make the token refused
// as malformed. It returns an error only for a token that cannot be read
// at all.
func ResolveToken(ctx context.Context, set *policy.Set, v TokenValidator, req *debugv1.ExplainRequest, env ExplainEnv) (ExplainEnv, error) {
	var claims map[string]any
	ns, _, _ := strings.Cut(req.GetWorkload(), "/")
	switch {
	case req.GetToken() != "" && v != nil:
		var (
			c   *tokencheck.Claims
			r   tokencheck.Reason
			err error
		)
		if sv, ok := v.(ScopedTokenValidator); ok {
			c, r, err = sv.ValidateFor(ctx, req.GetToken(), ns)
		} else {
			c, r, err = v.Validate(ctx, req.GetToken())
		}
		env.Claims, env.TokenReason, env.Token = c, r, Verdict(c, r, err)
		if err != nil {
			env.Claims = nil
		}
		return env, nil
	case req.GetToken() != "":
		_, m, err := DecodeUnverified(req.GetToken())
		if err != nil {
			return env, fmt.Errorf("read token: %w", err)
		}
		claims = m
		env.Token = &debugv1.TokenVerdict{Reason: ReasonNotVerified, Detail: "signature not checked offline; claims used as if valid"}
	case req.GetClaims() != nil:
		claims = req.GetClaims().AsMap()
		env.Token = &debugv1.TokenVerdict{Valid: true, Detail: "claims given, taken as valid"}
	default:
		env.Claims, env.TokenReason, env.Token = nil, tokencheck.ReasonMissingToken, nil
		return env, nil
	}
	ref := ""
	if set != nil {
		trusted := slices.DeleteFunc(slices.Clone(set.Issuers()), func(is policy.Issuer) bool { return !is.TrustedIn(ns) })
		ref = IssuerRefFor(trusted, claims)
		if other := IssuerRefFor(set.Issuers(), claims); ref == "" && other != "" {
			err := fmt.Errorf("only issuer %s accepts these claims, and it is not trusted in namespace %s", other, ns)
			env.Claims, env.TokenReason, env.Token = nil, tokencheck.ReasonWrongIssuer, Verdict(nil, tokencheck.ReasonWrongIssuer, err)
			return env, nil
		}
	}
	// Typed exactly as Validate types a token's payload: claims a real
	// token could not carry make the token refused, as it would be.
	c, err := tokencheck.ClaimsFromMap(claims)
	if err != nil {
		env.Claims, env.TokenReason, env.Token = nil, tokencheck.ReasonMalformed, Verdict(nil, tokencheck.ReasonMalformed, err)
		return env, nil
	}
	c.IssuerRef = ref
	env.Claims, env.TokenReason = c, tokencheck.ReasonNone
	env.Token.IssuerRef = ref
	if !c.ExpiresAt.IsZero() {
		env.Token.ExpiresAt = timestamppb.New(c.ExpiresAt)
	}
	return env, nil
}

// IssuerRefFor names the issuer of issuers that would accept claims without
// a signature to check: a generic OIDC issuer by the exact iss, an Azure AD
// issuer by tid (its tenant, or one of its allowed tenants). It returns ""
// unless exactly one issuer matches.
func IssuerRefFor(issuers []policy.Issuer, claims map[string]any) string {
	iss, _ := claims["iss"].(string)
	tid, _ := claims["tid"].(string)
	var refs []string
	for _, is := range issuers {
		switch {
		case is.Spec.OIDC != nil:
			if iss != "" && is.Spec.OIDC.Issuer == iss {
				refs = append(refs, is.Ref)
			}
		case is.Spec.AzureAD != nil:
			az := is.Spec.AzureAD
			if tid != "" && (strings.EqualFold(az.TenantID, tid) || slices.Contains(az.AllowedTenants, tid) || slices.Contains(az.AllowedTenants, tokencheck.AnyTenant)) {
				refs = append(refs, is.Ref)
			}
		}
	}
	if len(refs) != 1 {
		return ""
	}
	return refs[0]
}
