package debugapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	rpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
)

// fakeBackend answers from fixed values and records what it was asked.
type fakeBackend struct {
	*Broadcaster
	explained chan *debugv1.ExplainRequest
	tokens    chan string
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{
		Broadcaster: NewBroadcaster(8),
		explained:   make(chan *debugv1.ExplainRequest, 1),
		tokens:      make(chan string, 1),
	}
}

func (f *fakeBackend) Status(context.Context) (*debugv1.GetStatusResponse, error) {
	return &debugv1.GetStatusResponse{Version: "v0.0.0-test", Mode: "local"}, nil
}

func (f *fakeBackend) Workloads(context.Context) ([]*debugv1.Workload, error) {
	return []*debugv1.Workload{{Namespace: "shop", Name: "orders-api"}}, nil
}

func (f *fakeBackend) Policies(context.Context) (*debugv1.ListPoliciesResponse, error) {
	return nil, errors.New("policy set not loaded")
}

func (f *fakeBackend) Issuers(context.Context) ([]*debugv1.Issuer, error) { return nil, nil }

func (f *fakeBackend) Explain(_ context.Context, req *debugv1.ExplainRequest) (*debugv1.ExplainResponse, error) {
	f.explained <- req
	return &debugv1.ExplainResponse{Decision: "deny", Reason: "no_matching_rule", Status: 403}, nil
}

func (f *fakeBackend) BPFMaps(context.Context) (*debugv1.DumpBPFMapsResponse, error) {
	return nil, ErrUnsupported
}

func (f *fakeBackend) InspectToken(_ context.Context, tok string) (*debugv1.InspectTokenResponse, error) {
	f.tokens <- tok
	return &debugv1.InspectTokenResponse{Verdict: &debugv1.TokenVerdict{Valid: true}}, nil
}

// serve runs the API for b on a socket in a fresh directory and returns a
// connected client. Everything stops when the test ends.
func serve(t *testing.T, b Backend) (debugv1.DebugClient, *grpc.ClientConn, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "run", "debug.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeListener(ctx, l, b) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ServeListener: %v", err)
			}
		case <-time.After(2 * shutdownGrace):
			t.Errorf("ServeListener did not return after cancel")
		}
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return debugv1.NewDebugClient(conn), conn, sock
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestListenPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "portcullis")
	sock := filepath.Join(dir, "debug.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, c := range []struct {
		path string
		want fs.FileMode
	}{
		{sock, fs.ModeSocket | 0o600},
		{dir, fs.ModeDir | 0o700},
	} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode(); got != c.want {
			t.Errorf("mode of %s: got %v, want %v", c.path, got, c.want)
		}
	}
}

func TestListenStaleSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "debug.sock")
	// A socket file nobody accepts on, as a crashed agent leaves behind.
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}

	l, err := Listen(sock)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer l.Close()

	// A second agent must not steal the socket of a live one.
	if l2, err := Listen(sock); err == nil {
		l2.Close()
		t.Fatal("Listen on a socket in use: got nil error")
	} else if !strings.Contains(err.Error(), "in use") {
		t.Errorf("Listen on a socket in use: got %v, want an 'in use' error", err)
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "debug.sock")
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := Listen(path); err == nil {
		l.Close()
		t.Fatal("Listen over a regular file: got nil error")
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
		t.Errorf("regular file changed: %q, %v", b, err)
	}
}

func TestServeRemovesSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "debug.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, sock, newFakeBackend()) }()
	// Serve creates the socket before it accepts; wait for a connection to
	// succeed, bounded.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("socket never accepted: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket after shutdown: got %v, want not exist", err)
	}
}

