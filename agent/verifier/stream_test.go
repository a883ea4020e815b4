package verifier

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/portcullis-mesh/portcullis/identity"
)

func TestWebSocket(t *testing.T) {
	app := startApp(t, websocket.Handler(func(ws *websocket.Conn) {
		for {
			var m string
			if websocket.Message.Receive(ws, &m) != nil || websocket.Message.Send(ws, m) != nil {
				return
			}
		}
	}))
	h := start(t, appAddr(app), Config{})

	cfg, err := websocket.NewConfig("ws://"+h.addr+"/ws", "http://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Header = http.Header{"Authorization": {"Bearer " + tokGood}}
	ws, err := websocket.DialConfig(cfg)
	if err != nil {
		t.Fatalf("websocket dial with a good token: %v", err)
	}
	defer ws.Close()
	ws.SetDeadline(time.Now().Add(5 * time.Second))
	for _, msg := range []string{"hello", strings.Repeat("x", 100<<10)} {
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil {
			t.Fatal(err)
		}
		if got != msg {
			t.Errorf("echo of %d bytes came back as %d bytes", len(msg), len(got))
		}
	}

	cfg.Header = nil
	if ws, err := websocket.DialConfig(cfg); err == nil {
		ws.Close()
		t.Error("websocket upgrade without a token succeeded")
	}
}

// patternReader yields n bytes without allocating them.
type patternReader struct{ n int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n {
		b = b[:p.n]
	}
	for i := range b {
		b[i] = byte(i)
	}
	p.n -= int64(len(b))
	return len(b), nil
}

// TestStreaming100MB sends 100 MB through in both directions at once (the
// application echoes as it reads) and checks the verifier did not buffer it.
func TestStreaming100MB(t *testing.T) {
	if testing.Short() {
		t.Skip("100 MB through loopback")
	}
	const size = 100 << 20
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).EnableFullDuplex()
		w.WriteHeader(200)
		io.Copy(w, r.Body)
	}))
	h := start(t, appAddr(app), Config{})
	// NoSplice takes the user-space copy where Content-Length bodies
	// would be spliced.
	hNoSplice := start(t, appAddr(app), Config{NoSplice: true})
	for _, tt := range []struct {
		name   string
		length int64
		client *http.Client
		addr   string
	}{
		{"http1 chunked", -1, h1Client(t), h.addr},
		{"http1 content-length", size, h1Client(t), h.addr},
		{"http1 content-length no splice", size, h1Client(t), hNoSplice.addr},
		{"h2c", -1, h2cClient(t), h.addr},
	} {
		t.Run(tt.name, func(t *testing.T) {
			peak := watchHeap(t)
			req, _ := http.NewRequest("PUT", "http://"+tt.addr+"/stream", io.NopCloser(&patternReader{n: size}))
			req.ContentLength = tt.length
			req.Header.Set("Authorization", "Bearer "+tokGood)
			resp, err := tt.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || n != size {
				t.Fatalf("echoed %d bytes (err %v), want %d", n, err, size)
			}
			// Client, application and verifier share this process: the
			// heap of all of them together must stay far below the body.
			if p := peak(); p > 50<<20 {
				t.Errorf("heap peaked at %d MiB while streaming 100 MiB, want < 50 MiB", p>>20)
			}
		})
	}
}

func startEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func TestPassthroughPort(t *testing.T) {
	echo := startEcho(t)
	l4 := L4AuthorizerFunc(func(_ context.Context, c *ConnRequest) Decision {
		if c.Source.ID == frontendSource.ID {
			return Decision{Allow: true, Policy: "db/frontend-only"}
		}
		return Decision{Reason: ReasonNoMatchingRule, Policy: "db/frontend-only"}
	})
	for _, tt := range []struct {
		name   string
		source identity.Source
		allow  bool
	}{
		{"allowed source", frontendSource, true},
		{"anonymous refused", identity.AnonymousSource, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// The verifier's own port is the passthrough port here.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := uint16(ln.Addr().(*net.TCPAddr).Port)
			ln.Close()
			h := startOn(t, "127.0.0.1:"+itoa(int(port)), echo, Config{
				PassthroughPorts: []uint16{port},
				L4Authorizer:     l4,
				Sources: SourceResolverFunc(func(_, _ netip.AddrPort) identity.Source {
					return tt.source
				}),
			})
			c, err := net.Dial("tcp", h.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			// TLS bytes are fine on a passthrough port.
			msg := "\x16\x03\x01 not http at all\x00"
			io.WriteString(c, msg)
			got := make([]byte, len(msg))
			_, err = io.ReadFull(c, got)
			if tt.allow && (err != nil || string(got) != msg) {
				t.Errorf("echo = %q, %v; want %q", got, err, msg)
			}
			if !tt.allow && err == nil {
				t.Error("refused source got bytes through")
			}
			recs := h.audit.all()
			if len(recs) != 1 || recs[0].Protocol != "tcp" || (recs[0].Decision == "allow") != tt.allow {
				t.Errorf("audit = %+v, want one tcp record with allow=%v", recs, tt.allow)
			}
		})
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestShutdownDrains(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	var calls atomic.Int32
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(entered)
			<-release
		}
		calls.Add(1)
		io.WriteString(w, "done")
	}))
	h := start(t, appAddr(app), Config{})

	// An idle keep-alive connection.
	idle, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	io.WriteString(idle, "GET /fast HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "+tokGood+"\r\n\r\n")
	idle.SetDeadline(time.Now().Add(10 * time.Second))
	ibr := bufio.NewReader(idle)
	resp, err := http.ReadResponse(ibr, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)

	// An in-flight request.
	slow := make(chan error, 1)
	client := h1Client(t)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+h.addr+"/slow", nil)
		req.Header.Set("Authorization", "Bearer "+tokGood)
		resp, err := client.Do(req)
		if err != nil {
			slow <- err
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "done" {
			err = errors.New("body " + string(b))
		}
		slow <- err
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("slow request never reached the application")
	}

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- h.srv.Shutdown(ctx)
	}()
	// The idle connection is closed at once.
	if _, err := ibr.ReadByte(); !closedByPeer(err) {
		t.Errorf("idle connection during shutdown: %v, want EOF or reset", err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}
	close(release)
	select {
	case err := <-slow:
		if err != nil {
			t.Errorf("in-flight request: %v, want it to complete", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight request did not complete")
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the last request")
	}
	if _, err := net.DialTimeout("tcp", h.addr, time.Second); err == nil {
		t.Error("dial after Shutdown succeeded")
	}
}

// watchHeap samples the live heap until the returned function is called,
// which returns the largest sample.
func watchHeap(t *testing.T) func() uint64 {
	runtime.GC()
	stop := make(chan struct{})
	done := make(chan uint64, 1)
	go func() {
		var peak uint64
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
			select {
			case <-stop:
				done <- peak
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	var peak uint64
	get := func() uint64 {
		once.Do(func() {
			close(stop)
			peak = <-done
		})
		return peak
	}
	t.Cleanup(func() { get() })
	return get
}

// TestClientGoneMidStream: when the client leaves in the middle of an
// endless chunked response (server-sent events), the verifier lets go of
// the application's stream instead of reading it on.
func TestClientGoneMidStream(t *testing.T) {
	ended := make(chan error, 1)
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		deadline := time.Now().Add(10 * time.Second) // never outlive the test
		for time.Now().Before(deadline) {
			_, err := io.WriteString(w, "data: tick\n\n")
			if err == nil {
				err = rc.Flush()
			}
			if err != nil {
				ended <- err
				return
			}
			time.Sleep(5 * time.Millisecond) // the pace of the stream
		}
		ended <- nil
	}))
	h := start(t, appAddr(app), Config{})
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /events HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "+tokGood+"\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, len("data: tick\n\n"))); err != nil {
		t.Fatalf("first event: %v", err)
	}
	c.Close()
	select {
	case err := <-ended:
		if err == nil {
			t.Error("application streamed for 10s to a client that had left")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("application handler did not end")
	}
}
