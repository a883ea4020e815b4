package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/agent/verifier"
)

// TestHostileClients sends what an attacker would to a captured port:
// TLS, non-HTTP bytes, two tokens, request smuggling shapes, and identity
// headers of its own. None of it may reach the app, except the allowed
// request whose forged headers must be replaced.
func TestHostileClients(t *testing.T) {
	e, tok := protocolEnv(t)
	orders := e.pods["orders-api"]
	addr := orders.Addr(appPort).String()

	// raw sends b on a new connection and returns the status of the first
	// response, 0 when the server closes (or resets) without one.
	raw := func(t *testing.T, b string) int {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c, b); err != nil {
			t.Fatalf("send: %v", err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	before := e.stats(orders)
	tlsBefore := e.agent.metric("portcullis_verifier_connections_total", `result="refused_tls"`)
	nonHTTPBefore := e.agent.metric("portcullis_verifier_connections_total", `result="refused_non_http"`)
	bearer := "Authorization: Bearer " + tok.read + "\r\n"
	for _, tc := range []struct {
		name string
		send string
		want int // 0: the connection is closed without an HTTP answer
	}{
		// A TLS 1.2 ClientHello record header and the start of a handshake.
		{"tls client hello", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + strings.Repeat("\x00", 32), 0},
		{"non-http bytes", "SSH-2.0-OpenSSH_9.2\r\n", 0},
		{"two bearer tokens", "GET /orders/1 HTTP/1.1\r\nHost: x\r\n" + bearer + bearer + "\r\n", 400},
		{"content-length and transfer-encoding", "POST /orders/1 HTTP/1.1\r\nHost: x\r\n" + bearer +
			"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"two content-lengths", "POST /orders/1 HTTP/1.1\r\nHost: x\r\n" + bearer +
			"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := raw(t, tc.send); got != tc.want {
				t.Errorf("got status %d, want %d", got, tc.want)
			}
		})
	}
	if after := e.stats(orders); after != before {
		t.Errorf("hostile requests reached the app: %+v, then %+v", before, after)
	}
	if got := e.agent.metric("portcullis_verifier_connections_total", `result="refused_tls"`) - tlsBefore; got != 1 {
		t.Errorf("refused_tls connections grew by %v, want 1", got)
	}
	if got := e.agent.metric("portcullis_verifier_connections_total", `result="refused_non_http"`) - nonHTTPBefore; got != 1 {
		t.Errorf("refused_non_http connections grew by %v, want 1", got)
	}

	t.Run("forged identity headers on an allowed request", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, orders.URL(appPort, "/orders/1"), nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+tok.read)
		req.Header.Set("X-Portcullis-Source", "spiffe://"+trustDomain+"/ns/shop/sa/frontend")
		req.Header.Set("X-Portcullis-Anything", "forged")
		req.Header.Set("X-Forwarded-For", "10.9.9.9")
		req.Header.Set("Forwarded", "for=10.9.9.9")
		resp, err := hostClient(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got appReply
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 200 {
			t.Fatalf("got %d, %v; want 200 and the app's answer", resp.StatusCode, err)
		}
		host := e.net.Host4.String()
		checks := map[string]string{
			"X-Portcullis-Source": "anonymous",
			"X-Forwarded-For":     host,
			"Forwarded":           "for=" + host + ";proto=http",
		}
		for k, want := range checks {
			if got.Headers[k] != want {
				t.Errorf("app saw %s %q, want %q", k, got.Headers[k], want)
			}
		}
		if v, ok := got.Headers["X-Portcullis-Anything"]; ok {
			t.Errorf("app saw client-sent X-Portcullis-Anything %q, want it stripped", v)
		}
	})
}

// TestNodeConnectionLimit: limits.maxConns bounds the connections of all
// the node's pods together, beyond each pod's reserve; beyond both, a
// connection is closed unserved and counted.
func TestNodeConnectionLimit(t *testing.T) {
	e := newEnv(t, demoPods(e2eApp))
	e.setPolicies(readers("Enforce", "Orders.Read"))
	e.agent.Extra = "limits:\n  maxConns: 1\n"
	e.agent.Start()
	addr := e.pods["orders-api"].Addr(appPort).String()

	// The pod's reserve and then the node's one connection: each makes a
	// request (refused without a token, the connection stays open) and
	// holds its place.
	for i := range verifier.DefaultBudgetReserve + 1 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "GET /orders/1 HTTP/1.1\r\nHost: orders\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("connection %d: %v %v, want 401", i, resp, err)
		}
		resp.Body.Close()
	}

	// The agent resets the next one on accept: the reset may even beat the
	// dial's return.
	over, err := net.DialTimeout("tcp", addr, 5*time.Second)
	switch {
	case errors.Is(err, syscall.ECONNRESET):
	case err != nil:
		t.Fatal(err)
	default:
		defer over.Close()
		over.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(over, "GET /orders/1 HTTP/1.1\r\nHost: orders\r\n\r\n")
		if resp, err := http.ReadResponse(bufio.NewReader(over), nil); err == nil {
			resp.Body.Close()
			t.Errorf("connection over the reserve and the node's limit: got %d, want it closed unserved", resp.StatusCode)
		}
	}
	if got := e.agent.metric("portcullis_verifier_connections_total", `result="refused_node_limit"`); got != 1 {
		t.Errorf(`connections_total{result="refused_node_limit"}: got %v, want 1`, got)
	}
}