func TestUnaryCalls(t *testing.T) {
	b := newFakeBackend()
	c, _, _ := serve(t, b)
	ctx := testContext(t)

	st, err := c.GetStatus(ctx, &debugv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetVersion() != "v0.0.0-test" {
		t.Errorf("version: got %q, want v0.0.0-test", st.GetVersion())
	}
	wl, err := c.ListWorkloads(ctx, &debugv1.ListWorkloadsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(wl.GetWorkloads()) != 1 {
		t.Errorf("workloads: got %d, want 1", len(wl.GetWorkloads()))
	}

	for _, tc := range []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"backend error is internal", func() error {
			_, err := c.ListPolicies(ctx, &debugv1.ListPoliciesRequest{})
			return err
		}, codes.Internal},
		{"unsupported is unimplemented", func() error {
			_, err := c.DumpBPFMaps(ctx, &debugv1.DumpBPFMapsRequest{})
			return err
		}, codes.Unimplemented},
		{"explain without workload", func() error {
			_, err := c.Explain(ctx, &debugv1.ExplainRequest{Port: 80, Method: "GET", Path: "/"})
			return err
		}, codes.InvalidArgument},
		{"explain with bad port", func() error {
			_, err := c.Explain(ctx, &debugv1.ExplainRequest{Workload: "a/b", Port: 70000, Method: "GET", Path: "/"})
			return err
		}, codes.InvalidArgument},
		{"explain with bad source", func() error {
			_, err := c.Explain(ctx, &debugv1.ExplainRequest{Workload: "a/b", Port: 80, Method: "GET", Path: "/", Source: "spiffe://x"})
			return err
		}, codes.InvalidArgument},
		{"empty token", func() error {
			_, err := c.InspectToken(ctx, &debugv1.InspectTokenRequest{Token: "Bearer  "})
			return err
		}, codes.InvalidArgument},
		{"bad decision filter", func() error {
			s, err := c.TailDecisions(ctx, &debugv1.TailDecisionsRequest{Decision: "maybe"})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := status.Code(tc.call()); got != tc.want {
				t.Errorf("code: got %v, want %v", got, tc.want)
			}
		})
	}

	req := &debugv1.ExplainRequest{Workload: "shop/orders-api", Port: 8080, Method: "GET", Path: "/orders", Source: "shop/frontend"}
	if _, err := c.Explain(ctx, req); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(req, <-b.explained, protocmp.Transform()); diff != "" {
		t.Errorf("explain request reaching the backend (-sent +got):\n%s", diff)
	}
	if _, err := c.InspectToken(ctx, &debugv1.InspectTokenRequest{Token: "Bearer abc.def.ghi\n"}); err != nil {
		t.Fatal(err)
	}
	if got := <-b.tokens; got != "abc.def.ghi" {
		t.Errorf("token reaching the backend: got %q, want abc.def.ghi", got)
	}
}

func TestReflection(t *testing.T) {
	_, conn, _ := serve(t, newFakeBackend())
	ctx := testContext(t)
	s, err := rpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, svc := range resp.GetListServicesResponse().GetService() {
		names = append(names, svc.GetName())
	}
	want := "portcullis.debug.v1.Debug"
	found := false
	for _, n := range names {
		found = found || n == want
	}
	if !found {
		t.Errorf("reflection services: got %v, want %s among them", names, want)
	}
}

func rec(decision, dest, source string) *debugv1.DecisionRecord {
	return &debugv1.DecisionRecord{Decision: decision, Destination: dest, Source: source, Reason: "r_" + decision}
}

func TestTailDecisions(t *testing.T) {
	b := newFakeBackend()
	c, _, _ := serve(t, b)
	ctx := testContext(t)

	b.Publish(rec("allow", "shop/orders-api", "spiffe://cluster.local/ns/shop/sa/frontend"))
	b.Publish(rec("deny", "shop/orders-api", "anonymous"))
	b.Publish(rec("deny", "shop/cart", "anonymous"))

	// Without follow: the kept records that match, then the end.
	s, err := c.TailDecisions(ctx, &debugv1.TailDecisionsRequest{Decision: "deny"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		r, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r.GetDestination())
	}
	if diff := cmp.Diff([]string{"shop/orders-api", "shop/cart"}, got); diff != "" {
		t.Errorf("deny records (-want +got):\n%s", diff)
	}

	// With follow and a limit: the last kept match, then live records.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err = c.TailDecisions(fctx, &debugv1.TailDecisionsRequest{Workload: "shop/orders-api", Follow: true, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if r.GetDecision() != "deny" {
		t.Errorf("first followed record: got %q, want the last kept (deny)", r.GetDecision())
	}
	b.Publish(rec("deny", "shop/cart", "anonymous")) // filtered out
	b.Publish(rec("allow", "shop/orders-api", "anonymous"))
	r, err = s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if r.GetDestination() != "shop/orders-api" || r.GetDecision() != "allow" {
		t.Errorf("live record: got %s %s, want allow shop/orders-api", r.GetDecision(), r.GetDestination())
	}
}

func TestBroadcasterNoGapAndDrops(t *testing.T) {
	b := NewBroadcaster(2)
	for _, d := range []string{"a", "b", "c"} {
		b.Publish(&debugv1.DecisionRecord{Reason: d})
	}
	s := b.SubscribeDecisions()
	defer s.Close()
	var got []string
	for _, r := range s.Recent() {
		got = append(got, r.GetReason())
	}
	if diff := cmp.Diff([]string{"b", "c"}, got); diff != "" {
		t.Errorf("recent (-want +got):\n%s", diff)
	}
	for range subscriberBuffer + 3 {
		b.Publish(&debugv1.DecisionRecord{Reason: "live"})
	}
	if got := len(s.C()); got != subscriberBuffer {
		t.Errorf("buffered: got %d, want %d", got, subscriberBuffer)
	}
	if got := s.TakeDropped(); got != 3 {
		t.Errorf("dropped: got %d, want 3", got)
	}
	if got := s.TakeDropped(); got != 0 {
		t.Errorf("dropped after take: got %d, want 0", got)
	}
	s.Close()
	s.Close()
	b.Publish(&debugv1.DecisionRecord{})
	if got := len(s.C()); got != subscriberBuffer {
		t.Errorf("closed subscription still receives: %d buffered", got)
	}
}

