package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/portcullis-mesh/portcullis/agent/debugapi"
	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden with the current output")

// now is the fixed wall clock of the tests, so relative times in tables
// are stable.
var now = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

func ts(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(d)) }

// offlineToken is an unsigned token whose claims satisfy testdata's
// orders-api policy for web/frontend.
var offlineToken = func() string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256","kid":"k1"}`)) + "." +
		enc([]byte(`{"iss":"https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0","tid":"11111111-2222-3333-4444-555555555555","azp":"c-frontend","roles":["Orders.Write"],"exp":1795352400}`)) +
		".c2ln"
}()

const goodToken = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"

// fakeBackend is an agent with fixed, realistic state.
type fakeBackend struct {
	*debugapi.Broadcaster
	subscribed chan struct{} // receives on every SubscribeDecisions

	mu          sync.Mutex
	lastExplain *debugv1.ExplainRequest
	// editStatus, when set, changes what Status answers.
	editStatus func(*debugv1.GetStatusResponse)
}

func newFakeBackend() *fakeBackend {
	b := &fakeBackend{Broadcaster: debugapi.NewBroadcaster(0), subscribed: make(chan struct{}, 16)}
	for _, r := range sampleDecisions() {
		b.Publish(r)
	}
	return b
}

func (b *fakeBackend) SubscribeDecisions() *debugapi.Subscription {
	s := b.Broadcaster.SubscribeDecisions()
	select {
	case b.subscribed <- struct{}{}:
	default:
	}
	return s
}

func (b *fakeBackend) Status(context.Context) (*debugv1.GetStatusResponse, error) {
	st := b.status()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.editStatus != nil {
		b.editStatus(st)
	}
	return st, nil
}

// status is ready, and degraded as Workloads says: shop/cart fails.
func (b *fakeBackend) status() *debugv1.GetStatusResponse {
	return &debugv1.GetStatusResponse{
		Version:   "v0.3.0",
		Commit:    "4f2a9c1",
		NodeName:  "node-1",
		Mode:      "local",
		StartTime: ts(-26 * time.Hour),
		Uptime:    durationpb.New(26*time.Hour + 5*time.Minute),
		Datapath: &debugv1.DatapathStatus{
			State: "degraded", Message: "1 workload failing to enrol: shop/cart (portcullis workloads says why)",
			PinPath: "/sys/fs/bpf/portcullis", EnrolledWorkloads: 2, AttachedWorkloads: 1,
		},
		Ready: true,
		Issuers: []*debugv1.IssuerHealth{
			{Name: "shop/entra", Healthy: true, KeyCount: 3, JwksAge: durationpb.New(12 * time.Minute)},
			{Name: "devidp", Healthy: false, KeyCount: 0, LastError: "fetch jwks: connection refused"},
		},
		PolicySet: &debugv1.PolicySetStatus{Generation: 7, UpdatedAt: ts(-90 * time.Second), Age: durationpb.New(90 * time.Second), Policies: 2, Rules: 3},
	}
}

func (b *fakeBackend) Workloads(context.Context) ([]*debugv1.Workload, error) {
	return []*debugv1.Workload{
		{
			Namespace: "shop", Name: "orders-api", Uid: "7d0c", ServiceAccount: "orders",
			Identity: "spiffe://cluster.local/ns/shop/sa/orders", IdentityId: 12,
			Ips: []string{"10.244.1.5"}, CapturedPorts: []uint32{8080, 9090},
			NetnsPath: "/run/netns/pc-orders", CgroupPath: "/sys/fs/cgroup/unified/pc/orders",
			AttachState: "attached", Labels: map[string]string{"app": "orders"},
		},
		{
			Namespace: "web", Name: "frontend", ServiceAccount: "frontend",
			Identity: "spiffe://cluster.local/ns/web/sa/frontend", IdentityId: 13, ClientId: "c-frontend",
			Ips: []string{"10.244.1.6", "fd00::6"}, NetnsPath: "/run/netns/pc-frontend",
			AttachState: "not_captured",
		},
		{
			Namespace: "shop", Name: "cart", Identity: "spiffe://cluster.local/ns/shop/sa/default", IdentityId: 14,
			CapturedPorts: []uint32{8080}, AttachState: "error (capture closed)", AttachError: "attach tcx to eth0 in netns /run/netns/pc-cart: no such device",
		},
	}, nil
}

