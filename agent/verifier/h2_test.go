package verifier

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func TestH2CPriorKnowledge(t *testing.T) {
	app := startApp(t, http.HandlerFunc(echoHeaders))
	h := start(t, appAddr(app), Config{})
	c := h2cClient(t)

	resp := get(t, c, "http://"+h.addr+"/x", tokGood, map[string]string{"X-Portcullis-Source": "spoof"})
	var hdr http.Header
	json.NewDecoder(resp.Body).Decode(&hdr)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 || resp.Header.Get("X-Proto") != "HTTP/2.0" {
		t.Fatalf("got %d over %s, app saw %q; want 200 over HTTP/2 end to end", resp.StatusCode, resp.Proto, resp.Header.Get("X-Proto"))
	}
	if got := hdr["X-Portcullis-Source"]; len(got) != 1 || got[0] != frontendSource.ID {
		t.Errorf("application saw X-Portcullis-Source %q, want [%s]", got, frontendSource.ID)
	}

	resp = get(t, c, "http://"+h.addr+"/x", "", nil)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Errorf("no token over h2: %d %q %s, want 401 invalid_token", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
	}
	recs := h.audit.all()
	if len(recs) != 2 || recs[0].Protocol != "h2" {
		t.Errorf("audit = %+v, want 2 h2 records", recs)
	}
}

// TestH2CUpgrade speaks the RFC 7540 §3.2 upgrade by hand: the upgrade
// request is answered on stream 1, and a later stream without a token is
// refused on its own.
func TestH2CUpgrade(t *testing.T) {
	// An HTTP/1.1-only application: requests of an upgraded connection
	// reach it over HTTP/1.1.
	app := httptest.NewServer(http.HandlerFunc(echoHeaders))
	t.Cleanup(app.Close)
	h := start(t, appAddr(app), Config{})
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"+
		"HTTP2-Settings: \r\nAuthorization: Bearer "+tokGood+"\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "h2c" {
		t.Fatalf("upgrade answered %d Upgrade=%q, want 101 h2c", resp.StatusCode, resp.Header.Get("Upgrade"))
	}
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hbuf strings.Builder
	enc := hpack.NewEncoder(&hbuf)
	for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: "/second"}, {Name: ":authority", Value: "a"}} {
		enc.WriteField(f)
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: []byte(hbuf.String()), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	statuses := map[uint32]string{}
	for len(statuses) < 2 {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read frame: %v (statuses so far %v)", err, statuses)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			statuses[f.StreamID] = f.PseudoValue("status")
		}
	}
	if statuses[1] != "200" || statuses[3] != "401" {
		t.Errorf("stream statuses = %v, want 1:200 (upgrade request, token) and 3:401 (no token)", statuses)
	}
}

func startGRPC(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

func TestGRPC(t *testing.T) {
	h := start(t, startGRPC(t), Config{})
	conn, err := grpc.NewClient("passthrough:///"+h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := healthpb.NewHealthClient(conn)
	withToken := func(tok string) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		t.Cleanup(cancel)
		if tok == "" {
			return ctx
		}
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}

	resp, err := client.Check(withToken(tokGood), &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Check with a good token = %v, %v; want SERVING", resp, err)
	}
	// A server stream: the first message arrives through the verifier.
	stream, err := client.Watch(withToken(tokGood), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("Watch first message = %v, %v; want SERVING", m, err)
	}

	for _, tt := range []struct {
		token   string
		code    codes.Code
		message string
	}{
		{"", codes.Unauthenticated, "missing_token"},
		{tokExpired, codes.Unauthenticated, "expired"},
		{tokNoRole, codes.PermissionDenied, "no_matching_rule"},
	} {
		_, err := client.Check(withToken(tt.token), &healthpb.HealthCheckRequest{})
		st := status.Convert(err)
		if st.Code() != tt.code || !strings.Contains(st.Message(), tt.message) {
			t.Errorf("token %q: status %v %q, want %v containing %q", tt.token, st.Code(), st.Message(), tt.code, tt.message)
		}
	}
	twoTokens := metadata.AppendToOutgoingContext(withToken(""), "authorization", "Bearer "+tokGood, "authorization", "Bearer "+tokGood)
	if _, err := client.Check(twoTokens, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unauthenticated ||
		!strings.Contains(status.Convert(err).Message(), "multiple_tokens") {
		t.Errorf("two authorization headers: %v, want Unauthenticated multiple_tokens", err)
	}
	var grpcRecs int
	for _, r := range h.audit.all() {
		if r.Protocol == "grpc" && (r.Path == "/grpc.health.v1.Health/Check" || r.Path == "/grpc.health.v1.Health/Watch") {
			grpcRecs++
		}
	}
	if grpcRecs != 6 {
		t.Errorf("grpc audit records = %d, want 6", grpcRecs)
	}
}

func TestTrailers(t *testing.T) {
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Resp-Trailer")
		w.WriteHeader(200)
		w.Write(body)
		w.Header().Set("X-Resp-Trailer", "got:"+r.Trailer.Get("X-Req-Trailer"))
	}))
	h := start(t, appAddr(app), Config{})
	for name, c := range map[string]*http.Client{"http1": h1Client(t), "h2c": h2cClient(t)} {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", "http://"+h.addr+"/t", io.NopCloser(strings.NewReader("payload")))
			req.ContentLength = -1
			req.Header.Set("Authorization", "Bearer "+tokGood)
			req.Trailer = http.Header{"X-Req-Trailer": {"t1"}}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "payload" {
				t.Errorf("body = %q, want payload", body)
			}
			if got := resp.Trailer.Get("X-Resp-Trailer"); got != "got:t1" {
				t.Errorf("response trailer = %q, want got:t1 (request trailer forwarded, response trailer relayed)", got)
			}
		})
	}
}

// TestShutdownH2 drains an HTTP/2 connection: the stream in flight
// completes (GOAWAY lets it finish) and Shutdown then returns.
func TestShutdownH2(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "done")
	}))
	h := start(t, appAddr(app), Config{})
	client := h2cClient(t)
	result := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+h.addr+"/slow", nil)
		req.Header.Set("Authorization", "Bearer "+tokGood)
		resp, err := client.Do(req)
		if err != nil {
			result <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		result <- resp.Proto + " " + string(b)
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("request never reached the application")
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- h.srv.Shutdown(ctx)
	}()
	close(release)
	select {
	case got := <-result:
		if got != "HTTP/2.0 done" {
			t.Errorf("in-flight h2 request = %q, want HTTP/2.0 done", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight h2 request did not complete")
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the h2 stream ended")
	}
}
