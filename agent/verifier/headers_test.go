package verifier

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/textproto"
	"strings"
	"testing"
)

func TestBearerToken(t *testing.T) {
	tests := []struct {
		vals  []string
		token string
		n     int
	}{
		{nil, "", 0},
		{[]string{"Bearer abc"}, "abc", 1},
		{[]string{"bearer   abc "}, "abc", 1},
		{[]string{"BEARER abc"}, "abc", 1},
		{[]string{"Basic dXNlcjpwdw=="}, "", 1},
		{[]string{"Bearer"}, "", 1},
		{[]string{"Bearer a", "Bearer b"}, "", 2},
	}
	for _, tt := range tests {
		token, n := bearerToken(tt.vals)
		if token != tt.token || n != tt.n {
			t.Errorf("bearerToken(%q) = %q, %d; want %q, %d", tt.vals, token, n, tt.token, tt.n)
		}
	}
}

func TestDropRequestHeader(t *testing.T) {
	strip := stripSet{cfg: map[string]bool{"X-User-Oid": true}, dec: map[string]bool{"X-Claim-New": true}}
	conn := []string{"close, X-Hop"}
	for k, want := range map[string]bool{
		"X-Portcullis-Source": true, "X-Portcullis-Anything": true, "X_portcullis_source": true,
		"X-User-Oid": true, "X_user_oid": true, "X-Claim-New": true, "X_claim_new": true, "X-Hop": true, "Connection": true,
		"Transfer-Encoding": true, "Forwarded": true, "X-Forwarded-For": true, "Proxy-Authorization": true,
		"X-Forwarded-Port": true, "X-Forwarded-Prefix": true, "x-forwarded-anything": true, "X_Forwarded_Ssl": true,
		"X-Real-Ip": true, "X_real_ip": true, "X-Client-Ip": true, "True-Client-Ip": true,
		"X-Original-Forwarded-For": true, "X-Original-Url": true, "X-Rewrite-Url": true,
		"X-Http-Method-Override": true, "X_http_method_override": true, "X-Http-Method": true, "X-Method-Override": true,
		"Client-Ip": true, "X-Cluster-Client-Ip": true, "X-Envoy-External-Address": true,
		"Cf-Connecting-Ip": true, "Fastly-Client-Ip": true,
		"Authorization": false, "X-Portcullis": false, "Content-Type": false, "X-Keep": false,
		"X-Forwarded": false, "X-Original-Method": false,
	} {
		if got := dropRequestHeader(k, strip, conn); got != want {
			t.Errorf("dropRequestHeader(%q) = %v, want %v", k, got, want)
		}
	}
}

func TestClassify(t *testing.T) {
	for in, want := range map[string]firstBytes{
		"GET / HTTP/1.1\r\n":     firstHTTP1,
		"M-SEARCH * HTTP/1.1\r":  firstHTTP1,
		h2Preface:                firstH2Preface,
		"PRI * HTTP/1.1\r\n\r\n": firstNonHTTP,
		"\x16\x03\x01\x02\x00":   firstTLS,
		"\x00\x00\x00\x08":       firstNonHTTP,
		" GET /":                 firstNonHTTP,
		strings.Repeat("A", 30):  firstNonHTTP,
		"":                       firstNone,
	} {
		got, _ := classify(bufio.NewReader(strings.NewReader(in)))
		if got != want {
			t.Errorf("classify(%q) = %v, want %v", in, got, want)
		}
	}
}

// FuzzHeadProblem checks headProblem against an independent parser
// (net/textproto): a block it accepts must have unambiguous framing.
func FuzzHeadProblem(f *testing.F) {
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\ntransfer-encoding: chunked\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.0\r\nX: a\r\n b\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		i := bytes.Index(b, crlfcrlf)
		if i < 0 {
			return
		}
		b = b[:i+4]
		if ref := headProblem(b, 100); ref.status != 0 {
			return
		}
		tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(b)))
		if _, err := tp.ReadLine(); err != nil {
			return
		}
		h, err := tp.ReadMIMEHeader()
		if err != nil {
			return
		}
		te, cl := h.Values("Transfer-Encoding"), h.Values("Content-Length")
		if len(te) > 0 && len(cl) > 0 {
			t.Errorf("accepted both Transfer-Encoding and Content-Length: %q", b)
		}
		if len(te) > 1 || len(te) == 1 && !strings.EqualFold(strings.TrimSpace(te[0]), "chunked") {
			t.Errorf("accepted Transfer-Encoding %q", te)
		}
		for _, v := range cl {
			if strings.TrimSpace(v) != strings.TrimSpace(cl[0]) {
				t.Errorf("accepted differing Content-Length %q", cl)
			}
		}
		for k := range h {
			if !validName([]byte(k)) {
				t.Errorf("accepted header name %q", k)
			}
		}
	})
}

// TestDecisionStrip: the claim headers a decision names in Strip are
// removed from the client's request although Config.StripHeaders does not
// list them (yet: a reload pushes them a moment after the new policy
// decides), on HTTP/1.1 and HTTP/2.
func TestDecisionStrip(t *testing.T) {
	app := startApp(t, http.HandlerFunc(echoHeaders))
	h := start(t, appAddr(app), Config{
		StripHeaders: []string{},
		Authorizer: AuthorizerFunc(func(context.Context, *Request) Decision {
			return Decision{Allow: true, Strip: map[string]bool{"X-Claim-New": true}}
		}),
	})
	for name, c := range map[string]*http.Client{"http1": h1Client(t), "h2c": h2cClient(t)} {
		t.Run(name, func(t *testing.T) {
			resp := get(t, c, "http://"+h.addr+"/", "", map[string]string{"X-Claim-New": "forged", "X_Claim_New": "forged", "X-Keep": "kept"})
			defer resp.Body.Close()
			var got http.Header
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
				t.Fatal(err)
			}
			if got["X-Keep"] == nil || got["X-Claim-New"] != nil || got["X_claim_new"] != nil {
				t.Errorf("headers the app received: got %v, want X-Keep and no X-Claim-New", got)
			}
		})
	}
}