func (b *fakeBackend) Policies(context.Context) (*debugv1.ListPoliciesResponse, error) {
	return &debugv1.ListPoliciesResponse{Generation: 7, Policies: []*debugv1.Policy{
		{Namespace: "shop", Name: "orders-api", Action: "Allow", Mode: "Enforce", Selector: "app=orders", Rules: 2,
			SelectedWorkloads: []string{"shop/orders-api"}, Source: "/etc/portcullis/policies/orders.yaml:4"},
		{Namespace: "shop", Name: "no-deletes", Action: "Deny", Mode: "Audit", Rules: 1,
			SelectedWorkloads: []string{"shop/orders-api", "shop/cart"}, Source: "/etc/portcullis/policies/orders.yaml:24"},
	}}, nil
}

func (b *fakeBackend) Issuers(context.Context) ([]*debugv1.Issuer, error) {
	return []*debugv1.Issuer{
		{
			Name: "shop/entra", Kind: "azureAD", Issuer: "https://login.microsoftonline.com/{tenantid}/v2.0",
			JwksUri:   "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/discovery/v2.0/keys",
			Audiences: []string{"api://orders"}, KeyIds: []string{"k1", "k2", "k3"},
			JwksFetchedAt: ts(-12 * time.Minute), JwksAge: durationpb.New(12 * time.Minute), NextRefresh: ts(48 * time.Minute),
			Healthy: true,
		},
		{
			Name: "devidp", Kind: "oidc", Issuer: "https://127.0.0.1:9443", JwksUri: "https://127.0.0.1:9443/keys",
			Audiences: []string{"orders"}, NextRefresh: ts(30 * time.Second),
			LastError: "fetch jwks: dial tcp 127.0.0.1:9443: connect: connection refused", LastErrorAt: ts(-30 * time.Second),
		},
	}, nil
}

func (b *fakeBackend) Explain(_ context.Context, req *debugv1.ExplainRequest) (*debugv1.ExplainResponse, error) {
	b.mu.Lock()
	b.lastExplain = req
	b.mu.Unlock()
	trace := []*debugv1.RuleTrace{
		{Policy: "shop/orders-api", Action: "Allow", Mode: "enforce", Rule: 0, Matched: req.GetPath() != "/admin",
			Detail: "matched"},
		{Policy: "shop/orders-api", Action: "Allow", Mode: "enforce", Rule: 1, FailedField: "to.paths",
			Detail: "path " + req.GetPath() + " matches none of the rule's paths"},
	}
	if req.GetPath() == "/admin" {
		trace[0].FailedField, trace[0].Detail = "to.paths", "path /admin matches none of the rule's paths"
		return &debugv1.ExplainResponse{Decision: "deny", Reason: "no_matching_rule", Status: 403, Rule: -1, Mode: "enforce",
			Captured: true, Token: &debugv1.TokenVerdict{Valid: true, IssuerRef: "shop/entra"}, Trace: trace}, nil
	}
	return &debugv1.ExplainResponse{Decision: "allow", Reason: "allowed", Status: 200, Policy: "shop/orders-api", Rule: 0,
		Mode: "enforce", Captured: true, Token: &debugv1.TokenVerdict{Valid: true, IssuerRef: "shop/entra"}, Trace: trace}, nil
}

func (b *fakeBackend) BPFMaps(context.Context) (*debugv1.DumpBPFMapsResponse, error) {
	return &debugv1.DumpBPFMapsResponse{
		Enrolled: []*debugv1.EnrolledPod{
			{NetnsCookie: 4097, CgroupId: 8812, IdentityId: 12, Workload: "shop/orders-api", ListenerPort: 15008, Ports: []uint32{8080, 9090}},
		},
		Sockets: []*debugv1.SocketRecord{
			{Local: "10.244.1.6:40312", Remote: "10.244.1.5:8080", SocketCookie: 99121, NetnsCookie: 4098, CgroupId: 8813,
				IdentityId: 13, Identity: "spiffe://cluster.local/ns/web/sa/frontend"},
		},
		Counters: []*debugv1.Counter{{Name: "redirected", Value: 1532}, {Name: "dropped_no_listener", Value: 0}},
	}, nil
}

