package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"
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

// explained is what `explain -o json` says about a request.
type explained struct {
	Decision    string `json:"decision"`
	Reason      string `json:"reason"`
	TokenReason string `json:"token_reason"`
	Status      int    `json:"status"`
	Mode        string `json:"mode"`
	Captured    bool   `json:"captured"`
	WouldDeny   bool   `json:"would_deny"`
}

// outcome is what explain says happens on the wire.
func (x explained) outcome() liveOutcome {
	o := liveOutcome{Allow: x.Decision == "allow", Status: x.Status}
	if !o.Allow {
		o.Reason = x.effectiveReason()
	}
	return o
}

// effectiveReason is the reason the live path gives for a refusal. Explain
// reports the same one (policy.Decision.ReportedReason: why the token was
// refused when that decided), so it is explain's own reason field.
func (x explained) effectiveReason() string {
	return x.Reason
}

// record is the decision record explain implies for a captured request:
// the policy's decision (in audit mode, what enforcing would have done),
// and the status of the refusal sent, none when the request was forwarded
// (agent/audit.Record).
func (x explained) record() decisionLine {
	deny, status := x.Decision != "allow", x.Status
	if x.Mode == "audit" {
		deny, status = x.WouldDeny, 0
	}
	if !deny {
		return decisionLine{Decision: "allow"}
	}
	return decisionLine{Decision: "deny", Reason: x.effectiveReason(), Status: status}
}

var errorDescription = regexp.MustCompile(`error_description="([^"]*)"`)

// explainPolicies are added to the demo's: an enforced Deny policy (one
// rule for everyone, one with a token condition that turns allowed
// requests into refusals) and an audit-mode policy on a port the demo does
// not capture.
const explainPolicies = `
---
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  selector:
    matchLabels: {app: orders-api}
  mode: Enforce
  action: Deny
  rules:
  - to:
      ports: [8080]
      paths: ["/admin"]
  - to:
      ports: [8080]
      methods: [GET]
      paths: ["/orders/42"]
    when:
      issuers: [{name: entra}]
      roles: {anyOf: [Orders.Read]}
---
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: direct-audit, namespace: shop}
spec:
  selector:
    matchLabels: {app: orders-api}
  mode: Audit
  action: Allow
  rules:
  - to:
      ports: [8081]
      methods: [GET]
    when:
      issuers: [{name: entra}]
      roles: {anyOf: [Orders.Read]}
`

