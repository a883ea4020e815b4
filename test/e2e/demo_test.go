package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
)

// TestDemoRows makes every request of the demo (tools/demo/demo.sh) with
// curl, against demoapp behind the agent binary with the demo's own
// policies: ingress from the host netns, east-west from the frontend and
// attacker pods, over IPv4 and IPv6.
func TestDemoRows(t *testing.T) {
	e := newEnv(t, demoPods(demoApp))
	e.setPolicies(e.demoPolicies())
	e.agent.Start()

	tokRead := mint(t, idp.TokenRequest{Audience: "api://orders", Roles: []string{"Orders.Read"}})
	tokNoRole := mint(t, idp.TokenRequest{Audience: "api://orders", Roles: []string{"Orders.Audit"}})
	tokWrongAud := mint(t, idp.TokenRequest{Audience: "api://payments", Roles: []string{"Orders.Read"}})
	tokExpired := mint(t, idp.TokenRequest{Audience: "api://orders", Roles: []string{"Orders.Read"},
		Claims: map[string]any{"exp": 1000000000, "iat": 999996400, "nbf": 999996400}})
	tokFrontend := mint(t, idp.TokenRequest{Audience: "api://orders", App: true, Roles: []string{"Orders.Write"}, ClientID: frontendClient})

	orders := e.pods["orders-api"]
	frontendID := "spiffe://" + trustDomain + "/ns/shop/sa/frontend"
	bearer := func(tok string) []string { return []string{"-H", "Authorization: Bearer " + tok} }
	for _, tc := range []struct {
		name   string
		from   string // pod name, "" for the host netns
		url    string
		args   []string
		want   int
		reason string // error_description of a refusal
		source string // X-Portcullis-Source the app must see when forwarded
	}{
		{name: "no token", url: orders.URL(appPort, "/orders/42"), want: 401, reason: "missing_token"},
		{name: "expired token", url: orders.URL(appPort, "/orders/42"), args: bearer(tokExpired), want: 401, reason: "expired"},
		{name: "wrong audience", url: orders.URL(appPort, "/orders/42"), args: bearer(tokWrongAud), want: 401, reason: "wrong_audience"},
		{name: "token without the role", url: orders.URL(appPort, "/orders/42"), args: bearer(tokNoRole), want: 403, reason: "no_matching_rule"},
		{name: "token with the role", url: orders.URL(appPort, "/orders/42"), args: bearer(tokRead), want: 200, source: "anonymous"},
		{name: "token with the role over IPv6", url: orders.URL6(appPort, "/orders/42"), args: bearer(tokRead), want: 200, source: "anonymous"},
		{name: "east-west with the role", from: "attacker", url: orders.URL(appPort, "/orders/7"), args: bearer(tokRead), want: 200, source: "spiffe://" + trustDomain + "/ns/shop/sa/attacker"},
		{name: "frontend by workload identity", from: "frontend", url: orders.URL(appPort, "/internal/stock"), want: 200, source: frontendID},
		{name: "frontend by workload identity over IPv6", from: "frontend", url: orders.URL6(appPort, "/internal/stock"), want: 200, source: frontendID},
		{name: "attacker refused", from: "attacker", url: orders.URL(appPort, "/internal/stock"), want: 403, reason: "no_matching_rule"},
		{name: "frontend's own app token", from: "frontend", url: orders.URL(appPort, "/orders"),
			args: append(bearer(tokFrontend), "-X", "POST", "-d", `{"sku":"42"}`), want: 200, source: frontendID},
		{name: "stolen token replayed", from: "attacker", url: orders.URL(appPort, "/orders"),
			args: append(bearer(tokFrontend), "-X", "POST", "-d", `{"sku":"42"}`), want: 403},
		{name: "forged identity header", from: "attacker", url: orders.URL(appPort, "/internal/stock"),
			args: []string{"-H", "X-Portcullis-Source: " + frontendID}, want: 403, reason: "no_matching_rule"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var from *pod
			if tc.from != "" {
				from = e.pods[tc.from]
			}
			res := e.curl(from, append(tc.args, tc.url)...)
			if res.Status != tc.want {
				t.Fatalf("got status %d, want %d; body %s", res.Status, tc.want, res.Body)
			}
			for _, tok := range []string{tokRead, tokNoRole, tokWrongAud, tokExpired, tokFrontend} {
				if strings.Contains(res.Body, tok) || strings.Contains(fmt.Sprint(res.Header), tok) {
					t.Errorf("response echoes a token")
				}
			}
			if tc.want != 200 {
				wa := res.Header.Get("WWW-Authenticate")
				code := map[int]string{401: "invalid_token", 403: "insufficient_scope"}[tc.want]
				if !strings.HasPrefix(wa, `Bearer error="`+code+`"`) {
					t.Errorf("got WWW-Authenticate %q, want Bearer error=%q", wa, code)
				}
				if tc.reason != "" && !strings.Contains(wa, `error_description="`+tc.reason+`"`) {
					t.Errorf("got WWW-Authenticate %q, want error_description %q", wa, tc.reason)
				}
				var body map[string]string
				if err := json.Unmarshal([]byte(res.Body), &body); err != nil || body["error"] != code {
					t.Errorf("got body %q, want JSON with error %q", res.Body, code)
				}
				return
			}
			var got struct {
				Service string            `json:"service"`
				Headers map[string]string `json:"headers"`
			}
			if err := json.Unmarshal([]byte(res.Body), &got); err != nil {
				t.Fatalf("app answer %q: %v", res.Body, err)
			}
			if diff := cmp.Diff(tc.source, got.Headers["X-Portcullis-Source"]); diff != "" || got.Service != "orders-api" {
				t.Errorf("app %q saw X-Portcullis-Source (-want +got):\n%s", got.Service, diff)
			}
		})
	}
}