func (b *fakeBackend) InspectToken(_ context.Context, tok string) (*debugv1.InspectTokenResponse, error) {
	claims, err := structpb.NewStruct(map[string]any{
		"iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
		"aud": "api://orders", "azp": "c-frontend", "roles": []any{"Orders.Read"}, "exp": float64(now.Add(time.Hour).Unix()),
	})
	if err != nil {
		return nil, err
	}
	resp := &debugv1.InspectTokenResponse{Alg: "RS256", Kid: "k1", Typ: "JWT", Claims: claims}
	if tok == goodToken {
		resp.Verdict = &debugv1.TokenVerdict{Valid: true, IssuerRef: "shop/entra", ExpiresAt: ts(time.Hour)}
	} else {
		resp.Verdict = &debugv1.TokenVerdict{Reason: "expired", Detail: "exp 2026-11-22T11:00:00Z is 1h ago", ExpiresAt: ts(-time.Hour)}
	}
	return resp, nil
}

func sampleDecisions() []*debugv1.DecisionRecord {
	return []*debugv1.DecisionRecord{
		{Time: ts(-3 * time.Second), Decision: "allow", Reason: "allowed", Policy: "shop/orders-api", Rule: 0, Mode: "enforce",
			Source: "spiffe://cluster.local/ns/web/sa/frontend", SourceIp: "10.244.1.6", Destination: "shop/orders-api", Port: 8080,
			Method: "GET", Path: "/orders/42", Issuer: "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
			Tenant: "11111111-2222-3333-4444-555555555555", Oid: "o-1", Sub: "s-1", Azp: "c-frontend"},
		{Time: ts(-2 * time.Second), Decision: "deny", Reason: "token_missing", Rule: -1, Mode: "enforce", Source: "anonymous",
			SourceIp: "10.0.0.9", Destination: "shop/orders-api", Port: 8080, Method: "GET", Path: "/orders", Status: 401},
		{Time: ts(-1 * time.Second), Decision: "deny", Reason: "denied", Policy: "shop/no-deletes", Rule: 0, Mode: "audit",
			Protocol: "h2", Source: "spiffe://cluster.local/ns/web/sa/frontend", Destination: "shop/cart", Port: 8080,
			Method: "DELETE", Path: "/cart/7"},
	}
}

// agent is a debug API server on a temporary socket.
type agent struct {
	sock string
	b    *fakeBackend
}

func startAgent(t *testing.T) *agent {
	t.Helper()
	// Unix socket paths are limited to 108 bytes: keep it short.
	dir, err := os.MkdirTemp("", "pc-cli-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "run", "debug.sock")
	l, err := debugapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	b := newFakeBackend()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- debugapi.ServeListener(ctx, l, b) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ServeListener: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("debug API server did not stop")
		}
	})
	return &agent{sock: sock, b: b}
}

// result is one CLI run.
type result struct {
	code   int
	stdout string
	stderr string
}

func (r result) String() string {
	s := fmt.Sprintf("exit: %d\n--- stdout\n%s", r.code, r.stdout)
	if r.stderr != "" {
		s += "--- stderr\n" + r.stderr
	}
	return s
}

// cli runs the CLI in-process with env as its environment.
func cli(ctx context.Context, env map[string]string, stdin string, out *syncBuffer, args ...string) result {
	var errb bytes.Buffer
	sio := stdio{
		in:     strings.NewReader(stdin),
		out:    out,
		err:    &errb,
		getenv: func(k string) string { return env[k] },
		now:    func() time.Time { return now },
	}
	code := run(ctx, args, sio)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// syncBuffer is a bytes.Buffer safe for a reader and a writer goroutine,
// which signals every write.
type syncBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	wrote chan struct{}
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{wrote: make(chan struct{}, 1)} }

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.buf.Write(p)
	select {
	case s.wrote <- struct{}{}:
	default:
	}
	return n, err
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test -update to create it): %v", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("output differs from %s (-want +got):\n%s", path, diff)
	}
}

