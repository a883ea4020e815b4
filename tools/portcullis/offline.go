package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/portcullis-mesh/portcullis/agent/debugapi"
	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
	"github.com/portcullis-mesh/portcullis/tokencheck"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

// reasonNotVerified marks a token whose claims offline explain used without
// checking its signature: there are no live keys offline.
const reasonNotVerified = "not_verified_offline"

// explainOffline evaluates req against policy and issuer files with the
// same evaluator and adapter the agent uses.
func (a *app) explainOffline(req *debugv1.ExplainRequest, fl *explainFlags) (*debugv1.ExplainResponse, error) {
	objs, err := policy.LoadFiles(append(slices.Clone(fl.policies), fl.issuers...)...)
	if err != nil {
		return nil, fmt.Errorf("load policies: %w", err)
	}
	set, err := policy.Compile(objs)
	if err != nil {
		return nil, fmt.Errorf("compile policies: %w", err)
	}
	env := debugapi.ExplainEnv{TrustDomain: fl.trustDomain, Labels: fl.labels}

	var claims map[string]any
	switch {
	case req.GetToken() != "":
		claims, err = unverifiedClaims(req.GetToken())
		if err != nil {
			return nil, &exitError{code: exitUsage, err: fmt.Errorf("--token: %w", err)}
		}
		env.Token = &debugv1.TokenVerdict{Reason: reasonNotVerified, Detail: "signature not checked offline; claims used as if valid"}
	case req.GetClaims() != nil:
		claims = req.GetClaims().AsMap()
		env.Token = &debugv1.TokenVerdict{Valid: true, Detail: "claims given, taken as valid"}
	}
	if claims != nil {
		ref := fl.issuerRef
		if ref == "" {
			ref = matchIssuer(set.Issuers(), claims)
		}
		if ref == "" {
			fmt.Fprintln(a.err, "portcullis: no issuer in the files matches the token's iss/tid; rules naming issuers will not match (set --issuer-ref)")
		}
		env.Claims, err = debugapi.ClaimsFromMap(claims, ref)
		if err != nil {
			return nil, &exitError{code: exitUsage, err: err}
		}
		env.Token.IssuerRef = ref
	}
	return debugapi.Explain(set, req, env), nil
}

// matchIssuer finds the issuer that would accept claims, by the token's
// iss for generic OIDC issuers and by its tid for Azure AD ones (offline
// there is no discovery document to fill the iss template). It returns ""
// unless exactly one issuer matches.
func matchIssuer(issuers []policy.Issuer, claims map[string]any) string {
	iss, _ := claims["iss"].(string)
	tid, _ := claims["tid"].(string)
	var refs []string
	for _, is := range issuers {
		switch {
		case is.Spec.OIDC != nil:
			if is.Spec.OIDC.Issuer == iss {
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

// unverifiedClaims decodes a compact JWS's payload without verifying it.
func unverifiedClaims(tok string) (map[string]any, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, errors.New("not a compact JWS (want three dot-separated parts)")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("decode payload: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(payload, &m); err != nil {
		return nil, fmt.Errorf("decode payload json: %w", err)
	}
	return m, nil
}
