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

// TestTrailersFiltered: request trailers follow the rules of request
// headers, in the announcement and in the trailer block, on both
// protocols.
func TestTrailersFiltered(t *testing.T) {
	type seen struct {
		announced []string
		trailer   http.Header
		body      string
	}
	got := make(chan seen, 1)
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var s seen
		for k := range r.Trailer {
			s.announced = append(s.announced, k)
		}
		b, _ := io.ReadAll(r.Body)
		s.body = string(b)
		s.trailer = r.Trailer.Clone()
		got <- s
	}))
	authz := AuthorizerFunc(func(ctx context.Context, r *Request) Decision {
		d := testAuthorizer(ctx, r)
		d.Headers = append(d.Headers, HeaderField{"X-Decided", "d"})
		return d
	})
	h := start(t, appAddr(app), Config{Authorizer: authz})
	forged := http.Header{
		"X-Portcullis-Source": {"spiffe://cluster.local/ns/kube-system/sa/admin"},
		"X_portcullis_source": {"spoof"},
		"X-Claim-Oid":         {"forged"}, // a StripHeaders name
		"X-Decided":           {"forged"}, // set by the decision
		"X-Forwarded-For":     {"6.6.6.6"},
		"X-Forwarded-Prefix":  {"/evil"},
		"X-Real-Ip":           {"6.6.6.6"},
		"Forwarded":           {"for=6.6.6.6"},
		"X-Keep-Trailer":      {"kept"},
	}
	want := http.Header{"X-Keep-Trailer": {"kept"}}
	check := func(t *testing.T, status int) {
		t.Helper()
		if status != 200 {
			t.Fatalf("status %d, want 200", status)
		}
		var s seen
		select {
		case s = <-got:
		case <-time.After(5 * time.Second):
			t.Fatal("the request never reached the application")
		}
		if s.body != "payload" {
			t.Errorf("body: got %q, want payload", s.body)
		}
		if diff := cmp.Diff([]string{"X-Keep-Trailer"}, s.announced); diff != "" {
			t.Errorf("announced trailers (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(want, s.trailer); diff != "" {
			t.Errorf("trailers (-want +got):\n%s", diff)
		}
	}

	t.Run("http1", func(t *testing.T) {
		// Raw, to send names Go's client would not (Authorization, Host in
		// the trailer block) and one that was never announced.
		var names, fields []string
		for k, vv := range forged {
			names = append(names, k)
			fields = append(fields, k+": "+vv[0]+"\r\n")
		}
		status, _ := rawRequest(t, h.addr, "POST /t HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "+tokGood+
			"\r\nConnection: close, X-Hop\r\nTransfer-Encoding: chunked\r\nTrailer: "+strings.Join(names, ", ")+", X-Hop\r\n\r\n"+
			"7\r\npayload\r\n0\r\n"+strings.Join(fields, "")+
			"X-Hop: forged\r\nAuthorization: Bearer forged\r\nHost: evil\r\nX-Unannounced: forged\r\nX-Portcullis-Late: forged\r\n\r\n")
		want["X-Unannounced"] = []string{"forged"} // net/http keeps unannounced trailers
		defer delete(want, "X-Unannounced")
		check(t, atoiStatus(status))
	})
	t.Run("h2c", func(t *testing.T) {
		req, _ := http.NewRequest("POST", "http://"+h.addr+"/t", io.NopCloser(strings.NewReader("payload")))
		req.ContentLength = -1
		req.Header.Set("Authorization", "Bearer "+tokGood)
		req.Trailer = forged.Clone()
		resp, err := h2cClient(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		check(t, resp.StatusCode)
	})
}

// atoiStatus returns the code of a status line such as "HTTP/1.1 200 OK",
// 0 when there is none.
func atoiStatus(line string) int {
	_, rest, _ := strings.Cut(line, " ")
	code := 0
	for i := 0; i < len(rest) && i < 3; i++ {
		code = code*10 + int(rest[i]-'0')
	}
	return code
}