func TestGolden(t *testing.T) {
	a := startAgent(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(goodToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const claims = `{"iss":"https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0","tid":"11111111-2222-3333-4444-555555555555","azp":"c-frontend","roles":["Orders.Read"]}`
	offline := []string{"--policies", "testdata/policies", "--issuers", "testdata/issuers.yaml", "--labels", "app=orders"}
	for _, tc := range []struct {
		name  string
		args  []string
		stdin string
		want  int
	}{
		{"status", []string{"status"}, "", exitDegraded},
		{"status_json", []string{"status", "-o", "json"}, "", exitDegraded},
		{"status_yaml", []string{"status", "-o", "yaml"}, "", exitDegraded},
		{"workloads", []string{"workloads"}, "", exitDegraded},
		{"workloads_json", []string{"workloads", "-o", "json"}, "", exitDegraded},
		{"policies", []string{"policies"}, "", exitOK},
		{"policies_json", []string{"policies", "-o", "json"}, "", exitOK},
		{"issuers", []string{"issuers"}, "", exitOK},
		{"issuers_json", []string{"issuers", "-o", "json"}, "", exitOK},
		{"decisions", []string{"decisions"}, "", exitOK},
		{"decisions_deny_only", []string{"decisions", "--deny-only"}, "", exitOK},
		{"decisions_filtered", []string{"decisions", "--workload", "shop/", "--source", "web/frontend", "--limit", "1"}, "", exitOK},
		{"decisions_none", []string{"decisions", "--reason", "expired"}, "", exitOK},
		{"decisions_json", []string{"decisions", "-o", "json"}, "", exitOK},
		{"decisions_color", []string{"decisions", "--color", "always"}, "", exitOK},
		{"workloads_color", []string{"workloads", "--color", "always"}, "", exitDegraded},
		{"explain_allow", []string{"explain", "--workload", "shop/orders-api", "--port", "8080", "--path", "/orders/42",
			"--source", "web/frontend", "--token-file", tokenFile}, "", exitOK},
		{"explain_deny", []string{"explain", "--workload", "shop/orders-api", "--port", "8080", "--path", "/admin"}, "", exitRefused},
		{"explain_deny_json", []string{"explain", "--workload", "shop/orders-api", "--port", "8080", "--path", "/admin", "-o", "json"}, "", exitRefused},
		{"explain_offline_allow", append([]string{"explain", "--workload", "shop/orders-api", "--port", "8080", "--path", "/orders/42",
			"--source", "web/frontend", "--source-client-id", "c-frontend", "--claims", claims}, offline...), "", exitOK},
		{"explain_offline_no_token", append([]string{"explain", "--workload", "shop/orders-api", "--port", "8080", "--path", "/orders/42",
			"--source", "web/frontend"}, offline...), "", exitRefused},
		{"explain_offline_replayed", append([]string{"explain", "--workload", "shop/orders-api", "--port", "8080", "--path", "/orders/42",
			"--source", "web/frontend", "--source-client-id", "c-batch", "--claims", claims}, offline...), "", exitRefused},
		{"explain_offline_audit", append([]string{"explain", "--workload", "shop/orders-api", "--port", "8080", "--method", "delete",
			"--path", "/healthz"}, offline...), "", exitOK},
		{"explain_offline_token", append([]string{"explain", "--workload", "shop/orders-api", "--port", "8080", "--path", "/orders/42",
			"--source", "web/frontend", "--source-client-id", "c-frontend", "--token", offlineToken}, offline...), "", exitOK},
		{"explain_offline_unknown_issuer", append([]string{"explain", "--workload", "shop/orders-api", "--port", "8080", "--path", "/orders/42",
			"--source", "web/frontend", "--source-client-id", "c-frontend", "--claims", `{"iss":"https://elsewhere","azp":"c-frontend","roles":["Orders.Read"]}`}, offline...), "", exitRefused},
		{"explain_offline_unselected", []string{"explain", "--workload", "shop/cart", "--port", "8080", "--path", "/cart",
			"--policies", "testdata/policies", "--issuers", "testdata/issuers.yaml", "--labels", "app=cart"}, "", exitOK},
		{"explain_offline_enforced", []string{"explain", "--workload", "shop/cart", "--port", "8080", "--path", "/cart",
			"--policies", "testdata/policies", "--issuers", "testdata/issuers.yaml", "--labels", "app=cart", "--namespace-enforced"}, "", exitRefused},
		{"usage_enforced_online", []string{"explain", "--workload", "shop/cart", "--port", "8080", "--namespace-enforced"}, "", exitUsage},
		{"explain_offline_bad_policies", []string{"explain", "--workload", "shop/orders-api", "--port", "8080", "--policies", "testdata/issuers.yaml", "--policies", "testdata/missing"}, "", exitRefused},
		{"explain_offline_invalid_policy", []string{"explain", "--workload", "shop/orders-api", "--port", "8080", "--policies", "testdata/invalid"}, "", exitRefused},
		{"explain_offline_json", append([]string{"explain", "--workload", "shop/orders-api", "--port", "8080", "--path", "/orders/42",
			"--source", "web/frontend", "-o", "json"}, offline...), "", exitRefused},
		{"bpf_maps", []string{"bpf", "maps"}, "", exitOK},
		{"bpf_maps_json", []string{"bpf", "maps", "-o", "json"}, "", exitOK},
		{"token_inspect", []string{"token", "inspect", goodToken}, "", exitOK},
		{"token_inspect_stdin_invalid", []string{"token", "inspect", "-"}, "expired.token.sig\n", exitRefused},
		{"token_inspect_json", []string{"token", "inspect", "-o", "json"}, goodToken, exitOK},
		{"version", []string{"version"}, "", exitOK},
		{"version_json", []string{"version", "-o", "json"}, "", exitOK},
		{"usage_unknown_command", []string{"bogus"}, "", exitUsage},
		{"usage_unknown_flag", []string{"status", "--bogus"}, "", exitUsage},
		{"usage_bad_output", []string{"status", "-o", "xml"}, "", exitUsage},
		{"usage_extra_args", []string{"workloads", "shop"}, "", exitUsage},
		{"usage_explain_no_port", []string{"explain", "--workload", "shop/orders-api"}, "", exitUsage},
		{"usage_explain_bad_workload", []string{"explain", "--workload", "orders-api", "--port", "80"}, "", exitUsage},
		{"usage_explain_token_and_claims", []string{"explain", "--workload", "shop/orders-api", "--port", "80", "--token", "a.b.c", "--claims", "{}"}, "", exitUsage},
		{"usage_explain_offline_flag_online", []string{"explain", "--workload", "shop/orders-api", "--port", "80", "--labels", "a=b"}, "", exitUsage},
		{"usage_decisions_contradiction", []string{"decisions", "--deny-only", "--decision", "allow"}, "", exitUsage},
		{"usage_decisions_bad_source", []string{"decisions", "--source", "frontend"}, "", exitUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			version = "v0.3.0-cli"
			t.Cleanup(func() { version = "" })
			r := cli(testContext(t), map[string]string{socketEnv: a.sock}, tc.stdin, newSyncBuffer(), tc.args...)
			if r.code != tc.want {
				t.Errorf("exit code: got %d, want %d\n%s", r.code, tc.want, r)
			}
			checkGolden(t, tc.name, r.String())
		})
	}
}

func TestExplainSendsTokenFromFile(t *testing.T) {
	a := startAgent(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("Bearer "+goodToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := cli(testContext(t), map[string]string{socketEnv: a.sock}, "", newSyncBuffer(),
		"explain", "--workload", "shop/orders-api", "--port", "8080", "--method", "post", "--path", "/orders/1",
		"--source", "web/frontend", "--header", "X-Request-Id=abc", "--token-file", tokenFile)
	if r.code != exitOK {
		t.Fatalf("exit code: got %d, want 0\n%s", r.code, r)
	}
	a.b.mu.Lock()
	got := a.b.lastExplain
	a.b.mu.Unlock()
	want := map[string]string{"workload": "shop/orders-api", "method": "POST", "path": "/orders/1", "source": "web/frontend", "token": goodToken, "header": "abc"}
	gotm := map[string]string{"workload": got.GetWorkload(), "method": got.GetMethod(), "path": got.GetPath(), "source": got.GetSource(), "token": got.GetToken(), "header": got.GetHeaders()["X-Request-Id"]}
	if diff := cmp.Diff(want, gotm); diff != "" {
		t.Errorf("request reaching the agent (-want +got):\n%s", diff)
	}
}

func TestDecisionsFollow(t *testing.T) {
	a := startAgent(t)
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	out := newSyncBuffer()
	done := make(chan result, 1)
	go func() {
		done <- cli(ctx, map[string]string{socketEnv: a.sock}, "", out, "decisions", "--follow", "--deny-only", "-o", "json")
	}()
	select {
	case <-a.b.subscribed:
	case <-ctx.Done():
		t.Fatal("decisions --follow never subscribed")
	}
	// The allow is filtered out; the deny made during the test must show.
	a.b.Publish(&debugv1.DecisionRecord{Time: ts(0), Decision: "allow", Destination: "shop/orders-api", Path: "/live-allow"})
	a.b.Publish(&debugv1.DecisionRecord{Time: ts(0), Decision: "deny", Reason: "expired", Destination: "shop/orders-api", Path: "/live-deny"})
	for !strings.Contains(out.String(), "/live-deny") {
		select {
		case <-out.wrote:
		case r := <-done:
			t.Fatalf("decisions --follow ended early:\n%s", r)
		case <-ctx.Done():
			t.Fatalf("live record never printed; output so far:\n%s", out.String())
		}
	}
	cancel()
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("decisions --follow did not end after cancel")
	}
	if r.code != exitOK {
		t.Errorf("exit code after interrupt: got %d, want 0\n%s", r.code, r)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d JSON lines, want 3 (the two kept denies and the live one):\n%s", len(lines), r.stdout)
	}
	if strings.Contains(r.stdout, "/live-allow") {
		t.Errorf("--deny-only printed an allow:\n%s", r.stdout)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[2]), &got); err != nil {
		t.Fatalf("live record is not JSON: %v\n%s", err, lines[2])
	}
	want := map[string]any{"time": "2026-11-22T12:00:00Z", "decision": "deny", "reason": "expired", "destination": "shop/orders-api", "path": "/live-deny"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("live record %s: got %v, want %v", k, got[k], v)
		}
	}
}

