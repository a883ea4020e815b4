package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"github.com/portcullis-mesh/portcullis/bpf/cgroupv2"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/bpf/podnet"
	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
)

// cliTokens are the tokens of the CLI tests. Their uti is fixed, so golden
// files can show every claim.
type cliTokens struct {
	read, noRole, wrongAud, expired, frontend string
}

func mintCLITokens(t *testing.T) cliTokens {
	t.Helper()
	claims := func(extra map[string]any) map[string]any {
		m := map[string]any{"uti": "cli-e2e"}
		maps.Copy(m, extra)
		return m
	}
	return cliTokens{
		read:     mint(t, idp.TokenRequest{Audience: "api://orders", Roles: []string{"Orders.Read"}, Claims: claims(nil)}),
		noRole:   mint(t, idp.TokenRequest{Audience: "api://orders", Roles: []string{"Orders.Audit"}, Claims: claims(nil)}),
		wrongAud: mint(t, idp.TokenRequest{Audience: "api://payments", Roles: []string{"Orders.Read"}, Claims: claims(nil)}),
		expired: mint(t, idp.TokenRequest{Audience: "api://orders", Roles: []string{"Orders.Read"},
			Claims: claims(map[string]any{"exp": 1000000000, "iat": 999996400, "nbf": 999996400})}),
		frontend: mint(t, idp.TokenRequest{Audience: "api://orders", App: true, Roles: []string{"Orders.Write"},
			ClientID: frontendClient, Claims: claims(nil)}),
	}
}

// keyID is the kid in a token's header.
func keyID(t *testing.T, token string) string {
	t.Helper()
	head, _, _ := strings.Cut(token, ".")
	b, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		t.Fatalf("decode token header: %v", err)
	}
	var h struct {
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal(b, &h); err != nil || h.Kid == "" {
		t.Fatalf("token header %s: no kid (%v)", b, err)
	}
	return h.Kid
}

// netnsCookie is the kernel's cookie of the network namespace at path
// (SO_NETNS_COOKIE on a socket created inside it), which the datapath
// keys enrolled pods by.
func netnsCookie(t *testing.T, path string) uint64 {
	t.Helper()
	var cookie uint64
	err := podnet.Do(path, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		defer unix.Close(fd)
		v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		if err != nil {
			return fmt.Errorf("getsockopt SO_NETNS_COOKIE: %w", err)
		}
		cookie = v
		return nil
	})
	if err != nil {
		t.Fatalf("netns cookie of %s: %v", path, err)
	}
	return cookie
}

// cliNormaliser names the values of e that change from run to run.
func cliNormaliser(t *testing.T, e *env, kid string) *normaliser {
	t.Helper()
	n := newNormaliser()
	n.set(e.dir, "$DIR")
	n.set(e.agent.pinDir, "$PINDIR")
	n.set(e.idp, "$IDP")
	n.set(e.net.Host4.String(), "$HOST_IP4")
	n.set(e.net.Host6.String(), "$HOST_IP6")
	for name, p := range e.pods {
		n.set(p.IPv4.String(), "$IP4("+name+")")
		n.set(p.IPv6.String(), "$IP6("+name+")")
		n.set(p.NetnsPath, "$NETNS("+name+")")
		n.set(p.CgroupPath, "$CGROUP("+name+")")
		if id, err := cgroupv2.ID(p.CgroupPath); err == nil {
			n.setNumber(id, "$CGROUP_ID("+name+")")
		}
	}
	n.set(kid, "$KID")
	n.setNumber(netnsCookie(t, e.pods["orders-api"].NetnsPath), "$NETNS_COOKIE(orders-api)")
	return n
}

// decisionLine is the part of a `decisions -o json` line the tests read.
type decisionLine struct {
	Decision string `json:"decision"`
	Reason   string `json:"reason"`
	Source   string `json:"source"`
	Method   string `json:"method"`
	Path     string `json:"path"`
	Status   int    `json:"status"`
}

