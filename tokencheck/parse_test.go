package tokencheck

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
)

// RFC 7515 appendix A.2: an RS256 JWS and the RSA key that verifies it.
const (
	rfc7515A2Token = "eyJhbGciOiJSUzI1NiJ9" +
		".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ" +
		".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujG" +
		"bds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K" +
		"0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6L" +
		"bgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw"
	rfc7515A2JWKS = `{"keys":[{"kty":"RSA","kid":"rfc7515-a2",` +
		`"n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMs` +
		`D1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdV` +
		`MTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ",` +
		`"e":"AQAB"}]}`
)

func TestRFC7515A2(t *testing.T) {
	keys, err := parseKeySet([]byte(rfc7515A2JWKS), nil)
	noErr(t, err, "parseKeySet")
	k := keys["rfc7515-a2"]
	if k == nil {
		t.Fatalf("key set: got kids %v, want rfc7515-a2", keys)
	}
	dot := strings.LastIndexByte(rfc7515A2Token, '.')
	sig, err := b64.DecodeString(rfc7515A2Token[dot+1:])
	noErr(t, err, "decode signature")
	if !verifySignature(k.pub, "RS256", rfc7515A2Token[:dot], sig) {
		t.Error("RFC 7515 A.2 signature does not verify with its published key")
	}
	sig[0] ^= 1
	if verifySignature(k.pub, "RS256", rfc7515A2Token[:dot], sig) {
		t.Error("altered RFC 7515 A.2 signature verifies")
	}
	// The example has no kid, which Validate requires.
	if _, r, _ := parseToken(rfc7515A2Token); r != ReasonMalformed {
		t.Errorf("parseToken(A.2): got %q, want %q (no kid)", r, ReasonMalformed)
	}
}