// TestConcurrentCallersKeepTheirIdentity: the frontend and the attacker
// call the same endpoint at the same time over many parallel connections
// (curl -Z); the kernel-told identity must never cross over: every
// frontend call is allowed, every attacker call refused.
func TestConcurrentCallersKeepTheirIdentity(t *testing.T) {
	e := newEnv(t, demoPods(demoApp))
	e.setPolicies(e.demoPolicies())
	e.agent.Start()
	url := e.pods["orders-api"].URL(appPort, "/internal/stock")
	const n = 200
	args := []string{"-sS", "-Z", "--parallel-max", "16", "-m", "20", "-H", "Connection: close", "-w", `%{http_code}\n`}
	for range n {
		args = append(args, "-o", "/dev/null", url)
	}
	type result struct {
		out string
		err error
	}
	results := map[string]chan result{}
	for _, name := range []string{"frontend", "attacker"} {
		ch := make(chan result, 1)
		results[name] = ch
		cmd := exec.Command("curl", args...)
		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		startInPod(t, e.pods[name], cmd)
		go func() {
			err := cmd.Wait()
			if err != nil {
				err = fmt.Errorf("%w: %s", err, stderr.String())
			}
			ch <- result{out.String(), err}
		}()
	}
	for name, want := range map[string]string{"frontend": "200", "attacker": "403"} {
		var r result
		select {
		case r = <-results[name]:
		case <-time.After(60 * time.Second):
			t.Fatalf("curl from %s did not finish within 60s", name)
		}
		if r.err != nil {
			t.Fatalf("curl from %s: %v: %s", name, r.err, r.out)
		}
		codes := map[string]int{}
		for _, c := range strings.Fields(r.out) {
			codes[c]++
		}
		if diff := cmp.Diff(map[string]int{want: n}, codes); diff != "" {
			t.Errorf("status codes of %d calls from %s (-want +got):\n%s", n, name, diff)
		}
	}
}