// waitDecisions polls the agent until it keeps n decisions, so that
// requests made one after another are recorded in that order.
func waitDecisions(t *testing.T, c *cli, n int) []decisionLine {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		r := c.run(t, "", "decisions", "-o", "json")
		if r.Code != 0 {
			t.Fatalf("decisions: exit %d: %s", r.Code, r.Stderr)
		}
		var got []decisionLine
		for _, line := range strings.Split(strings.TrimSpace(r.Stdout), "\n") {
			if line == "" {
				continue
			}
			var d decisionLine
			if err := json.Unmarshal([]byte(line), &d); err != nil {
				t.Fatalf("decision line %q: %v", line, err)
			}
			got = append(got, d)
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent keeps %d decisions after %v, want %d: %+v", len(got), waitTimeout, n, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCLISubcommands runs every subcommand of the CLI against the real
// agent, with the demo's pods and policies, and compares tables and JSON
// with golden files (testdata/cli; -update rewrites them).
func TestCLISubcommands(t *testing.T) {
	e := newEnv(t, demoPods(e2eApp))
	e.setPolicies(e.demoPolicies())
	e.agent.Start()
	c := newCLI(t, e)
	tok := mintCLITokens(t)
	n := cliNormaliser(t, e, keyID(t, tok.read))
	for _, tk := range []string{tok.read, tok.noRole, tok.wrongAud, tok.expired, tok.frontend} {
		n.set(tk, "$TOKEN") // no output should show one; if one does, the golden file says so
	}

	type step struct {
		name  string
		stdin string
		args  []string
	}
	explain := func(extra ...string) []string {
		return append([]string{"explain", "--workload", "shop/orders-api", "--port", "8080"}, extra...)
	}
	runSteps := func(steps []step) {
		t.Helper()
		for _, s := range steps {
			t.Run(s.name, func(t *testing.T) {
				golden(t, s.name, n, c.run(t, s.stdin, s.args...))
			})
		}
	}

	// Before any traffic: nothing here depends on a request.
	runSteps([]step{
		{name: "status", args: []string{"status"}},
		{name: "status_json", args: []string{"status", "-o", "json"}},
		{name: "status_yaml", args: []string{"status", "-o", "yaml"}},
		{name: "workloads", args: []string{"workloads"}},
		{name: "workloads_json", args: []string{"workloads", "-o", "json"}},
		{name: "policies", args: []string{"policies"}},
		{name: "policies_json", args: []string{"policies", "-o", "json"}},
		{name: "issuers", args: []string{"issuers"}},
		{name: "issuers_json", args: []string{"issuers", "-o", "json"}},
		{name: "bpf_maps", args: []string{"bpf", "maps"}},
		{name: "bpf_maps_json", args: []string{"bpf", "maps", "-o", "json"}},
		{name: "version", args: []string{"version"}},
		{name: "version_json", args: []string{"version", "-o", "json"}},
		{name: "token_inspect", args: []string{"token", "inspect", tok.read}},
		{name: "token_inspect_json", args: []string{"token", "inspect", "-o", "json", tok.read}},
		{name: "token_inspect_stdin_expired", stdin: tok.expired + "\n", args: []string{"token", "inspect", "-"}},
		{name: "token_inspect_wrong_audience", args: []string{"token", "inspect", tok.wrongAud}},
		{name: "explain_allow", args: explain("--method", "GET", "--path", "/orders/42", "--token", tok.read)},
		{name: "explain_allow_json", args: explain("--method", "GET", "--path", "/orders/42", "--token", tok.read, "-o", "json")},
		{name: "explain_no_token", args: explain("--method", "GET", "--path", "/orders/42")},
		{name: "explain_workload_identity", args: explain("--method", "GET", "--path", "/internal/stock", "--source", "shop/frontend")},
		{name: "explain_replayed_token", args: explain("--method", "POST", "--path", "/orders", "--source", "shop/attacker", "--token", tok.frontend)},
		{name: "explain_replayed_token_json", args: explain("--method", "POST", "--path", "/orders", "--source", "shop/attacker", "--token", tok.frontend, "-o", "json")},
		{name: "explain_bound_token", args: explain("--method", "POST", "--path", "/orders", "--source", "shop/frontend", "--token", tok.frontend)},
		{name: "explain_claims", args: explain("--method", "GET", "--path", "/orders/42",
			"--claims", `{"iss":"https://login.microsoftonline.com/`+tenant+`/v2.0","tid":"`+tenant+`","aud":"api://orders","roles":["Orders.Read"]}`)},
		{name: "explain_unknown_workload", args: []string{"explain", "--workload", "shop/nope", "--port", "8080", "--method", "GET", "--path", "/"}},
		{name: "decisions_none", args: []string{"decisions"}},
	})

	// Requests one after another, each recorded before the next is made,
	// so the agent keeps them in this order.
	orders := e.pods["orders-api"]
	hc := hostClient(t)
	steps := []struct {
		from   string // pod, or "" for the host
		path   string
		token  string
		status int
	}{
		{"", "/orders/1", tok.read, 200},
		{"", "/orders/2", "", 401},
		{"", "/orders/3", tok.noRole, 403},
		{"frontend", "/internal/stock", "", 200},
		{"attacker", "/internal/stock", "", 403},
	}
	for i, s := range steps {
		var status int
		if s.from == "" {
			resp, _ := do(t, hc, http.MethodGet, orders.URL(appPort, s.path), s.token, nil)
			status = resp.StatusCode
		} else {
			status = e.curl(e.pods[s.from], orders.URL(appPort, s.path)).Status
		}
		if status != s.status {
			t.Fatalf("GET %s from %q: got %d, want %d", s.path, s.from, status, s.status)
		}
		waitDecisions(t, c, i+1)
	}
	runSteps([]step{
		{name: "decisions", args: []string{"decisions"}},
		{name: "decisions_json", args: []string{"decisions", "-o", "json"}},
		{name: "decisions_deny_only", args: []string{"decisions", "--deny-only"}},
		{name: "decisions_source", args: []string{"decisions", "--source", "shop/frontend", "-o", "json"}},
		{name: "decisions_limit", args: []string{"decisions", "--limit", "2"}},
		{name: "decisions_bad_source", args: []string{"decisions", "--source", "a/b/c"}},
	})
}
