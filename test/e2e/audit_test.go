package e2e

import (
	"context"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// grpcCheck calls the health service of p and returns the status code.
func grpcCheck(t *testing.T, p *pod, token string) codes.Code {
	t.Helper()
	conn, err := grpc.NewClient(p.Addr(grpcPort).String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc client: %v", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return status.Code(err)
}

// h2cClient speaks HTTP/2 with prior knowledge.
func h2cClient(t *testing.T) *http.Client {
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: protocols}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 15 * time.Second}
}

// TestAuditOneForOne makes requests of every kind, from the host and from
// pods, allowed and refused, and checks that the audit log holds exactly
// one matching record per request, and the metrics the same count.
func TestAuditOneForOne(t *testing.T) {
	e, tok := protocolEnv(t)
	orders := e.pods["orders-api"]
	frontendID := "spiffe://" + trustDomain + "/ns/shop/sa/frontend"
	attackerID := "spiffe://" + trustDomain + "/ns/shop/sa/attacker"
	before := e.stats(orders)
	requestsBefore := e.agent.metric("portcullis_verifier_requests_total")

	h1, h2 := hostClient(t), h2cClient(t)
	base := auditRecord{Mode: "enforce", Source: "anonymous", Workload: "shop/orders-api", Port: appPort, Protocol: "http/1.1", Method: "GET"}
	allow := func(r auditRecord) auditRecord { r.Decision, r.Policy = "allow", "shop/readers"; return r }
	deny := func(r auditRecord, status int, reason string) auditRecord {
		r.Decision, r.Status, r.Reason = "deny", status, reason
		return r
	}
	with := func(f func(*auditRecord)) auditRecord { r := base; f(&r); return r }
	var want []auditRecord
	expect := func(gotStatus, wantStatus int, rec auditRecord) {
		t.Helper()
		if gotStatus != wantStatus {
			t.Errorf("%s %s: got %d, want %d", rec.Method, rec.Path, gotStatus, wantStatus)
		}
		want = append(want, rec)
	}

	resp, _ := do(t, h1, http.MethodGet, orders.URL(appPort, "/a/1"), tok.read, nil)
	expect(resp.StatusCode, 200, allow(with(func(r *auditRecord) { r.Path = "/a/1" })))
	resp, _ = do(t, h1, http.MethodGet, orders.URL(appPort, "/a/2"), "", nil)
	expect(resp.StatusCode, 401, deny(with(func(r *auditRecord) { r.Path = "/a/2" }), 401, "missing_token"))
	resp, _ = do(t, h1, http.MethodGet, orders.URL(appPort, "/a/3?secret=query"), tok.noRole, nil)
	expect(resp.StatusCode, 403, deny(with(func(r *auditRecord) { r.Path = "/a/3" }), 403, "no_matching_rule"))
	resp, _ = do(t, h2, http.MethodGet, orders.URL(appPort, "/a/4"), tok.read, nil)
	expect(resp.StatusCode, 200, allow(with(func(r *auditRecord) { r.Path, r.Protocol = "/a/4", "h2" })))
	resp, _ = do(t, h2, http.MethodDelete, orders.URL(appPort, "/a/5"), "", nil)
	expect(resp.StatusCode, 401, deny(with(func(r *auditRecord) { r.Path, r.Protocol, r.Method = "/a/5", "h2", "DELETE" }), 401, "missing_token"))
	res := e.curl(e.pods["frontend"], "-H", "Authorization: Bearer "+tok.read, orders.URL(appPort, "/a/6"))
	expect(res.Status, 200, allow(with(func(r *auditRecord) { r.Path, r.Source = "/a/6", frontendID })))
	res = e.curl(e.pods["attacker"], "-X", "POST", "-d", "x", orders.URL(appPort, "/a/7"))
	expect(res.Status, 401, deny(with(func(r *auditRecord) { r.Path, r.Source, r.Method = "/a/7", attackerID, "POST" }), 401, "missing_token"))
	grpcRec := func(f func(*auditRecord)) auditRecord {
		return with(func(r *auditRecord) {
			r.Port, r.Protocol, r.Method, r.Path = grpcPort, "grpc", "POST", "/grpc.health.v1.Health/Check"
			f(r)
		})
	}
	if got := grpcCheck(t, orders, tok.read); got != codes.OK {
		t.Errorf("grpc with token: got %v, want OK", got)
	}
	want = append(want, allow(grpcRec(func(*auditRecord) {})))
	if got := grpcCheck(t, orders, tok.noRole); got != codes.PermissionDenied {
		t.Errorf("grpc without the role: got %v, want PermissionDenied", got)
	}
	// A gRPC refusal is HTTP 200 with grpc-status 7 on the wire; the
	// record keeps the HTTP class of the refusal, 403.
	want = append(want, deny(grpcRec(func(*auditRecord) {}), 403, "no_matching_rule"))
	if code, _ := websocketEcho(t, orders.Addr(appPort).String(), tok.read, "audit me"); code != 101 {
		t.Errorf("websocket: got %d, want 101", code)
	}
	want = append(want, allow(with(func(r *auditRecord) { r.Path = "/ws" })))

	requests := e.agent.metric("portcullis_verifier_requests_total") - requestsBefore
	served := e.stats(orders).Requests - before.Requests
	e.agent.Stop() // flushes the audit log
	got := e.agent.auditLog()
	// Records carry no time order guarantee across connections; compare
	// as sets keyed by path.
	for _, s := range [][]auditRecord{got, want} {
		sort.SliceStable(s, func(i, j int) bool {
			if s[i].Path != s[j].Path {
				return s[i].Path < s[j].Path
			}
			return s[i].Decision < s[j].Decision
		})
	}
	ignore := func(rs []auditRecord) []auditRecord {
		out := make([]auditRecord, len(rs))
		for i, r := range rs {
			r.ClientID = "" // covered by TestDemoRows' token rows
			out[i] = r
		}
		return out
	}
	if diff := cmp.Diff(ignore(want), ignore(got)); diff != "" {
		t.Errorf("audit records (-want +got):\n%s", diff)
	}
	if int(requests) != len(want) {
		t.Errorf("portcullis_verifier_requests_total grew by %v, want %d", requests, len(want))
	}
	allows := 0
	for _, r := range want {
		if r.Decision == "allow" {
			allows++
		}
	}
	if int(served) != allows {
		t.Errorf("the app served %d requests, want %d (the allowed ones)", served, allows)
	}
}