// TestCLIExplainAgreesWithLivePath is the property that explain is the
// live path's decision without the request: for every request of a
// generated set (methods, paths, ports, callers: the host over IPv4 and
// IPv6, the frontend pod with its client ID, the attacker pod; tokens: none, with the role,
// without it, wrong audience, expired, the frontend's app token bound to
// its workload), the real request through the pod's port and
// `portcullis explain --source … --token …` against the same agent end in
// the same decision, status and reason, and the agent's decision record
// for the request (streamed by `decisions --follow`) is the one explain
// implies. It holds for the demo's policies, then for a set with Deny
// rules and an audit-mode policy. For the tokens the agent accepts (and
// none), offline explain against the agent's own policy files agrees too.
func TestCLIExplainAgreesWithLivePath(t *testing.T) {
	e := newEnv(t, demoPods(e2eApp))
	e.setPolicies(e.demoPolicies())
	e.agent.Start()
	c := newCLI(t, e)
	tok := mintCLITokens(t)
	orders := e.pods["orders-api"]
	hc := hostClient(t)

	// A first decision, then the follower: its first line is that
	// decision, which tells the test the stream is subscribed.
	if resp, _ := do(t, hc, http.MethodGet, orders.URL(appPort, "/orders/warm-up"), "", nil); resp.StatusCode != 401 {
		t.Fatalf("GET /orders/warm-up: got %d, want 401", resp.StatusCode)
	}
	waitDecisions(t, c, 1)
	f := c.start(t, "decisions", "--follow", "-o", "json")
	nextRecord := func(t *testing.T, name string) decisionLine {
		t.Helper()
		line, err := f.nextLine()
		if err != nil {
			t.Fatalf("%s: decision record: %v", name, err)
		}
		var d decisionLine
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			t.Fatalf("decision line %q: %v", line, err)
		}
		return d
	}
	if d := nextRecord(t, "GET /orders/warm-up"); d.Path != "/orders/warm-up" {
		t.Fatalf("first followed decision: got %+v, want the one for /orders/warm-up", d)
	}

	type caller struct {
		name   string // pod name, "" for the host netns
		source string // explain --source
		ipv6   bool   // to the pod's IPv6 address
	}
	callers := []caller{{"", "", false}, {"", "", true}, {"frontend", "shop/frontend", false}, {"attacker", "shop/attacker", false}}
	// offline: offline explain reads a token without checking signature,
	// expiry or audience, so only tokens the agent accepts can agree.
	tokens := []struct {
		name, token string
		offline     bool
	}{
		{"none", "", true}, {"read", tok.read, true}, {"no role", tok.noRole, true},
		{"wrong audience", tok.wrongAud, false}, {"expired", tok.expired, false}, {"frontend app", tok.frontend, true},
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
	// A port the demo's policies do not name: not captured, so explain
	// must say the request goes through (and there is no record); the
	// second policy set captures it in audit mode.
	requests = append(requests, request{http.MethodGet, "/orders/42", directPort}, request{http.MethodPost, "/orders", directPort})

	check := func(t *testing.T) {
		cases, allows, records, offlineRuns := 0, 0, 0, 0
		for _, r := range requests {
			for _, from := range callers {
				for _, tk := range tokens {
					name := fmt.Sprintf("%s :%d%s from %s with token %s", r.method, r.port, r.path, podName(e.pods[from.name]), tk.name)
					url := orders.URL(r.port, r.path)
					if from.ipv6 {
						name, url = name+" over IPv6", orders.URL6(r.port, r.path)
					}
					live := liveRequest(t, e, hc, from.name, r.method, url, tk.token)
					args := []string{"explain", "--workload", "shop/orders-api", "--port", strconv.Itoa(int(r.port)),
						"--method", r.method, "--path", r.path, "-o", "json"}
					if from.source != "" {
						args = append(args, "--source", from.source)
					}
					if tk.token != "" {
						args = append(args, "--token", tk.token)
					}
					x := explainRequest(t, c, name, args)
					cases++
					if live.Allow {
						allows++
					}
					if got := x.outcome(); got != live {
						t.Errorf("%s: explain says %v, the live path did %v", name, got, live)
					}
					if tk.offline && !from.ipv6 {
						// The same question offline, against the agent's
						// policy files, with what the agent knows of the
						// pods given as flags.
						off := slices.Concat(args, []string{"--policies", filepath.Join(e.dir, "policies"), "--labels", "app=orders-api"})
						if from.name == "frontend" {
							off = append(off, "--source-client-id", frontendClient)
						}
						y := explainRequest(t, c, name+" (offline)", off)
						offlineRuns++
						if y.outcome() != x.outcome() || y.Captured != x.Captured {
							t.Errorf("%s: offline explain says %v (captured %t), online %v (captured %t)",
								name, y.outcome(), y.Captured, x.outcome(), x.Captured)
						}
					}
					if !x.Captured {
						continue // no record; a stray one shows up as the next request's
					}
					records++
					got := nextRecord(t, name)
					if got.Method != r.method || got.Path != r.path {
						t.Fatalf("%s: the next decision record is for %s %s: records out of step with requests", name, got.Method, got.Path)
					}
					want := x.record()
					want.Source, want.Method, want.Path = got.Source, got.Method, got.Path // compared by the audit tests
					if got != want {
						t.Errorf("%s: decision record %+v, explain implies %+v", name, got, want)
					}
				}
			}
		}
		// The set must exercise both outcomes, or the property says little.
		if allows == 0 || allows == cases {
			t.Errorf("%d of %d requests allowed: the generated set should have both outcomes", allows, cases)
		}
		t.Logf("%d requests, %d allowed, %d decision records, %d offline explains", cases, allows, records, offlineRuns)
	}

	t.Run("demo policies", check)

	e.setPolicies(e.demoPolicies() + explainPolicies)
	waitCaptured(t, c, "shop/orders-api", appPort, directPort)
	// Capture applies to new connections: the datapath passes packets of
	// established sockets, so a kept-alive connection to directPort from
	// the first round would still reach the app directly, unseen.
	hc.CloseIdleConnections()
	t.Run("deny and audit policies", check)
}

// waitCaptured polls the agent until workload's captured ports are ports
// (a new policy set is in force and the datapath follows it).
func waitCaptured(t *testing.T, c *cli, workload string, ports ...uint32) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		r := c.run(t, "", "workloads", "-o", "json")
		var got struct {
			Workloads []struct {
				Namespace     string   `json:"namespace"`
				Name          string   `json:"name"`
				CapturedPorts []uint32 `json:"captured_ports"`
			} `json:"workloads"`
		}
		if err := json.Unmarshal([]byte(r.Stdout), &got); err != nil {
			t.Fatalf("workloads: exit %d, output %q: %v", r.Code, r.Stdout, err)
		}
		var captured []uint32
		for _, w := range got.Workloads {
			if w.Namespace+"/"+w.Name == workload {
				captured = w.CapturedPorts
			}
		}
		if slices.Equal(captured, ports) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s captures ports %v after %v, want %v", workload, captured, waitTimeout, ports)
		}
		time.Sleep(50 * time.Millisecond)
	}
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

// explainRequest runs explain and reads its answer; the exit code must
// agree with the decision (0 allow, 1 deny).
func explainRequest(t *testing.T, c *cli, name string, args []string) explained {
	t.Helper()
	r := c.run(t, "", args...)
	var x explained
	if err := json.Unmarshal([]byte(r.Stdout), &x); err != nil {
		t.Fatalf("%s: explain: exit %d, output %q, stderr %q: %v", name, r.Code, r.Stdout, r.Stderr, err)
	}
	wantCode := 1
	if x.Decision == "allow" {
		wantCode = 0
	}
	if r.Code != wantCode {
		t.Errorf("%s: explain decided %q but exited %d, want %d", name, x.Decision, r.Code, wantCode)
	}
	return x
}