func TestSocketPermissions(t *testing.T) {
	a := startAgent(t)
	fi, err := os.Stat(a.sock)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Mode(), fs.ModeSocket|0o600; got != want {
		t.Errorf("socket mode: got %v, want %v", got, want)
	}
}

func TestUnreachable(t *testing.T) {
	dir, err := os.MkdirTemp("", "pc-cli-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	// A socket nobody accepts on, as a dead agent leaves behind.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()

	for _, tc := range []struct {
		name  string
		args  []string
		env   map[string]string
		cause string
	}{
		{"missing via flag", []string{"status", "--socket", filepath.Join(dir, "missing.sock")}, nil, "no such file or directory"},
		{"missing via env", []string{"workloads"}, map[string]string{socketEnv: filepath.Join(dir, "missing.sock")}, "no such file or directory"},
		{"stale", []string{"decisions", "--follow", "--socket", stale}, nil, "connection refused"},
		{"version asks the agent", []string{"version", "--socket", stale}, nil, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := cli(testContext(t), tc.env, "", newSyncBuffer(), tc.args...)
			if r.code != exitUnreachable {
				t.Errorf("exit code: got %d, want %d\n%s", r.code, exitUnreachable, r)
			}
			if strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("hint is not one line:\n%s", r.stderr)
			}
			for _, want := range []string{"cannot reach the agent at " + dir, tc.cause, "--socket", socketEnv} {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("hint %q lacks %q", r.stderr, want)
				}
			}
		})
	}

	r := cli(testContext(t), nil, "", newSyncBuffer(), "version", "--client")
	if r.code != exitOK || !strings.HasPrefix(r.stdout, "Client: ") {
		t.Errorf("version --client without an agent:\n%s", r)
	}
}

