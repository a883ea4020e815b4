package verifier

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portcullis-mesh/portcullis/agent/audit"
	"github.com/portcullis-mesh/portcullis/agent/metrics"
)

// echoHeaders answers with the request's headers as JSON.
func echoHeaders(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Proto", r.Proto)
	json.NewEncoder(w).Encode(r.Header)
}

func TestHTTP1Decisions(t *testing.T) {
	var hits atomic.Int32
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		echoHeaders(w, r)
	}))
	h := start(t, appAddr(app), Config{})
	c := h1Client(t)

	tests := []struct {
		name       string
		token      string
		wantStatus int
		wantAuth   string // WWW-Authenticate
		wantBody   string
		wantHit    bool
	}{
		{"no token", "", 401, `Bearer error="invalid_token", error_description="missing_token"`,
			`{"error":"invalid_token","error_description":"missing_token"}`, false},
		{"expired", tokExpired, 401, `Bearer error="invalid_token", error_description="expired"`,
			`{"error":"invalid_token","error_description":"expired"}`, false},
		{"lacks role", tokNoRole, 403, `Bearer error="insufficient_scope", error_description="no_matching_rule"`,
			`{"error":"insufficient_scope","error_description":"no_matching_rule"}`, false},
		{"allowed", tokGood, 200, "", "", true},
		{"audit mode deny is forwarded", tokAuditDeny, 200, "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := hits.Load()
			resp := get(t, c, "http://"+h.addr+"/orders?id=1", tt.token, nil)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d, want %d (body %s)", resp.StatusCode, tt.wantStatus, body)
			}
			if got := resp.Header.Get("WWW-Authenticate"); got != tt.wantAuth {
				t.Errorf("WWW-Authenticate = %q, want %q", got, tt.wantAuth)
			}
			if tt.wantBody != "" {
				if got := strings.TrimSpace(string(body)); got != tt.wantBody {
					t.Errorf("body = %s, want %s", got, tt.wantBody)
				}
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type = %q, want application/json", ct)
				}
			}
			if tt.token != "" && strings.Contains(string(body)+fmt.Sprint(resp.Header), tt.token) && !tt.wantHit {
				t.Errorf("refusal echoes the token")
			}
			if got := hits.Load() - before; (got == 1) != tt.wantHit {
				t.Errorf("application hits = %d, want hit=%v", got, tt.wantHit)
			}
		})
	}

	// The audit records match the requests one for one, without the query
	// and never with the token.
	recs := h.audit.all()
	var got []string
	for _, r := range recs {
		got = append(got, fmt.Sprintf("%s %s %s %s %d %s", r.Decision, r.Reason, r.Mode, r.Path, r.Status, r.Source))
		line := string(r.AppendJSON(nil))
		for _, tok := range []string{tokGood, tokExpired, tokNoRole, tokAuditDeny} {
			if strings.Contains(line, tok) {
				t.Errorf("audit record contains a token: %s", line)
			}
		}
	}
	src := frontendSource.ID
	want := []string{
		"deny missing_token enforce /orders 401 " + src,
		"deny expired enforce /orders 401 " + src,
		"deny no_matching_rule enforce /orders 403 " + src,
		"allow  enforce /orders 0 " + src,
		"deny no_matching_rule audit /orders 0 " + src,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("audit records (-want +got):\n%s", diff)
	}
	if n := metricValue(t, h.metrics, "portcullis_verifier_requests_total", map[string]string{"decision": "deny", "reason": "missing_token"}); n != 1 {
		t.Errorf("requests_total{deny,missing_token} = %v, want 1", n)
	}
}

