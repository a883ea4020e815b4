package verifier

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestRequestTargets: an HTTP/1.1 request-target is origin-form, an http or
// https absolute-form URL (whose host and path the policy and a real
// application then read alike) or "*" with OPTIONS; anything else, such as
// an opaque target that the application would route by the URL inside it,
// is refused before any policy.
func TestRequestTargets(t *testing.T) {
	var (
		mu             sync.Mutex
		policy, appSaw []string
	)
	authz := AuthorizerFunc(func(_ context.Context, r *Request) Decision {
		mu.Lock()
		policy = append(policy, r.Method+" "+r.Host+" "+r.Path)
		mu.Unlock()
		return Decision{Allow: true}
	})
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		appSaw = append(appSaw, r.Method+" "+r.Host+" "+r.URL.Path)
		mu.Unlock()
	}))
	h := start(t, appAddr(app), Config{Authorizer: authz})
	tests := []struct {
		method, target string
		want           int
		saw            string // what the policy and the application see
	}{
		{"GET", "x:http://admin.example.com/admin/secret", 400, ""},
		{"GET", "x:/admin/secret", 400, ""},
		{"GET", "x:admin", 400, ""},
		{"GET", "http:admin", 400, ""},
		{"GET", "http:/admin", 400, ""},
		{"GET", "ftp://admin.example.com/admin", 400, ""},
		{"GET", "ws://admin.example.com/admin", 400, ""},
		{"GET", "http://user@admin.example.com/admin", 400, ""},
		{"GET", "http:///admin", 400, ""},
		{"GET", "*", 400, ""},
		{"POST", "*", 400, ""},

		{"GET", "/admin/secret", 200, "GET public.example.com /admin/secret"},
		{"GET", "http://admin.example.com/admin/secret", 200, "GET admin.example.com /admin/secret"},
		{"GET", "HTTPS://admin.example.com/admin?x=1", 200, "GET admin.example.com /admin"},
		{"GET", "http://admin.example.com", 200, "GET admin.example.com /"},
		{"GET", "http://admin.example.com?x=1", 200, "GET admin.example.com /"},
		{"OPTIONS", "*", 200, ""}, // net/http answers OPTIONS * itself
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.target, func(t *testing.T) {
			mu.Lock()
			policy, appSaw = nil, nil
			mu.Unlock()
			line, _ := rawRequest(t, h.addr, tt.method+" "+tt.target+" HTTP/1.1\r\nHost: public.example.com\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			if got := atoiStatus(line); got != tt.want {
				t.Fatalf("status: got %d (%q), want %d", got, line, tt.want)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case tt.want != 200:
				if len(policy)+len(appSaw) != 0 {
					t.Errorf("refused request reached the policy (%q) or the application (%q)", policy, appSaw)
				}
			case tt.target == "*":
				if diff := cmp.Diff([]string{"OPTIONS public.example.com *"}, policy); diff != "" {
					t.Errorf("policy (-want +got):\n%s", diff)
				}
			default:
				if diff := cmp.Diff([]string{tt.saw}, policy); diff != "" {
					t.Errorf("policy (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff([]string{tt.saw}, appSaw); diff != "" {
					t.Errorf("application (-want +got):\n%s", diff)
				}
			}
		})
	}
	for _, r := range h.audit.all() {
		if r.Status == 400 && r.Reason != string(ReasonMalformedRequest) {
			t.Errorf("audit record of a refusal: reason %q, want %q", r.Reason, ReasonMalformedRequest)
		}
	}
}

// TestH2AsteriskTarget: on HTTP/2, a :path of "*" is for OPTIONS only.
func TestH2AsteriskTarget(t *testing.T) {
	var (
		mu     sync.Mutex
		policy []string
	)
	authz := AuthorizerFunc(func(_ context.Context, r *Request) Decision {
		mu.Lock()
		policy = append(policy, r.Method+" "+r.Path)
		mu.Unlock()
		return Decision{Allow: true}
	})
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	h := start(t, appAddr(app), Config{Authorizer: authz})
	for _, tt := range []struct {
		method string
		want   int
	}{{"GET", 400}, {"DELETE", 400}, {"OPTIONS", 200}} {
		t.Run(tt.method, func(t *testing.T) {
			mu.Lock()
			policy = nil
			mu.Unlock()
			req, _ := http.NewRequest(tt.method, "http://"+h.addr+"/", nil)
			req.URL.Opaque = "*" // sent as :path verbatim
			resp, err := h2cClient(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status: got %d, want %d", resp.StatusCode, tt.want)
			}
			mu.Lock()
			defer mu.Unlock()
			if got := strings.Join(policy, ","); (tt.want == 200) != (got == tt.method+" *") {
				t.Errorf("policy saw %q", got)
			}
		})
	}
}
