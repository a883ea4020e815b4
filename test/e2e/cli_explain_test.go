package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"testing"
)

// liveOutcome is what a request got through the datapath, or what explain
// says it would get.
type liveOutcome struct {
	Allow  bool
	Status int
	// Reason is the refusal's reason (WWW-Authenticate error_description
	// on the live path); empty for an allow.
	Reason string
}

func (o liveOutcome) String() string {
	if o.Allow {
		return fmt.Sprintf("allow %d", o.Status)
	}
	return fmt.Sprintf("deny %d %s", o.Status, o.Reason)
}

var errorDescription = regexp.MustCompile(`error_description="([^"]*)"`)

// TestCLIExplainAgreesWithLivePath is the property that explain is the
// live path's decision without the request: for every request of a
// generated set (methods, paths, ports, callers: the host, the frontend pod
// with its client ID, the attacker pod; tokens: none, with the role,
// without it, wrong audience, expired, the frontend's app token bound to
// its workload), the real request through the captured pod port and
// `portcullis explain --source … --token …` against the same agent end in
// the same decision, status and reason.
func TestCLIExplainAgreesWithLivePath(t *testing.T) {
	e := newEnv(t, demoPods(e2eApp))
	e.setPolicies(e.demoPolicies())
	e.agent.Start()
	c := newCLI(t, e)
	tok := mintCLITokens(t)
	orders := e.pods["orders-api"]
	hc := hostClient(t)

	type caller struct {
		name   string // pod name, "" for the host netns
		source string // explain --source
	}
	callers := []caller{{"", ""}, {"frontend", "shop/frontend"}, {"attacker", "shop/attacker"}}
	tokens := []struct{ name, token string }{
		{"none", ""}, {"read", tok.read}, {"no role", tok.noRole}, {"wrong audience", tok.wrongAud},
		{"expired", tok.expired}, {"frontend app", tok.frontend},
	}
	type request struct {
		method, path string
		port         uint16
	}
	var requests []request
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete} {
		for _, p := range []string{"/orders/42", "/orders", "/internal/stock", "/admin"} {
			requests = append(requests, request{m, p, appPort})
		}
	}
	// A port no policy names is not captured: explain must say the
	// request goes through.
	requests = append(requests, request{http.MethodGet, "/orders/42", directPort}, request{http.MethodPost, "/orders", directPort})

	cases, allows := 0, 0
	for _, r := range requests {
		for _, from := range callers {
			for _, tk := range tokens {
				name := fmt.Sprintf("%s :%d%s from %s with token %s", r.method, r.port, r.path, podName(e.pods[from.name]), tk.name)
				live := liveRequest(t, e, hc, from.name, r.method, orders.URL(r.port, r.path), tk.token)
				args := []string{"explain", "--workload", "shop/orders-api", "--port", strconv.Itoa(int(r.port)),
					"--method", r.method, "--path", r.path, "-o", "json"}
				if from.source != "" {
					args = append(args, "--source", from.source)
				}
				if tk.token != "" {
					args = append(args, "--token", tk.token)
				}
				got := explainOutcome(t, c, name, args)
				cases++
				if live.Allow {
					allows++
				}
				if got != live {
					t.Errorf("%s: explain says %v, the live path did %v", name, got, live)
				}
			}
		}
	}
	// The set must exercise both outcomes, or the property says little.
	if allows == 0 || allows == cases {
		t.Errorf("%d of %d requests allowed: the generated set should have both outcomes", allows, cases)
	}
	t.Logf("%d requests, %d allowed", cases, allows)
}

// liveRequest sends one request to url from the pod named from (curl in
// its netns and cgroup) or from the host (net/http).
func liveRequest(t *testing.T, e *env, hc *http.Client, from, method, url, token string) liveOutcome {
	t.Helper()
	var (
		status int
		header http.Header
	)
	if from == "" {
		resp, _ := do(t, hc, method, url, token, nil)
		status, header = resp.StatusCode, resp.Header
	} else {
		args := []string{"-X", method}
		if token != "" {
			args = append(args, "-H", "Authorization: Bearer "+token)
		}
		res := e.curl(e.pods[from], append(args, url)...)
		status, header = res.Status, res.Header
	}
	o := liveOutcome{Status: status, Allow: status == http.StatusOK}
	if !o.Allow {
		if m := errorDescription.FindStringSubmatch(header.Get("WWW-Authenticate")); m != nil {
			o.Reason = m[1]
		}
	}
	return o
}

// explainOutcome runs explain and reads its decision; the exit code must
// agree with it (0 allow, 1 deny).
func explainOutcome(t *testing.T, c *cli, name string, args []string) liveOutcome {
	t.Helper()
	r := c.run(t, "", args...)
	var resp struct {
		Decision    string `json:"decision"`
		Reason      string `json:"reason"`
		TokenReason string `json:"token_reason"`
		Status      int    `json:"status"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &resp); err != nil {
		t.Fatalf("%s: explain: exit %d, output %q, stderr %q: %v", name, r.Code, r.Stdout, r.Stderr, err)
	}
	o := liveOutcome{Allow: resp.Decision == "allow", Status: resp.Status}
	if !o.Allow {
		// Explain gives the policy's reason (token_missing,
		// token_invalid) and, apart, why the token was refused; the live
		// path answers a refused token with the latter (agent/authz).
		o.Reason = resp.Reason
		if resp.TokenReason != "" {
			o.Reason = resp.TokenReason
		}
	}
	wantCode := map[bool]int{true: 0, false: 1}[o.Allow]
	if r.Code != wantCode {
		t.Errorf("%s: explain decided %q but exited %d, want %d", name, resp.Decision, r.Code, wantCode)
	}
	return o
}