func TestHeadersStrippedAndSet(t *testing.T) {
	app := startApp(t, http.HandlerFunc(echoHeaders))
	h := start(t, appAddr(app), Config{})
	for _, tt := range []struct {
		name   string
		client *http.Client
		h1     bool
	}{
		{"http1", h1Client(t), true},
		{"h2c", h2cClient(t), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sent := map[string]string{
				"X-Portcullis-Source": "spiffe://cluster.local/ns/kube-system/sa/admin",
				"X_Portcullis_Source": "spoof",
				"X-Portcullis-Other":  "spoof",
				"X-Claim-Oid":         "someone-else",
				"X-Forwarded-For":     "6.6.6.6",
				"X-Forwarded-Host":    "evil",
				"Forwarded":           "for=6.6.6.6",
				"X-Keep":              "kept",
				// Forwarding headers frameworks trust for scheme, port,
				// prefix or client address.
				"X-Forwarded-Port":         "443",
				"X-Forwarded-Ssl":          "on",
				"X-Forwarded-Prefix":       "/evil",
				"X_Forwarded_Scheme":       "https",
				"x-forwarded-server":       "evil",
				"X-Real-Ip":                "6.6.6.6",
				"X-Client-Ip":              "6.6.6.6",
				"True-Client-Ip":           "6.6.6.6",
				"X-Original-Forwarded-For": "6.6.6.6",
				"X-Original-Url":           "/admin",
				"X-Rewrite-Url":            "/admin",
			}
			if tt.h1 {
				// Connection-specific headers do not exist in HTTP/2.
				sent["Connection"] = "X-Hop"
				sent["X-Hop"] = "hop-by-hop"
			}
			resp := get(t, tt.client, "http://"+h.addr+"/", tokGood, sent)
			defer resp.Body.Close()
			var got http.Header
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
				t.Fatal(err)
			}
			want := map[string][]string{
				"X-Portcullis-Source":      {frontendSource.ID},
				"X_portcullis_source":      nil,
				"X-Portcullis-Other":       nil,
				"X-Claim-Oid":              {"oid-1"},
				"X-Bad":                    nil, // CR/LF in an authorizer value: dropped
				"Injected":                 nil,
				"X-Forwarded-For":          {"127.0.0.1"},
				"X-Forwarded-Host":         {h.addr},
				"X-Forwarded-Proto":        {"http"},
				"Forwarded":                {"for=127.0.0.1;proto=http"},
				"X-Hop":                    nil,
				"X-Keep":                   {"kept"},
				"X-Forwarded-Port":         nil,
				"X-Forwarded-Ssl":          nil,
				"X-Forwarded-Prefix":       nil,
				"X_forwarded_scheme":       nil,
				"X-Forwarded-Server":       nil,
				"X-Real-Ip":                nil,
				"X-Client-Ip":              nil,
				"True-Client-Ip":           nil,
				"X-Original-Forwarded-For": nil,
				"X-Original-Url":           nil,
				"X-Rewrite-Url":            nil,
				"Authorization":            {"Bearer " + tokGood},
			}
			for k, v := range want {
				if diff := cmp.Diff(v, got[k]); diff != "" {
					t.Errorf("application saw %s (-want +got):\n%s", k, diff)
				}
			}
		})
	}
}

func TestMultipleAuthorizationRefused(t *testing.T) {
	var hits atomic.Int32
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	h := start(t, appAddr(app), Config{})
	status, _ := rawRequest(t, h.addr, "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "+tokGood+
		"\r\nAuthorization: Bearer "+tokGood+"\r\n\r\n")
	if !strings.HasPrefix(status, "HTTP/1.1 400") {
		t.Errorf("status line = %q, want 400", status)
	}
	if hits.Load() != 0 {
		t.Error("request with two Authorization headers reached the application")
	}
	recs := h.audit.all()
	if len(recs) != 1 || recs[0].Reason != string(ReasonMultipleTokens) {
		t.Errorf("audit = %+v, want one multiple_tokens record", recs)
	}
}

// rawRequest writes raw bytes on a new connection and returns the status
// line and body of the response; both are empty if the server closed the
// connection without answering.
func rawRequest(t *testing.T, addr, raw string) (status, body string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if closedByPeer(err) {
		return "", "" // refused at accept (MaxConns)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil && !closedByPeer(err) {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("no response and no close within 5s")
		}
		return "", ""
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.Proto + " " + resp.Status, string(b)
}

