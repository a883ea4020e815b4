package verifier

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestPathShapes: decoded paths that applications resolve differently from
// an exact match (empty segments, '#', '\', control characters, dot
// segments) are refused before any policy on both protocols; other unusual
// but unambiguous paths are forwarded as they came.
func TestPathShapes(t *testing.T) {
	var (
		mu      sync.Mutex
		appSaw  []string
		policy  []string
		allowed = AuthorizerFunc(func(_ context.Context, r *Request) Decision {
			mu.Lock()
			policy = append(policy, r.Path)
			mu.Unlock()
			return Decision{Allow: true}
		})
	)
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		appSaw = append(appSaw, r.RequestURI)
		mu.Unlock()
	}))
	h := start(t, appAddr(app), Config{Authorizer: allowed})
	tests := []struct {
		target string
		want   int
	}{
		{"//admin/x", 400},
		{"/admin//x", 400},
		{"/admin/x//", 400},
		{"/%2Fadmin/x", 400},
		{"/admin%2F/x", 400},
		{"/admin#x", 400},
		{"/admin%23x", 400},
		{"/public/..%5Cadmin", 400},
		{`/public\admin`, 400},
		{"/admin%00", 400},
		{"/admin%0a", 400},
		{"/admin%0D%0AX:%20y", 400},
		{"/admin%09", 400},
		{"/admin%7F", 400},
		{"/admin/%2e%2e", 400},
		{"/public/../admin", 400},
		{"/a/./b", 400},

		{"/", 200},
		{"/admin/", 200},
		{"/admin;x", 200}, // matrix parameters: left to the policy (see doc.go)
		{"/a..b/.c/d.", 200},
		{"/caf%C3%A9/x%2Fy", 200},
		{"/p?q=//#x", 200}, // the query is not the path
	}
	for _, tt := range tests {
		for _, proto := range []string{"http1", "h2c"} {
			t.Run(proto+" "+tt.target, func(t *testing.T) {
				mu.Lock()
				policy, appSaw = nil, nil
				mu.Unlock()
				var status int
				if proto == "http1" {
					line, _ := rawRequest(t, h.addr, "GET "+tt.target+" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
					status = atoiStatus(line)
				} else {
					req, _ := http.NewRequest("GET", "http://"+h.addr+"/", nil)
					req.URL.Opaque = "//" + h.addr + tt.target // sent as :path verbatim
					resp, err := h2cClient(t).Do(req)
					if err != nil {
						t.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				}
				if status != tt.want {
					t.Fatalf("status: got %d, want %d", status, tt.want)
				}
				mu.Lock()
				defer mu.Unlock()
				if tt.want != 200 {
					if len(policy)+len(appSaw) != 0 {
						t.Errorf("refused request reached the policy (%q) or the application (%q)", policy, appSaw)
					}
					return
				}
				if diff := cmp.Diff([]string{tt.target}, appSaw); diff != "" {
					t.Errorf("application's request-target (-want +got):\n%s", diff)
				}
			})
		}
	}
	for _, r := range h.audit.all() {
		if r.Status == 400 && r.Reason != string(ReasonMalformedRequest) {
			t.Errorf("audit record of a refusal: reason %q, want %q", r.Reason, ReasonMalformedRequest)
		}
	}
}

// TestHostShapes: a host name with one trailing dot is the same name
// without it, for the policy and for the application alike; other odd
// endings are refused.
func TestHostShapes(t *testing.T) {
	type seen struct{ Host, XFH string }
	var (
		mu     sync.Mutex
		policy []string
		appSaw []seen
	)
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		appSaw = append(appSaw, seen{r.Host, r.Header.Get("X-Forwarded-Host")})
		mu.Unlock()
	}))
	h := start(t, appAddr(app), Config{Authorizer: AuthorizerFunc(func(_ context.Context, r *Request) Decision {
		mu.Lock()
		policy = append(policy, r.Host)
		mu.Unlock()
		return Decision{Allow: true}
	})})
	tests := []struct {
		host, want string // want "" means 400
	}{
		{"admin.example.com", "admin.example.com"},
		{"admin.example.com.", "admin.example.com"},
		{"Admin.Example.com.:8080", "Admin.Example.com:8080"},
		{"10.0.0.1.:80", "10.0.0.1:80"},
		{"[::1]:80", "[::1]:80"},
		{"admin.example.com..", ""},
		{"admin.example.com..:80", ""},
		{".", ""},
		{".:80", ""},
	}
	for _, tt := range tests {
		for _, proto := range []string{"http1", "h2c"} {
			t.Run(proto+" "+tt.host, func(t *testing.T) {
				mu.Lock()
				policy, appSaw = nil, nil
				mu.Unlock()
				var status int
				if proto == "http1" {
					line, _ := rawRequest(t, h.addr, "GET /x HTTP/1.1\r\nHost: "+tt.host+"\r\nConnection: close\r\n\r\n")
					status = atoiStatus(line)
				} else {
					req := &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: h.addr, Path: "/x"},
						Host: tt.host, Header: http.Header{}}
					resp, err := h2cClient(t).Do(req)
					if err != nil {
						t.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				}
				mu.Lock()
				defer mu.Unlock()
				if tt.want == "" {
					if status != 400 || len(policy)+len(appSaw) != 0 {
						t.Errorf("got status %d, policy saw %q, application saw %q; want 400 and neither", status, policy, appSaw)
					}
					return
				}
				if status != 200 {
					t.Fatalf("status: got %d, want 200", status)
				}
				if diff := cmp.Diff([]string{tt.want}, policy); diff != "" {
					t.Errorf("policy's host (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff([]seen{{tt.want, tt.want}}, appSaw); diff != "" {
					t.Errorf("application's Host and X-Forwarded-Host (-want +got):\n%s", diff)
				}
			})
		}
	}
}
func TestCleanPath(t *testing.T) {
	for p, want := range map[string]bool{
		"/": true, "/a/b": true, "/a..b/c": true, "/.well-known/x": true, "*": true, "": true,
		"/a/": true, "/a;b": true, "/caf\u00e9": true,
		"/a/../b": false, "/a/./b": false, "/..": false, "/a/.": false, "..": false,
		"//a": false, "/a//b": false, "/a//": false, "/a#": false, `/a\b`: false,
		"/a\x00": false, "/a\nb": false, "/a\x7f": false, "/a\tb": false,
	} {
		if got := cleanPath(p); got != want {
			t.Errorf("cleanPath(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestCanonicalHost(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		ok       bool
	}{
		{"", "", true},
		{"a", "a", true},
		{"a.b", "a.b", true},
		{"a.b.", "a.b", true},
		{"a.b.:1", "a.b:1", true},
		{"[::1]", "[::1]", true},
		{"[::1]:8080", "[::1]:8080", true},
		{"a.b..", "", false},
		{".", "", false},
		{".:1", "", false},
	} {
		got, ok := canonicalHost(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("canonicalHost(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// FuzzCleanPath checks cleanPath against path.Clean: a rooted path it
// accepts is already clean (up to one trailing slash), so an application
// that cleans paths routes it as the policy matched it.
func FuzzCleanPath(f *testing.F) {
	for _, p := range []string{"/", "/a/b/", "//a", "/a/./b", "/a/..", `/a\b`, "/a#b", "/a\x00", "/a;b/c.d"} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if !strings.HasPrefix(p, "/") || !cleanPath(p) {
			return
		}
		want := path.Clean(p)
		if p != "/" && strings.HasSuffix(p, "/") {
			want += "/"
		}
		if p != want {
			t.Errorf("cleanPath accepted %q, path.Clean makes it %q", p, want)
		}
		if strings.ContainsAny(p, "#\\\x7f") || strings.IndexFunc(p, func(r rune) bool { return r < 0x20 }) >= 0 {
			t.Errorf("cleanPath accepted %q", p)
		}
	})
}
