package tokencheck

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestClaimsFromMap(t *testing.T) {
	const exp = 1795352400
	tests := []struct {
		name    string
		claims  map[string]any
		want    *Claims
		wantErr string // the *Error's Detail; empty for success
	}{
		{
			name: "v1 app token with every typed claim",
			claims: map[string]any{
				"iss": "https://sts.windows.net/t/", "sub": "s", "oid": "o", "tid": "t", "ver": "1.0", "appid": "c-v1",
				"aud": "api://orders", "roles": []any{"A", "B"}, "groups": []any{"g"}, "wids": []any{"w"}, "scp": "read  write",
				"upn": "u@example.com", "preferred_username": "u", "idtyp": "app", "hasgroups": true,
				"exp": float64(exp), "nbf": float64(exp - 3600), "iat": float64(0),
			},
			want: &Claims{
				Issuer: "https://sts.windows.net/t/", Version: "1.0", Subject: "s", ObjectID: "o", TenantID: "t", ClientID: "c-v1",
				IDType: "app", Audience: []string{"api://orders"}, Roles: []string{"A", "B"}, Groups: []string{"g"}, WIDs: []string{"w"},
				Scopes: []string{"read", "write"}, GroupOverage: true, UPN: "u@example.com", PreferredUsername: "u",
				ExpiresAt: time.Unix(exp, 0), NotBefore: time.Unix(exp-3600, 0), IssuedAt: time.Unix(0, 0),
			},
		},
		{
			name:   "empty: nothing required, idtyp inferred",
			claims: map[string]any{},
			want:   &Claims{IDType: "user"},
		},
		{
			name:   "azp wins over appid",
			claims: map[string]any{"azp": "c-v2", "appid": "c-v1", "aud": []any{"a", "b"}},
			want:   &Claims{ClientID: "c-v2", IDType: "user", Audience: []string{"a", "b"}},
		},
		{
			name:   "idtyp inferred app: no scp, sub is oid",
			claims: map[string]any{"sub": "sp", "oid": "sp"},
			want:   &Claims{Subject: "sp", ObjectID: "sp", IDType: "app"},
		},
		{
			name:   "idtyp inferred user: scp present, even empty",
			claims: map[string]any{"sub": "sp", "oid": "sp", "scp": ""},
			want:   &Claims{Subject: "sp", ObjectID: "sp", IDType: "user"},
		},
		{
			name:   "idtyp inferred user: sub is not oid",
			claims: map[string]any{"sub": "pairwise", "oid": "o"},
			want:   &Claims{Subject: "pairwise", ObjectID: "o", IDType: "user"},
		},
		{
			name:   "idtyp given is kept",
			claims: map[string]any{"sub": "sp", "oid": "sp", "idtyp": "user"},
			want:   &Claims{Subject: "sp", ObjectID: "sp", IDType: "user"},
		},
		{
			name:   "overage from _claim_names",
			claims: map[string]any{"_claim_names": map[string]any{"groups": "src1"}, "hasgroups": false},
			want:   &Claims{IDType: "user", GroupOverage: true},
		},
		// What explain used to accept and a real token could not carry.
		{name: "roles as one string", claims: map[string]any{"roles": "A"}, wantErr: "claim roles has the wrong JSON type"},
		{name: "groups as one string", claims: map[string]any{"groups": "g"}, wantErr: "claim groups has the wrong JSON type"},
		{name: "null roles", claims: map[string]any{"roles": nil}, wantErr: "claim roles has the wrong JSON type"},
		{name: "null aud", claims: map[string]any{"aud": nil}, wantErr: "claim aud has the wrong JSON type"},
		{name: "null exp", claims: map[string]any{"exp": nil}, wantErr: "claim exp has the wrong JSON type"},
		{name: "negative exp", claims: map[string]any{"exp": float64(-1)}, wantErr: "claim exp has the wrong JSON type"},
		{name: "exp past 2^33", claims: map[string]any{"exp": float64(1<<33 + 1)}, wantErr: "claim exp has the wrong JSON type"},
		{name: "appid checked under azp", claims: map[string]any{"azp": "c", "appid": float64(1)}, wantErr: "claim appid has the wrong JSON type"},
		// Errors explain and the validator always refused.
		{name: "non-string in a list", claims: map[string]any{"roles": []any{float64(1)}}, wantErr: "claim roles has the wrong JSON type"},
		{name: "exp as a string", claims: map[string]any{"exp": "tomorrow"}, wantErr: "claim exp has the wrong JSON type"},
		{name: "scp as a list", claims: map[string]any{"scp": []any{"read"}}, wantErr: "claim scp has the wrong JSON type"},
		{
			name:    "every bad claim named, sorted",
			claims:  map[string]any{"wids": "w", "azp": true, "iat": "now"},
			wantErr: "claims azp, iat, wids have the wrong JSON type",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ClaimsFromMap(tt.claims)
			if tt.wantErr != "" {
				var e *Error
				if !errors.As(err, &e) || !errors.Is(err, ErrMalformed) || e.Detail != tt.wantErr {
					t.Fatalf("error: got %v, want a malformed *Error with detail %q", err, tt.wantErr)
				}
				if got != nil {
					t.Errorf("claims: got %+v, want nil with an error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("error: got %v, want nil", err)
			}
			tt.want.Raw = tt.claims
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("claims (-want +got):\n%s", diff)
			}
		})
	}
}