func TestSmugglingShapesRefused(t *testing.T) {
	var hits atomic.Int32
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.Copy(io.Discard, r.Body)
	}))
	h := start(t, appAddr(app), Config{})
	auth := "Authorization: Bearer " + tokGood + "\r\n"
	tests := []struct {
		name, raw, want string
	}{
		{"CL and TE", "POST / HTTP/1.1\r\nHost: a\r\n" + auth + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"},
		{"TE and CL", "POST / HTTP/1.1\r\nHost: a\r\n" + auth + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", "400"},
		{"differing CL", "POST / HTTP/1.1\r\nHost: a\r\n" + auth + "Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", "400"},
		{"TE not chunked", "POST / HTTP/1.1\r\nHost: a\r\n" + auth + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", "400"},
		{"two TE", "POST / HTTP/1.1\r\nHost: a\r\n" + auth + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"},
		{"TE on HTTP/1.0", "POST / HTTP/1.0\r\nHost: a\r\n" + auth + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\n" + auth + "X-A: b\r\n c\r\n\r\n", "400"},
		{"bare LF", "GET / HTTP/1.1\nHost: a\n" + auth + "\n", "400"},
		{"bare LF inside", "GET / HTTP/1.1\r\nHost: a\nX: y\r\n" + auth + "\r\n", "400"},
		{"duplicate Host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n" + auth + "\r\n", "400"},
		{"missing Host", "GET / HTTP/1.1\r\n" + auth + "\r\n", "400"},
		{"invalid Host", "GET / HTTP/1.1\r\nHost: a b\r\n" + auth + "\r\n", "400"},
		{"space before colon", "GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n" + auth + "\r\n", "400"},
		{"dot segments", "GET /public/../admin HTTP/1.1\r\nHost: a\r\n" + auth + "\r\n", "400"},
		{"CONNECT", "CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n" + auth + "\r\n", "405"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := hits.Load()
			status, _ := rawRequest(t, h.addr, tt.raw)
			if !strings.HasPrefix(status, "HTTP/1.1 "+tt.want) {
				t.Errorf("status line = %q, want %s", status, tt.want)
			}
			if hits.Load() != before {
				t.Error("the application was called")
			}
		})
	}

	t.Run("bad chunk aborts the forwarded body", func(t *testing.T) {
		got := make(chan error, 1)
		app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, err := io.Copy(io.Discard, r.Body)
			got <- err
		}))
		h := start(t, appAddr(app), Config{})
		rawRequest(t, h.addr, "POST / HTTP/1.1\r\nHost: a\r\n"+auth+"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\nzz\r\nGET /smuggled HTTP/1.1\r\n\r\n")
		select {
		case err := <-got:
			if err == nil {
				t.Error("application read a complete body from a malformed chunked request")
			}
		case <-time.After(5 * time.Second):
			t.Error("application never saw the request")
		}
	})
}

func TestHeaderLimits(t *testing.T) {
	app := startApp(t, http.HandlerFunc(echoHeaders))
	h := start(t, appAddr(app), Config{MaxHeaderCount: 10, MaxHeaderBytes: 8 << 10})
	auth := "Authorization: Bearer " + tokGood + "\r\n"

	many := "GET / HTTP/1.1\r\nHost: a\r\n" + auth
	for i := 0; i < 10; i++ {
		many += fmt.Sprintf("X-H%d: v\r\n", i)
	}
	if status, _ := rawRequest(t, h.addr, many+"\r\n"); !strings.HasPrefix(status, "HTTP/1.1 431") {
		t.Errorf("12 headers: status %q, want 431", status)
	}
	big := "GET / HTTP/1.1\r\nHost: a\r\n" + auth + "X-Big: " + strings.Repeat("a", 9<<10) + "\r\n\r\n"
	if status, _ := rawRequest(t, h.addr, big); !strings.HasPrefix(status, "HTTP/1.1 431") {
		t.Errorf("9 KiB header: status %q, want 431", status)
	}
	// A 6 KiB header fits the limit but not the initial 4 KiB buffer.
	fits := "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + auth + "X-Big: " + strings.Repeat("b", 6<<10) + "\r\n\r\n"
	if status, rest := rawRequest(t, h.addr, fits); !strings.HasPrefix(status, "HTTP/1.1 200") || !strings.Contains(rest, "bbbb") {
		t.Errorf("6 KiB header: status %q, want 200 with the header echoed", status)
	}
}

