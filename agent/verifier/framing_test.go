package verifier

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func framingApp(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/nocontent":
		w.WriteHeader(http.StatusNoContent)
	case "/notmodified":
		w.WriteHeader(http.StatusNotModified)
	case "/stream":
		// No Content-Length: chunked to HTTP/1.1, close-delimited to 1.0.
		io.WriteString(w, "part1,")
		http.NewResponseController(w).Flush()
		io.WriteString(w, "part2")
	case "/echo":
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	default:
		w.Header().Set("Content-Length", "5")
		io.WriteString(w, "hello")
	}
}

// TestResponseFraming sends requests one after another on a single
// connection: every response must be framed so the next one still parses.
func TestResponseFraming(t *testing.T) {
	app := startApp(t, http.HandlerFunc(framingApp))
	h := start(t, appAddr(app), Config{})
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	auth := "Authorization: Bearer " + tokGood + "\r\n"
	for _, tt := range []struct {
		method, path, body string
		status             int
		want               string
		wantLength         string
	}{
		{"GET", "/", "", 200, "hello", "5"},
		{"HEAD", "/", "", 200, "", "5"},
		{"GET", "/nocontent", "", 204, "", ""},
		{"GET", "/notmodified", "", 304, "", ""},
		{"GET", "/stream", "", 200, "part1,part2", ""},
		{"POST", "/echo", "ping", 200, "ping", "4"},
		{"GET", "/", "", 200, "hello", "5"},
	} {
		req := tt.method + " " + tt.path + " HTTP/1.1\r\nHost: a\r\n" + auth
		if tt.body != "" {
			req += "Content-Length: " + itoa(len(tt.body)) + "\r\n"
		}
		io.WriteString(c, req+"\r\n"+tt.body)
		resp, err := http.ReadResponse(br, &http.Request{Method: tt.method})
		if err != nil {
			t.Fatalf("%s %s: %v", tt.method, tt.path, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %s: body: %v", tt.method, tt.path, err)
		}
		if resp.StatusCode != tt.status || string(b) != tt.want {
			t.Errorf("%s %s = %d %q, want %d %q", tt.method, tt.path, resp.StatusCode, b, tt.status, tt.want)
		}
		if got := resp.Header.Get("Content-Length"); tt.wantLength != "" && got != tt.wantLength {
			t.Errorf("%s %s Content-Length = %q, want %q", tt.method, tt.path, got, tt.wantLength)
		}
	}
}

func TestHTTP10Client(t *testing.T) {
	app := startApp(t, http.HandlerFunc(framingApp))
	h := start(t, appAddr(app), Config{})
	status, body := rawRequest(t, h.addr, "GET /stream HTTP/1.0\r\nHost: a\r\nAuthorization: Bearer "+tokGood+"\r\n\r\n")
	if !strings.HasSuffix(status, "200 OK") || body != "part1,part2" {
		t.Errorf("HTTP/1.0 stream = %q %q, want 200 part1,part2 (close-delimited)", status, body)
	}
}

func TestExpectContinue(t *testing.T) {
	app := startApp(t, http.HandlerFunc(framingApp))
	h := start(t, appAddr(app), Config{})
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST /echo HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "+tokGood+
		"\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
		t.Fatalf("first line = %q, %v; want 100 Continue before the body is sent", line, err)
	}
	if l, _ := br.ReadString('\n'); l != "\r\n" {
		t.Fatalf("after 100 Continue got %q, want an empty line", l)
	}
	io.WriteString(c, "pong")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "pong" {
		t.Errorf("response = %d %q, want 200 pong", resp.StatusCode, b)
	}
}

// TestStaleUpstreamConnection: the application closes an idle pooled
// connection; the next request must still succeed — by the liveness probe
// for a request with a body, by one retry for a bodiless one.
func TestStaleUpstreamConnection(t *testing.T) {
	closed := make(chan struct{}, 10)
	app := httptest.NewUnstartedServer(http.HandlerFunc(framingApp))
	app.Config.IdleTimeout = 50 * time.Millisecond
	app.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed <- struct{}{}
		}
	}
	app.Start()
	t.Cleanup(app.Close)
	h := start(t, appAddr(app), Config{})
	c := h1Client(t)
	waitClosed := func() {
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatal("application never closed its idle connection")
		}
	}
	post := func() {
		req, _ := http.NewRequest("POST", "http://"+h.addr+"/echo", strings.NewReader("body"))
		req.Header.Set("Authorization", "Bearer "+tokGood)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "body" {
			t.Errorf("POST after the application closed the pooled connection = %d %q, want 200 body", resp.StatusCode, b)
		}
	}
	post()
	waitClosed()
	h.srv.pool.probeAfter = 0 // probe every reuse
	post()
	waitClosed()
	h.srv.pool.probeAfter = time.Hour // never probe: the retry must cover it
	resp := get(t, c, "http://"+h.addr+"/", tokGood, nil)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET after the application closed the pooled connection = %d, want 200", resp.StatusCode)
	}
}

// TestEarlyResponse: the application answers without reading the body the
// client is still sending. The answer is relayed at once; the connection
// then ends, since the rest of the body cannot be told apart from a next
// request.
func TestEarlyResponse(t *testing.T) {
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusRequestEntityTooLarge)
	}))
	h := start(t, appAddr(app), Config{})
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "+tokGood+
		"\r\nContent-Length: 10485760\r\n\r\n"+strings.Repeat("x", 1024))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("status = %d, want 413", resp.StatusCode)
	}
	start := time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the early answer: %v, want EOF", err)
	}
	if el := time.Since(start); el > bodyGrace+2*time.Second {
		t.Errorf("connection closed after %v, want within about %v", el, bodyGrace)
	}
}
