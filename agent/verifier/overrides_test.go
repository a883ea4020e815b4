package verifier

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

// TestOverrideHeadersStripped: the method overrides and client-address
// headers frameworks obey never reach a real application, on either
// protocol, so a POST the policy allowed cannot run as DELETE.
func TestOverrideHeadersStripped(t *testing.T) {
	names := []string{
		"X-HTTP-Method-Override", "X-Http-Method", "X-Method-Override", "x_http_method_override",
		"Client-Ip", "X-Cluster-Client-Ip", "X-Envoy-External-Address", "Cf-Connecting-Ip", "Fastly-Client-Ip",
	}
	var (
		mu  sync.Mutex
		got []string
	)
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		for k := range r.Header {
			for _, n := range names {
				if strings.EqualFold(k, n) {
					got = append(got, k)
				}
			}
		}
	}))
	h := start(t, appAddr(app), Config{Authorizer: AuthorizerFunc(func(_ context.Context, r *Request) Decision {
		return Decision{Allow: r.Method == "POST"}
	})})
	for _, proto := range []string{"http1", "h2c"} {
		t.Run(proto, func(t *testing.T) {
			mu.Lock()
			got = nil
			mu.Unlock()
			if proto == "http1" {
				raw := "POST /orders/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n"
				for _, n := range names {
					raw += n + ": DELETE\r\n"
				}
				if line, _ := rawRequest(t, h.addr, raw+"\r\n"); atoiStatus(line) != 200 {
					t.Fatalf("status %q, want 200", line)
				}
			} else {
				req, _ := http.NewRequest("POST", "http://"+h.addr+"/orders/1", http.NoBody)
				for _, n := range names {
					req.Header[n] = []string{"DELETE"}
				}
				resp, err := h2cClient(t).Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("status %d, want 200", resp.StatusCode)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if len(got) != 0 {
				t.Errorf("the application received %q", got)
			}
		})
	}
}

// TestDroppedHeadersMatchPolicy keeps dropRequestHeader's fixed list and
// the policy compiler's reserved forwardClaims names consistent: a claim
// header the verifier would drop is refused at compile time (rather than
// silently not set), and every name the compiler reserves because
// applications read it as the caller's address, the request's method or
// target, or because the verifier sets it, is removed from client requests.
func TestDroppedHeadersMatchPolicy(t *testing.T) {
	reserved, prefixes := policy.ReservedHeaders()
	refused := func(name string) bool {
		n := strings.ReplaceAll(strings.ToLower(name), "_", "-")
		if reserved[n] != "" {
			return true
		}
		for p := range prefixes {
			if strings.HasPrefix(n, p) {
				return true
			}
		}
		return false
	}
	for _, n := range droppedHeaderNames(t) {
		if !refused(n) {
			t.Errorf("the verifier drops %s but policy accepts it as a forwardClaims header", n)
		}
	}
	for n, why := range reserved {
		caller := strings.Contains(why, "read by applications") || strings.Contains(why, "set by the verifier")
		if caller && !dropRequestHeader(http.CanonicalHeaderKey(n), stripSet{}, nil) {
			t.Errorf("policy reserves %s (%s) but the verifier lets a client send it", n, why)
		}
	}
	for p, why := range prefixes {
		caller := strings.Contains(why, "read by applications") || strings.Contains(why, "set by the verifier") || strings.Contains(why, "verifier's own")
		// X-Original-* is reserved whole, but the verifier drops only the
		// names applications are known to obey (X-Original-Url, -Forwarded-For).
		if caller && p != "x-original-" && !dropRequestHeader(http.CanonicalHeaderKey(p+"x"), stripSet{}, nil) {
			t.Errorf("policy reserves prefix %s (%s) but the verifier lets a client send %sx", p, why, p)
		}
	}
}

// droppedHeaderNames returns the names of dropRequestHeader's switch, read
// from the source so that a name added there is checked too.
func droppedHeaderNames(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "headers.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range f.Decls {
		fd, ok := d.(*ast.FuncDecl)
		if !ok || fd.Name.Name != "dropRequestHeader" {
			continue
		}
		ast.Inspect(fd.Body, func(n ast.Node) bool {
			sw, ok := n.(*ast.SwitchStmt)
			if !ok {
				return true
			}
			for _, c := range sw.Body.List {
				for _, e := range c.(*ast.CaseClause).List {
					if lit, ok := e.(*ast.BasicLit); ok && lit.Kind == token.STRING {
						s, _ := strconv.Unquote(lit.Value)
						names = append(names, s)
					}
				}
			}
			return false
		})
	}
	if len(names) < 10 {
		t.Fatalf("found %d names in dropRequestHeader's switch, want its whole list", len(names))
	}
	return names
}