func TestUnreachableHintPermission(t *testing.T) {
	a := &app{socket: "/var/run/portcullis/debug.sock", dialErr: &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", errEACCES())}}
	ee := a.classify(unavailable())
	if ee.code != exitUnreachable {
		t.Errorf("exit code: got %d, want %d", ee.code, exitUnreachable)
	}
	for _, want := range []string{"permission denied", "root only", "sudo"} {
		if !strings.Contains(ee.err.Error(), want) {
			t.Errorf("hint %q lacks %q", ee.err, want)
		}
	}
	if errors.Unwrap(ee) == nil {
		t.Error("exitError does not unwrap")
	}
}
func errEACCES() error { return syscall.EACCES }

func unavailable() error { return status.Error(codes.Unavailable, "connection error") }

var ansiEscape = regexp.MustCompile("\x1b\\[[0-9;]*m")

// TestColorKeepsLayout: colour changes nothing but the colour. tabwriter
// counts escape bytes as width, so a column with both coloured and plain
// cells would lose its alignment.
func TestColorKeepsLayout(t *testing.T) {
	a := startAgent(t)
	for _, args := range [][]string{
		{"status"}, {"workloads"}, {"policies"}, {"issuers"}, {"decisions"},
		{"explain", "--workload", "shop/orders-api", "--port", "8080", "--path", "/admin"},
		{"explain", "--workload", "shop/orders-api", "--port", "8080", "--method", "DELETE", "--policies", "testdata/policies", "--issuers", "testdata/issuers.yaml", "--labels", "app=orders"},
		{"token", "inspect", goodToken},
	} {
		env := map[string]string{socketEnv: a.sock}
		plain := cli(testContext(t), env, "", newSyncBuffer(), append(args, "--color", "never")...)
		colour := cli(testContext(t), env, "", newSyncBuffer(), append(args, "--color", "always")...)
		if !ansiEscape.MatchString(colour.stdout) {
			t.Errorf("%v --color always: no colour in\n%s", args, colour.stdout)
		}
		if diff := cmp.Diff(plain.stdout, ansiEscape.ReplaceAllString(colour.stdout, "")); diff != "" {
			t.Errorf("%v: coloured output without its escapes differs from plain (-plain +coloured):\n%s", args, diff)
		}
		if ansiEscape.MatchString(plain.stdout) {
			t.Errorf("%v --color never: escapes in\n%s", args, plain.stdout)
		}
	}
	// auto: colour only on a terminal, never with NO_COLOR.
	for _, tc := range []struct {
		tty     bool
		noColor string
		want    bool
	}{{false, "", false}, {true, "", true}, {true, "1", false}} {
		ap := &app{stdio: stdio{tty: tc.tty, getenv: func(k string) string {
			if k == "NO_COLOR" {
				return tc.noColor
			}
			return ""
		}}, color: "auto"}
		if got := ap.useColor(); got != tc.want {
			t.Errorf("auto colour with tty=%v NO_COLOR=%q: got %v, want %v", tc.tty, tc.noColor, got, tc.want)
		}
	}
}

// TestStatusExitCode checks that status exits 0 only for a ready agent
// whose datapath is not degraded, whatever the output format.
func TestStatusExitCode(t *testing.T) {
	a := startAgent(t)
	for _, tc := range []struct {
		name string
		edit func(*debugv1.GetStatusResponse)
		want int
		// line is in the table output.
		line string
	}{
		{"healthy", func(st *debugv1.GetStatusResponse) {
			st.Datapath.State, st.Datapath.Message, st.Datapath.AttachedWorkloads = debugapi.DatapathAttached, "", 2
		}, exitOK, "Datapath:    attached, 2/2 workloads attached"},
		{"degraded", nil, exitDegraded, "Datapath:    degraded, 1/2 workloads attached"},
		{"not ready", func(st *debugv1.GetStatusResponse) {
			st.Datapath.State, st.Datapath.Message, st.Datapath.AttachedWorkloads = debugapi.DatapathAttached, "", 2
			st.Ready, st.NotReady = false, "workloads not synced"
		}, exitDegraded, "Ready:       no: workloads not synced"},
		{"unknown state", func(st *debugv1.GetStatusResponse) {
			st.Datapath.State, st.Datapath.Message = "detached", ""
		}, exitDegraded, "Datapath:    detached,"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.b.mu.Lock()
			a.b.editStatus = tc.edit
			a.b.mu.Unlock()
			for _, out := range []string{"table", "json", "yaml"} {
				r := cli(testContext(t), map[string]string{socketEnv: a.sock}, "", newSyncBuffer(), "status", "-o", out)
				if r.code != tc.want {
					t.Errorf("status -o %s: exit code: got %d, want %d\n%s", out, r.code, tc.want, r)
				}
				if r.stderr != "" {
					t.Errorf("status -o %s: stderr: got %q, want none", out, r.stderr)
				}
				if out == "table" && !strings.Contains(r.stdout, tc.line) {
					t.Errorf("status: got\n%s\nwant a line containing %q", r.stdout, tc.line)
				}
			}
		})
	}
}