func TestFilter(t *testing.T) {
	const frontend = "spiffe://cluster.local/ns/shop/sa/frontend"
	r := &debugv1.DecisionRecord{Decision: "deny", Reason: "expired", Destination: "shop/orders-api", Source: frontend}
	for _, tc := range []struct {
		req  *debugv1.TailDecisionsRequest
		want bool
	}{
		{&debugv1.TailDecisionsRequest{}, true},
		{&debugv1.TailDecisionsRequest{Decision: "DENY"}, true},
		{&debugv1.TailDecisionsRequest{Decision: "allow"}, false},
		{&debugv1.TailDecisionsRequest{Reason: "expired"}, true},
		{&debugv1.TailDecisionsRequest{Reason: "malformed"}, false},
		{&debugv1.TailDecisionsRequest{Workload: "shop/orders-api"}, true},
		{&debugv1.TailDecisionsRequest{Workload: "shop/"}, true},
		{&debugv1.TailDecisionsRequest{Workload: "shop/orders"}, false},
		{&debugv1.TailDecisionsRequest{Workload: "other/"}, false},
		{&debugv1.TailDecisionsRequest{Source: frontend}, true},
		{&debugv1.TailDecisionsRequest{Source: "shop/frontend"}, true},
		{&debugv1.TailDecisionsRequest{Source: "hop/frontend"}, false},
		{&debugv1.TailDecisionsRequest{Source: "anonymous"}, false},
		{&debugv1.TailDecisionsRequest{Decision: "deny", Source: "shop/frontend", Workload: "shop/"}, true},
	} {
		f, err := NewFilter(tc.req)
		if err != nil {
			t.Errorf("NewFilter(%v): %v", tc.req, err)
			continue
		}
		if got := f.Match(r); got != tc.want {
			t.Errorf("Match with %v: got %v, want %v", tc.req, got, tc.want)
		}
	}
	for _, bad := range []*debugv1.TailDecisionsRequest{
		{Decision: "audit"},
		{Workload: "orders-api"},
		{Workload: "/orders-api"},
		{Source: "shop/frontend/x"},
		{Source: "frontend"},
	} {
		if _, err := NewFilter(bad); err == nil {
			t.Errorf("NewFilter(%v): got nil error", bad)
		}
	}
}

func cmpProto() cmp.Option { return protocmp.Transform() }

// blockingStream is a TailDecisions stream whose client reads only when
// told to.
type blockingStream struct {
	grpc.ServerStream
	ctx     context.Context
	sent    chan *debugv1.DecisionRecord
	release chan struct{}
}

func (s *blockingStream) Context() context.Context { return s.ctx }

func (s *blockingStream) Send(r *debugv1.DecisionRecord) error {
	s.sent <- r
	<-s.release
	return nil
}

// TestTailReportsDrops: a client that stops reading loses records, never
// blocks Publish, and is told how many it lost.
func TestTailReportsDrops(t *testing.T) {
	b := newFakeBackend()
	svc := &service{b: b, stopping: make(chan struct{})}
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	st := &blockingStream{ctx: ctx, sent: make(chan *debugv1.DecisionRecord), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- svc.TailDecisions(&debugv1.TailDecisionsRequest{Follow: true}, st) }()

	// Hand the handler a first record (live, or as a recent one if it had
	// not subscribed yet) and hold it in Send.
	b.Publish(&debugv1.DecisionRecord{Path: "/0"})
	select {
	case <-st.sent:
	case <-ctx.Done():
		t.Fatal("first record never sent")
	}
	const extra = subscriberBuffer + 43
	for i := 1; i <= extra; i++ {
		b.Publish(&debugv1.DecisionRecord{Path: fmt.Sprintf("/%d", i)})
	}
	st.release <- struct{}{} // finish sending the first record
	var next *debugv1.DecisionRecord
	select {
	case next = <-st.sent:
	case <-ctx.Done():
		t.Fatal("second record never sent")
	}
	if got, want := next.GetPath(), "/1"; got != want {
		t.Errorf("second record: got %s, want %s", got, want)
	}
	if got, want := next.GetDroppedBefore(), uint32(extra-subscriberBuffer); got != want {
		t.Errorf("dropped_before: got %d, want %d", got, want)
	}
	cancel()
	close(st.release)
	// Drain whatever the handler still sends until it sees the cancel.
	for {
		select {
		case <-st.sent:
			continue
		case err := <-done:
			if err != nil {
				t.Errorf("TailDecisions after cancel: %v", err)
			}
			return
		}
	}
}
