package main

import (
	"context"
	"fmt"
	"slices"

	"github.com/portcullis-mesh/portcullis/agent/debugapi"
	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

// explainOffline evaluates req against policy and issuer files with the
// same loader, compiler, evaluator and adapter the agent uses. There are no
// live keys offline: a token's claims are read without verification.
func (a *app) explainOffline(ctx context.Context, req *debugv1.ExplainRequest, fl *explainFlags) (*debugv1.ExplainResponse, error) {
	objs, err := policy.LoadFiles(append(slices.Clone(fl.policies), fl.issuers...)...)
	if err != nil {
		return nil, fmt.Errorf("load policies: %w", err)
	}
	set, err := policy.Compile(objs)
	if err != nil {
		return nil, fmt.Errorf("compile policies: %w", err)
	}
	env := debugapi.ExplainEnv{TrustDomain: fl.trustDomain, Labels: fl.labels, DefaultDeny: fl.enforced}
	env, err = debugapi.ResolveToken(ctx, set, nil, req, env)
	if err != nil {
		return nil, &exitError{code: exitUsage, err: err}
	}
	if env.Claims != nil {
		if fl.issuerRef != "" {
			env.Claims.IssuerRef, env.Token.IssuerRef = fl.issuerRef, fl.issuerRef
		}
		if env.Claims.IssuerRef == "" {
			fmt.Fprintln(a.err, "portcullis: no single issuer in the files matches the token's iss/tid; rules naming issuers will not match (set --issuer-ref)")
		}
	}
	return debugapi.Explain(set, req, env), nil
}
