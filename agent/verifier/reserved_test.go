package verifier

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// headApp is an application that reads request heads only (it is for
// bodiless requests), sends each raw head on the returned channel and
// answers it with an empty 200. Unlike net/http it does not act on the
// framing headers it receives, so the test sees exactly what was sent.
func headApp(t *testing.T) (addr string, heads <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan string, 16)
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					var head strings.Builder
					for {
						line, err := br.ReadString('\n')
						if err != nil {
							return
						}
						head.WriteString(line)
						if line == "\r\n" {
							break
						}
					}
					select {
					case ch <- head.String():
					default:
					}
					if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), ch
}

// reservedNames are header names the verifier strips or sets itself;
// an Authorizer's Decision must not be able to set them.
var reservedDecisionHeaders = []HeaderField{
	{"X-Portcullis-Source", "spiffe://cluster.local/ns/kube-system/sa/admin"},
	{"x_portcullis_source", "spiffe://cluster.local/ns/kube-system/sa/admin2"},
	{"X-Portcullis-Other", "forged"},
	{"X-Forwarded-For", "6.6.6.6"},
	{"X-Forwarded-Port", "443"},
	{"Forwarded", "for=6.6.6.6"},
	{"X-Real-Ip", "6.6.6.6"},
	{"Transfer-Encoding", "chunked"},
	{"Content-Length", "5"},
	{"Host", "evil.example.com"},
	{"connection", "close"},
	{"Keep-Alive", "timeout=1"},
	{"Proxy-Authorization", "Basic eA=="},
	{"Te", "trailers"},
	{"Trailer", "X-Portcullis-Source"},
	{"Upgrade", "websocket"},
	{"X-Claim-Tenant", "t1"}, // not reserved: forwarded
}

// TestDecisionHeadersReservedFraming: on HTTP/1.1, a Decision header
// naming a framing or hop-by-hop header would desynchronise the pooled
// upstream connection (a bodiless GET announcing a chunked body).
func TestDecisionHeadersReservedFraming(t *testing.T) {
	app, heads := headApp(t)
	h := start(t, app, Config{Authorizer: AuthorizerFunc(func(context.Context, *Request) Decision {
		return Decision{Allow: true, Headers: reservedDecisionHeaders}
	})})
	c := h1Client(t)
	for i := 0; i < 2; i++ { // the second request reuses the upstream connection
		resp := get(t, c, "http://"+h.addr+"/x", "", nil)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d, want 200", i, resp.StatusCode)
		}
		var head string
		select {
		case head = <-heads:
		case <-time.After(5 * time.Second):
			t.Fatalf("request %d never reached the application", i)
		}
		got := map[string][]string{}
		for _, line := range strings.Split(strings.TrimSuffix(head, "\r\n\r\n"), "\r\n")[1:] {
			k, v, _ := strings.Cut(line, ": ")
			k = http.CanonicalHeaderKey(k)
			got[k] = append(got[k], v)
		}
		want := map[string][]string{
			"Host":                {h.addr},
			"User-Agent":          {"Go-http-client/1.1"},
			"X-Claim-Tenant":      {"t1"},
			"X-Portcullis-Source": {frontendSource.ID},
			"X-Forwarded-For":     {"127.0.0.1"},
			"X-Forwarded-Proto":   {"http"},
			"X-Forwarded-Host":    {h.addr},
			"Forwarded":           {"for=127.0.0.1;proto=http"},
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("request %d: application received (-want +got):\n%s\nhead:\n%s", i, diff, head)
		}
	}
}

// TestDecisionHeadersReserved: on both protocols, the verifier's own
// identity and forwarding headers win over a Decision that names them.
func TestDecisionHeadersReserved(t *testing.T) {
	type seen struct {
		host   string
		header http.Header
	}
	got := make(chan seen, 1)
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Host, r.Header.Clone()}
	}))
	h := start(t, appAddr(app), Config{Authorizer: AuthorizerFunc(func(context.Context, *Request) Decision {
		return Decision{Allow: true, Headers: reservedDecisionHeaders}
	})})
	for _, tt := range []struct {
		name   string
		client *http.Client
	}{
		{"http1", h1Client(t)},
		{"h2c", h2cClient(t)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp := get(t, tt.client, "http://"+h.addr+"/x", "", nil)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d, want 200", resp.StatusCode)
			}
			s := <-got
			if s.host != h.addr {
				t.Errorf("application's Host: got %q, want %q", s.host, h.addr)
			}
			for k, want := range map[string][]string{
				"X-Portcullis-Source": {frontendSource.ID},
				"X_portcullis_source": nil,
				"X-Portcullis-Other":  nil,
				"X-Forwarded-For":     {"127.0.0.1"},
				"X-Forwarded-Port":    nil,
				"Forwarded":           {"for=127.0.0.1;proto=http"},
				"X-Real-Ip":           nil,
				"Proxy-Authorization": nil,
				"Keep-Alive":          nil,
				"Upgrade":             nil,
				"X-Claim-Tenant":      {"t1"},
			} {
				if diff := cmp.Diff(want, s.header[k]); diff != "" {
					t.Errorf("application saw %s (-want +got):\n%s", k, diff)
				}
			}
		})
	}
}