func TestParseKeySet(t *testing.T) {
	tests := []struct {
		name     string
		jwks     string
		wantKids []string
		wantErr  bool
	}{
		{"not JSON", `nope`, nil, true},
		{"empty", `{"keys":[]}`, nil, true},
		{"encryption key skipped", strings.Replace(rfc7515A2JWKS, `"kty":"RSA",`, `"kty":"RSA","use":"enc",`, 1), nil, true},
		{"symmetric key skipped", `{"keys":[{"kty":"oct","kid":"h","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}]}`, nil, true},
		{"no kid skipped", strings.Replace(rfc7515A2JWKS, `"kid":"rfc7515-a2",`, ``, 1), nil, true},
		{"weak RSA key skipped", `{"keys":[{"kty":"RSA","kid":"weak","n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp","e":"AQAB"}]}`, nil, true},
		{"duplicate kid dropped", strings.Replace(rfc7515A2JWKS, `]}`, `,`+rfc7515A2JWKS[len(`{"keys":[`):], 1), nil, true},
		{"one good key", rfc7515A2JWKS, []string{"rfc7515-a2"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys, err := parseKeySet([]byte(tt.jwks), nil)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error: got %v, want error %v", err, tt.wantErr)
			}
			var kids []string
			for kid := range keys {
				kids = append(kids, kid)
			}
			if diff := cmp.Diff(tt.wantKids, kids); diff != "" {
				t.Errorf("kids (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMaxAge(t *testing.T) {
	for cc, want := range map[string]int64{
		"":                           -1,
		"max-age=86400, private":     86400,
		"private, Max-Age=300":       300,
		"max-age=0":                  0,
		"max-age=abc":                -1,
		"max-age=-5":                 -1,
		"no-store":                   0,
		"no-cache, max-age=600":      0,
		"max-age=99999999999999":     365 * 24 * 3600,
		`public, max-age="120"`:      120,
		"s-maxage=10, max-age=30000": 30000,
	} {
		got := maxAge(cc)
		if got > 0 {
			got /= time.Second
		}
		if int64(got) != want {
			t.Errorf("maxAge(%q) = %d, want %d", cc, int64(got), want)
		}
	}
}

func TestParseHeaderJSON(t *testing.T) {
	tests := []struct {
		in   string
		want header
		ok   bool
	}{
		{`{"typ":"JWT","alg":"RS256","kid":"k1","x5t":"k1"}`, header{Alg: "RS256", Kid: "k1"}, true},
		{` { "alg" : "RS256" } `, header{Alg: "RS256"}, true},
		{`{"alg":"RS256","kid":"k","crit":["exp"],"nonce":"n","jku":"u","b64":false}`,
			header{Alg: "RS256", Kid: "k", Present: struct{ Crit, B64, Nonce, EmbeddedKey bool }{true, true, true, true}}, true},
		{`{"alg":"RS256","alg":"none"}`, header{}, false},
		{`{"alg":1}`, header{}, false},
		{`{"kid":"k"}`, header{}, false},
		{`{"alg":"RS256","kid":null}`, header{}, false},
		{`{"alg":"RS256",}`, header{}, false},
		{`{"alg":"RS256"}x`, header{}, false},
	}
	for _, tt := range tests {
		var got header
		err := parseHeaderJSON(tt.in, &got)
		if (err == nil) != tt.ok {
			t.Errorf("parseHeaderJSON(%q): error %v, want ok %v", tt.in, err, tt.ok)
			continue
		}
		if tt.ok && got != tt.want {
			t.Errorf("parseHeaderJSON(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestParseJSONObject(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]any
		ok   bool
	}{
		{`{}`, map[string]any{}, true},
		{` {"a":1,"b":[true,false,null,"x"],"c":{"d":-1.5e3}} `, map[string]any{"a": 1.0, "b": []any{true, false, nil, "x"}, "c": map[string]any{"d": -1500.0}}, true},
		{`{"s":"a\"b\\c\/d\n\u00e9\ud83d\ude00"}`, map[string]any{"s": "a\"b\\c/d\né😀"}, true},
		{`{"lone":"\ud800x"}`, map[string]any{"lone": "\ufffdx"}, true},
		{`{"a":1,"a":2}`, nil, false},
		{`{"a":01}`, nil, false},
		{`{"a":1.}`, nil, false},
		{`{"a":.5}`, nil, false},
		{`{"a":1e}`, nil, false},
		{`{"a":"\x"}`, nil, false},
		{"{\"a\":\"\x01\"}", nil, false},
		{"{\"a\":\"\xff\"}", nil, false},
		{`{"a":1,}`, nil, false},
		{`{"a" 1}`, nil, false},
		{`[1]`, nil, false},
		{`{"a":1} x`, nil, false},
		{`{"a":tru}`, nil, false},
		{`{"a":1e999}`, nil, false},
		{`{"a":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, nil, false},
	}
	for _, tt := range tests {
		got, err := parseJSONObject(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("parseJSONObject(%q): error %v, want ok %v", tt.in, err, tt.ok)
			continue
		}
		if diff := cmp.Diff(tt.want, got); tt.ok && diff != "" {
			t.Errorf("parseJSONObject(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}

// FuzzParseToken feeds arbitrary strings to the token parser. It must not
// panic; what it accepts must have a kid and an allowed alg; and any
// payload its JSON decoder accepts, encoding/json must decode identically.
func FuzzParseToken(f *testing.F) {
	ti := newTestIDP(f, tenantA)
	tok := ti.mint(f, idp.TokenRequest{Roles: []string{"r"}, Groups: []string{"g"}})
	f.Add(tok)
	f.Add(rfc7515A2Token)
	f.Add("eyJhbGciOiJub25lIn0.eyJpc3MiOiJqb2UifQ.")
	f.Add("a.b.c")
	f.Add(strings.Replace(tok, ".", "..", 1))
	f.Add(`{"a":[1,{"b":"\u00e9"}],"c":-0.5e-3}`)
	f.Fuzz(func(t *testing.T, s string) {
		tk, r, err := parseToken(s)
		if err == nil {
			if r != ReasonNone || tk.hdr.Kid == "" || tk.claims == nil || tk.claims.Raw == nil {
				t.Fatalf("accepted %q with reason %q, kid %q", s, r, tk.hdr.Kid)
			}
		} else if r == ReasonNone {
			t.Fatalf("refused %q without a reason: %v", s, err)
		}
		// Differential checks of the JSON decoders on the raw input.
		var h header
		if err := parseHeaderJSON(s, &h); err == nil {
			var want map[string]any
			if err := json.Unmarshal([]byte(s), &want); err != nil {
				t.Fatalf("parseHeaderJSON accepts %q, encoding/json does not: %v", s, err)
			}
			_, crit := want["crit"]
			kid, _ := want["kid"].(string)
			if want["alg"] != h.Alg || kid != h.Kid || crit != h.Present.Crit {
				t.Fatalf("parseHeaderJSON(%q) = %+v, encoding/json %v", s, h, want)
			}
		}
		if m, err := parseJSONObject(s); err == nil {
			var want map[string]any
			if err := json.Unmarshal([]byte(s), &want); err != nil {
				t.Fatalf("parseJSONObject accepts %q, encoding/json does not: %v", s, err)
			}
			if diff := cmp.Diff(want, m); diff != "" {
				t.Fatalf("parseJSONObject(%q) differs from encoding/json (-want +got):\n%s", s, diff)
			}
		}
	})
}