func TestSlowlorisTimesOut(t *testing.T) {
	app := startApp(t, http.HandlerFunc(echoHeaders))
	h := start(t, appAddr(app), Config{ReadHeaderTimeout: 200 * time.Millisecond})
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	// Keep dribbling bytes; the server must still close at the deadline.
	go func() {
		for i := 0; i < 20; i++ {
			if _, err := io.WriteString(c, "a"); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	_, err = io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("server kept a slowloris connection open for 5s")
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("closed after %v, want about 200ms", el)
	}
}

func TestIdleKeepAliveClosed(t *testing.T) {
	app := startApp(t, http.HandlerFunc(echoHeaders))
	h := start(t, appAddr(app), Config{IdleTimeout: 150 * time.Millisecond})
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "+tokGood+"\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if _, err := br.ReadByte(); !closedByPeer(err) {
		t.Errorf("read on idle keep-alive connection: %v, want EOF or reset", err)
	}
}

func TestNonHTTPAndTLSRefused(t *testing.T) {
	var hits atomic.Int32
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	h := start(t, appAddr(app), Config{})
	clientHello := "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + strings.Repeat("\x00", 32)
	for _, raw := range []string{clientHello, "\x00\x00\x00\x08\x04\xd2\x16\x2f", "SSH-2.0-OpenSSH_9.2\r\n", " GET / HTTP/1.1\r\n\r\n"} {
		status, rest := rawRequest(t, h.addr, raw)
		if status != "" || rest != "" {
			t.Errorf("%q: got %q %q, want the connection closed without a reply", raw, status, rest)
		}
	}
	if hits.Load() != 0 {
		t.Error("non-HTTP bytes reached the application")
	}
	want := `
# HELP portcullis_verifier_connections_total Captured connections by result (accepted, passthrough, refused_tls, refused_non_http, refused_limit, refused_node_limit, refused_timeout, refused_l4).
# TYPE portcullis_verifier_connections_total counter
portcullis_verifier_connections_total{result="refused_non_http"} 3
portcullis_verifier_connections_total{result="refused_tls"} 1
`
	if err := testutil.GatherAndCompare(h.metrics.Registry(), strings.NewReader(want), "portcullis_verifier_connections_total"); err != nil {
		t.Error(err)
	}
}

func TestMaxConns(t *testing.T) {
	app := startApp(t, http.HandlerFunc(echoHeaders))
	h := start(t, appAddr(app), Config{MaxConns: 1})
	first, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	// A full request/response on the first proves it is being served.
	io.WriteString(first, "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "+tokGood+"\r\n\r\n")
	first.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(first), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	status, _ := rawRequest(t, h.addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if status != "" {
		t.Errorf("second connection got %q, want it closed", status)
	}
	if n := metricValue(t, h.metrics, "portcullis_verifier_connections_total", map[string]string{"result": metrics.ConnRefusedLimit}); n != 1 {
		t.Errorf("refused_limit = %v, want 1", n)
	}
}

// TestConnBudget: two Servers without reserves sharing a budget of one
// connection serve one at a time between them, the budget is returned when
// it closes, and a third Server's reserve is served while the budget is
// used up.
func TestConnBudget(t *testing.T) {
	app := startApp(t, http.HandlerFunc(echoHeaders))
	budget := NewConnBudget(1)
	a := start(t, appAddr(app), Config{Budget: budget, BudgetReserve: -1})
	b := start(t, appAddr(app), Config{Budget: budget, BudgetReserve: -1})
	c := start(t, appAddr(app), Config{Budget: budget, BudgetReserve: 1})
	// open makes a request on a new connection and leaves it open.
	open := func(addr string) net.Conn {
		t.Helper()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		io.WriteString(conn, "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "+tokGood+"\r\n\r\n")
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("request on a connection to %s: %v", addr, err)
		}
		resp.Body.Close()
		return conn
	}
	first := open(a.addr)
	if status, _ := rawRequest(t, b.addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"); status != "" {
		t.Errorf("connection to the other pod while the budget is used: got %q, want it closed", status)
	}
	if n := metricValue(t, b.metrics, "portcullis_verifier_connections_total", map[string]string{"result": metrics.ConnRefusedNodeLimit}); n != 1 {
		t.Errorf("refused_node_limit = %v, want 1", n)
	}
	open(c.addr) // its reserve
	if status, _ := rawRequest(t, c.addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"); status != "" {
		t.Errorf("connection beyond the reserve while the budget is used: got %q, want it closed", status)
	}
	first.Close()
	// The budget is returned once the server has seen the close; nothing
	// signals that moment, so wait for it (bounded).
	for deadline := time.Now().Add(5 * time.Second); budget.InUse() != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("budget in use %d 5s after the connection closed, want 0", budget.InUse())
		}
	}
	if status, _ := rawRequest(t, b.addr, "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "+tokGood+"\r\n\r\n"); status != "HTTP/1.1 200 OK" {
		t.Errorf("connection to the other pod after the first closed: got %q, want 200", status)
	}
}

func TestAuditLoggerIntegration(t *testing.T) {
	app := startApp(t, http.HandlerFunc(echoHeaders))
	al := audit.New(audit.Config{})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		al.Close(ctx)
	})
	h := start(t, appAddr(app), Config{Audit: al})
	sub, err := al.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	c := h1Client(t)
	get(t, c, "http://"+h.addr+"/a?secret=1", tokGood, nil).Body.Close()
	select {
	case r := <-sub.C():
		if r.Path != "/a" || r.Decision != audit.Allow || r.ObjectID != "oid-1" || r.Port != h.port {
			t.Errorf("record = %+v, want allow /a oid-1 port %d", r, h.port)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no audit record")
	}
}

// closedByPeer reports whether a read error means the verifier closed the
// connection: EOF, or a reset (idle connections are closed with SO_LINGER 0
// so no TIME_WAIT socket stays on a captured tuple).
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}
