package debugapi

import (
	"context"
	"encoding/base64"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
	"github.com/portcullis-mesh/portcullis/tokencheck"
)

func jws(header, payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(header)) + "." + enc([]byte(payload)) + ".c2ln"
}

// validatorFunc adapts a function to TokenValidator.
type validatorFunc func(raw string) (*tokencheck.Claims, tokencheck.Reason, error)

func (f validatorFunc) Validate(_ context.Context, raw string) (*tokencheck.Claims, tokencheck.Reason, error) {
	return f(raw)
}

var (
	exp          = time.Date(2026, 11, 22, 13, 0, 0, 0, time.UTC)
	validToken   = jws(`{"alg":"RS256","kid":"k1","typ":"JWT"}`, `{"iss":"https://idp","tid":"t1","azp":"c1","exp":1795352400}`)
	expiredToken = jws(`{"alg":"RS256","kid":"k1"}`, `{"iss":"https://idp","exp":1795345200}`)
	validator    = validatorFunc(func(raw string) (*tokencheck.Claims, tokencheck.Reason, error) {
		if raw == validToken {
			return &tokencheck.Claims{IssuerRef: "devidp", ClientID: "c1", ExpiresAt: exp}, tokencheck.ReasonNone, nil
		}
		return nil, tokencheck.ReasonExpired, &tokencheck.Error{Reason: tokencheck.ReasonExpired, Detail: "exp is 1h ago"}
	})
)

func TestInspectToken(t *testing.T) {
	ctx := context.Background()
	got := InspectToken(ctx, validator, validToken)
	claims, err := structpb.NewStruct(map[string]any{"iss": "https://idp", "tid": "t1", "azp": "c1", "exp": float64(1795352400)})
	if err != nil {
		t.Fatal(err)
	}
	want := &debugv1.InspectTokenResponse{
		Verdict: &debugv1.TokenVerdict{Valid: true, IssuerRef: "devidp", ExpiresAt: timestamppb.New(exp)},
		Alg:     "RS256", Kid: "k1", Typ: "JWT", Claims: claims,
	}
	if diff := cmp.Diff(want, got, cmpProto()); diff != "" {
		t.Errorf("valid token (-want +got):\n%s", diff)
	}

	got = InspectToken(ctx, validator, expiredToken)
	wantVerdict := &debugv1.TokenVerdict{Reason: "expired", Detail: "exp is 1h ago", ExpiresAt: &timestamppb.Timestamp{Seconds: 1795345200}}
	if diff := cmp.Diff(wantVerdict, got.GetVerdict(), cmpProto()); diff != "" {
		t.Errorf("expired token verdict (-want +got):\n%s", diff)
	}

	got = InspectToken(ctx, validator, "not-a-token")
	if got.GetVerdict().GetValid() || got.GetClaims() != nil || got.GetVerdict().GetDetail() == "" {
		t.Errorf("garbage token: got %v, want an invalid verdict with a detail and no claims", got)
	}
}

func TestResolveToken(t *testing.T) {
	set := compileTestSet(t)
	ctx := context.Background()
	base := &debugv1.ExplainRequest{Workload: "shop/orders-api", Port: 8080, Method: "GET", Path: "/"}
	entraClaims := `{"iss":"https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0","tid":"11111111-2222-3333-4444-555555555555","roles":["Orders.Read"]}`

	for _, tc := range []struct {
		name       string
		token      string
		claims     map[string]any
		v          TokenValidator
		wantClaims bool
		wantReason tokencheck.Reason
		wantToken  *debugv1.TokenVerdict
	}{
		{name: "nothing", wantReason: tokencheck.ReasonMissingToken},
		{name: "valid token online", token: validToken, v: validator, wantClaims: true,
			wantToken: &debugv1.TokenVerdict{Valid: true, IssuerRef: "devidp", ExpiresAt: timestamppb.New(exp)}},
		{name: "refused token online", token: expiredToken, v: validator, wantReason: tokencheck.ReasonExpired,
			wantToken: &debugv1.TokenVerdict{Reason: "expired", Detail: "exp is 1h ago"}},
		{name: "token offline", token: jws(`{"alg":"RS256"}`, entraClaims), wantClaims: true,
			wantToken: &debugv1.TokenVerdict{Reason: ReasonNotVerified, IssuerRef: "shop/entra", Detail: "signature not checked offline; claims used as if valid"}},
		{name: "claims", claims: map[string]any{"iss": "https://other", "tid": "other"}, v: validator, wantClaims: true,
			wantToken: &debugv1.TokenVerdict{Valid: true, Detail: "claims given, taken as valid"}},
		// A real token cannot carry roles as one string: Validate refuses
		// it as malformed, and so does explain.
		{name: "claims of the wrong type", claims: map[string]any{"iss": "https://other", "roles": "Orders.Read"}, v: validator,
			wantReason: tokencheck.ReasonMalformed,
			wantToken:  &debugv1.TokenVerdict{Reason: "malformed", Detail: "claim roles has the wrong JSON type"}},
		{name: "token offline with claims of the wrong type", token: jws(`{"alg":"RS256"}`, `{"iss":"https://other","exp":null}`),
			wantReason: tokencheck.ReasonMalformed,
			wantToken:  &debugv1.TokenVerdict{Reason: "malformed", Detail: "claim exp has the wrong JSON type"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := &debugv1.ExplainRequest{Workload: base.Workload, Port: base.Port, Method: base.Method, Path: base.Path, Token: tc.token}
			if tc.claims != nil {
				s, err := structpb.NewStruct(tc.claims)
				if err != nil {
					t.Fatal(err)
				}
				req.Claims = s
			}
			env, err := ResolveToken(ctx, set, tc.v, req, ExplainEnv{})
			if err != nil {
				t.Fatal(err)
			}
			if got := env.Claims != nil; got != tc.wantClaims {
				t.Errorf("claims: got %v, want %v", got, tc.wantClaims)
			}
			if env.TokenReason != tc.wantReason {
				t.Errorf("token reason: got %q, want %q", env.TokenReason, tc.wantReason)
			}
			if diff := cmp.Diff(tc.wantToken, env.Token, cmpProto()); diff != "" {
				t.Errorf("verdict (-want +got):\n%s", diff)
			}
		})
	}

	if _, err := ResolveToken(ctx, set, nil, &debugv1.ExplainRequest{Token: "abc"}, ExplainEnv{}); err == nil {
		t.Error("offline garbage token: got nil error")
	}
}

// FuzzDecodeUnverified: the decoder reads untrusted input; it must return
// an error or objects, never panic.
func FuzzDecodeUnverified(f *testing.F) {
	f.Add(validToken)
	f.Add("a.b.c")
	f.Add(jws(`null`, `[]`))
	f.Fuzz(func(t *testing.T, raw string) {
		h, c, err := DecodeUnverified(raw)
		if err == nil && (h == nil || c == nil) {
			t.Errorf("DecodeUnverified(%q): nil maps without an error", raw)
		}
	})
}