// TestAuditMode: with mode Audit, refused requests are recorded as denies
// in audit mode and forwarded anyway.
func TestAuditMode(t *testing.T) {
	e := newEnv(t, demoPods(e2eApp))
	e.setPolicies(readers("Audit", "Orders.Read"))
	e.agent.Start()
	tok := mintTokens(t)
	orders := e.pods["orders-api"]
	c := hostClient(t)
	before := e.stats(orders)

	for _, tc := range []struct {
		path, token string
		decision    string
		reason      string
	}{
		{"/m/1", "", "deny", "missing_token"},
		{"/m/2", tok.noRole, "deny", "no_matching_rule"},
		{"/m/3", tok.read, "allow", ""},
	} {
		resp, body := do(t, c, http.MethodGet, orders.URL(appPort, tc.path), tc.token, nil)
		if resp.StatusCode != 200 {
			t.Errorf("GET %s in audit mode: got %d, want 200 (forwarded): %s", tc.path, resp.StatusCode, body)
		}
	}
	if got := grpcCheck(t, orders, ""); got != codes.OK {
		t.Errorf("grpc without a token in audit mode: got %v, want OK", got)
	}
	if got := e.stats(orders).Requests - before.Requests; got != 4 {
		t.Errorf("the app served %d requests, want all 4", got)
	}
	e.agent.Stop()
	type short struct{ Path, Decision, Reason, Mode string }
	var got []short
	for _, r := range e.agent.auditLog() {
		got = append(got, short{r.Path, r.Decision, r.Reason, r.Mode})
	}
	want := []short{
		{"/m/1", "deny", "missing_token", "audit"},
		{"/m/2", "deny", "no_matching_rule", "audit"},
		{"/m/3", "allow", "", "audit"},
		{"/grpc.health.v1.Health/Check", "deny", "missing_token", "audit"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("audit records (-want +got):\n%s", diff)
	}
}
