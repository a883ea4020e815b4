package verifier

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Stream idle timeouts of the tests: short enough to keep the tests fast,
// long enough that a loaded CI machine does not miss a tick by that much.
const (
	idleShort  = 300 * time.Millisecond // stalls must be cut after it
	idleSteady = 400 * time.Millisecond // streams pacing bytes at a third of it must live
)

const authLine = "Authorization: Bearer " + tokGood + "\r\n"

// dialRaw connects to addr; the connection is closed at cleanup.
func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitClosed reads r (over c) until the verifier closes c and returns when
// that was, failing the test if c is still open after limit.
func waitClosed(t *testing.T, c net.Conn, r io.Reader, limit time.Duration) time.Time {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(limit))
	_, err := io.Copy(io.Discard, r)
	at := time.Now()
	if isTimeout(err) {
		t.Fatalf("connection still open after %v", limit)
	}
	if err != nil && !closedByPeer(err) && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("read: %v, want EOF or reset", err)
	}
	return at
}

// checkIdleAfter fails the test unless the stall that began at from lasted
// at least timeout before the close at closed.
func checkIdleAfter(t *testing.T, from, closed time.Time, timeout time.Duration) {
	t.Helper()
	if d := closed.Sub(from); d < timeout {
		t.Errorf("closed %v after the last byte moved, want at least the stream idle timeout %v", d, timeout)
	}
}

// closeLimit bounds the wait for a close: the timeout, the watch's
// resolution (a quarter of it), and slack for a loaded machine.
func closeLimit(timeout time.Duration) time.Duration { return timeout + timeout/4 + 2*time.Second }

func checkIdleMetric(t *testing.T, h *harness, protocol string, want float64) {
	t.Helper()
	got := metricValue(t, h.metrics, "portcullis_verifier_stream_idle_timeouts_total", map[string]string{"protocol": protocol})
	if got != want {
		t.Errorf("stream_idle_timeouts_total{protocol=%q} = %v, want %v", protocol, got, want)
	}
}

// bodyResult is what an application handler saw of a request body.
type bodyResult struct {
	n   int
	err error
}

func TestStreamIdleRequestBody(t *testing.T) {
	for _, tt := range []struct {
		name string
		head string // framing headers
		sent string // body bytes sent before the stall
	}{
		{"content-length copied", "Content-Length: 1000\r\n", strings.Repeat("a", 10)},
		{"content-length spliced", "Content-Length: 1048576\r\n", strings.Repeat("a", 10)},
		{"chunked", "Transfer-Encoding: chunked\r\n", "a\r\n" + strings.Repeat("a", 10) + "\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := make(chan bodyResult, 1)
			app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, err := io.ReadAll(r.Body)
				got <- bodyResult{len(b), err}
			}))
			h := start(t, appAddr(app), Config{StreamIdleTimeout: idleShort})
			c := dialRaw(t, h.addr)
			if _, err := io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: a\r\n"+authLine+tt.head+"\r\n"+tt.sent); err != nil {
				t.Fatal(err)
			}
			sent := time.Now()
			closed := waitClosed(t, c, c, closeLimit(idleShort))
			checkIdleAfter(t, sent, closed, idleShort)
			select {
			case r := <-got:
				if r.err == nil {
					t.Errorf("application read a complete body of %d bytes, want an error", r.n)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("application handler still reading the body 5s after the client was cut")
			}
			checkIdleMetric(t, h, "http/1.1", 1)
		})
	}
}

func TestStreamIdleResponseBody(t *testing.T) {
	for _, tt := range []struct {
		name   string
		length int // Content-Length; -1: none (chunked to the client)
	}{
		{"content-length copied", 1000},
		{"content-length spliced", 1 << 20},
		{"chunked", -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			flushed := make(chan time.Time, 1)
			release := make(chan struct{})
			t.Cleanup(func() { close(release) })
			app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.length >= 0 {
					w.Header().Set("Content-Length", strconv.Itoa(tt.length))
				}
				w.WriteHeader(200)
				io.WriteString(w, strings.Repeat("b", 500))
				http.NewResponseController(w).Flush()
				flushed <- time.Now()
				select { // stall
				case <-r.Context().Done():
				case <-release:
				}
			}))
			h := start(t, appAddr(app), Config{StreamIdleTimeout: idleShort})
			c := dialRaw(t, h.addr)
			io.WriteString(c, "GET /download HTTP/1.1\r\nHost: a\r\n"+authLine+"\r\n")
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(resp.Body, make([]byte, 500)); err != nil {
				t.Fatalf("first 500 bytes: %v", err)
			}
			from := <-flushed
			closed := waitClosed(t, c, resp.Body, closeLimit(idleShort))
			checkIdleAfter(t, from, closed, idleShort)
			checkIdleMetric(t, h, "http/1.1", 1)
		})
	}
}

// writeResult is what an application handler saw writing a response.
type writeResult struct {
	lastOK time.Time // the end of its last successful write
	failed time.Time // when a write failed
	n      int64
	err    error
}

func TestStreamIdleClientStopsReading(t *testing.T) {
	const chunk, most = 64 << 10, 512 << 20 // far more than the sockets between can hold
	for _, tt := range []struct {
		name     string
		length   bool // Content-Length (spliced) or chunked
		noSplice bool
	}{
		{name: "content-length spliced", length: true},
		{name: "content-length copied", length: true, noSplice: true},
		{name: "chunked"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := make(chan writeResult, 1)
			app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.length {
					w.Header().Set("Content-Length", strconv.Itoa(most))
				}
				res := writeResult{lastOK: time.Now()}
				b := make([]byte, chunk)
				for res.n < most {
					n, err := w.Write(b)
					res.n += int64(n)
					if err != nil {
						res.err, res.failed = err, time.Now()
						break
					}
					res.lastOK = time.Now()
				}
				got <- res
			}))
			h := start(t, appAddr(app), Config{StreamIdleTimeout: idleShort, NoSplice: tt.noSplice})
			c := dialRaw(t, h.addr)
			io.WriteString(c, "GET /big HTTP/1.1\r\nHost: a\r\n"+authLine+"\r\n")
			// The client reads nothing: every buffer between fills up.
			select {
			case r := <-got:
				if r.err == nil {
					t.Fatalf("application wrote all %d bytes to a client that reads nothing", r.n)
				}
				checkIdleAfter(t, r.lastOK, r.failed, idleShort)
			case <-time.After(closeLimit(idleShort) + 5*time.Second):
				t.Fatal("application still writing to a client that reads nothing")
			}
			checkIdleMetric(t, h, "http/1.1", 1)
		})
	}
}

// tunnelApp answers an Upgrade: test request with 101 and then, on /idle,
// says nothing and reports when the connection ends; on /push, writes
// pushes bytes (one per interval), then echoes what it reads.
type tunnelApp struct {
	upgraded chan time.Time // when the 101 was written
	ended    chan error     // /idle: the read that ended the connection
	interval time.Duration
	pushes   int
}

func (a *tunnelApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
	a.upgraded <- time.Now()
	c.SetDeadline(time.Now().Add(30 * time.Second)) // never outlive the test
	if r.URL.Path == "/idle" {
		_, err := brw.ReadByte()
		a.ended <- err
		return
	}
	for range a.pushes {
		time.Sleep(a.interval) // the pace of the stream, not synchronisation
		if _, err := io.WriteString(c, "x"); err != nil {
			return
		}
	}
	io.CopyN(c, brw, 4)
}

func upgradeRequest(path string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: test\r\n" + authLine + "\r\n"
}

func TestStreamIdleTunnel(t *testing.T) {
	for _, noSplice := range []bool{false, true} {
		t.Run(fmt.Sprintf("idle both ways/nosplice=%v", noSplice), func(t *testing.T) {
			app := &tunnelApp{upgraded: make(chan time.Time, 1), ended: make(chan error, 1)}
			h := start(t, appAddr(startApp(t, app)), Config{StreamIdleTimeout: idleShort, NoSplice: noSplice})
			c := dialRaw(t, h.addr)
			io.WriteString(c, upgradeRequest("/idle"))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != 101 {
				t.Fatalf("upgrade: %v %v, want 101", resp, err)
			}
			from := <-app.upgraded
			closed := waitClosed(t, c, br, closeLimit(idleShort))
			checkIdleAfter(t, from, closed, idleShort)
			select {
			case err := <-app.ended:
				if !closedByPeer(err) {
					t.Errorf("application's read: %v, want EOF or reset", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("application's side of the tunnel still open")
			}
			checkIdleMetric(t, h, "upgrade", 1)
		})
		t.Run(fmt.Sprintf("one way steady/nosplice=%v", noSplice), func(t *testing.T) {
			app := &tunnelApp{upgraded: make(chan time.Time, 1), interval: idleSteady / 3, pushes: 10}
			h := start(t, appAddr(startApp(t, app)), Config{StreamIdleTimeout: idleSteady, NoSplice: noSplice})
			c := dialRaw(t, h.addr)
			io.WriteString(c, upgradeRequest("/push"))
			c.SetReadDeadline(time.Now().Add(15 * time.Second))
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != 101 {
				t.Fatalf("upgrade: %v %v, want 101", resp, err)
			}
			start := time.Now()
			// The client says nothing while the application pushes.
			if _, err := io.ReadFull(br, make([]byte, app.pushes)); err != nil {
				t.Fatalf("after %v of pushes: %v", time.Since(start).Round(time.Millisecond), err)
			}
			if d := time.Since(start); d < 3*idleSteady {
				t.Fatalf("pushes took %v, want more than 3× the timeout %v", d, idleSteady)
			}
			// Both sides are still connected.
			io.WriteString(c, "ping")
			got := make([]byte, 4)
			if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping" {
				t.Fatalf("echo after the pushes: %q, %v; want ping", got, err)
			}
			checkIdleMetric(t, h, "upgrade", 0)
		})
	}
}

func TestStreamIdleSlowUpload(t *testing.T) {
	const pieces, size = 10, 8 << 10 // 80 KiB: spliced when Content-Length says so
	for _, tt := range []struct {
		name     string
		chunked  bool
		noSplice bool
	}{
		{name: "content-length spliced"},
		{name: "content-length copied", noSplice: true},
		{name: "chunked", chunked: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, err := io.ReadAll(r.Body)
				if err != nil {
					w.WriteHeader(http.StatusBadRequest)
				}
				io.WriteString(w, strconv.Itoa(len(b)))
			}))
			h := start(t, appAddr(app), Config{StreamIdleTimeout: idleSteady, NoSplice: tt.noSplice})
			c := dialRaw(t, h.addr)
			framing := "Content-Length: " + strconv.Itoa(pieces*size) + "\r\n"
			if tt.chunked {
				framing = "Transfer-Encoding: chunked\r\n"
			}
			io.WriteString(c, "PUT /upload HTTP/1.1\r\nHost: a\r\n"+authLine+framing+"\r\n")
			start := time.Now()
			piece := strings.Repeat("u", size)
			if tt.chunked {
				piece = strconv.FormatInt(size, 16) + "\r\n" + piece + "\r\n"
			}
			for range pieces {
				time.Sleep(idleSteady / 3) // the pace of the upload
				if _, err := io.WriteString(c, piece); err != nil {
					t.Fatalf("after %v of upload: %v", time.Since(start).Round(time.Millisecond), err)
				}
			}
			if tt.chunked {
				io.WriteString(c, "0\r\n\r\n")
			}
			if d := time.Since(start); d < 3*idleSteady {
				t.Fatalf("upload took %v, want more than 3× the timeout %v", d, idleSteady)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if got, want := resp.Status+" "+string(body), "200 OK "+strconv.Itoa(pieces*size); got != want {
				t.Errorf("response: got %q, want %q", got, want)
			}
			checkIdleMetric(t, h, "http/1.1", 0)
		})
	}
}

func TestStreamIdleH2(t *testing.T) {
	t.Run("request body stalls", func(t *testing.T) {
		got := make(chan bodyResult, 1)
		app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, err := io.ReadAll(r.Body)
			got <- bodyResult{len(b), err}
		}))
		h := start(t, appAddr(app), Config{StreamIdleTimeout: idleShort})
		pr, pw := io.Pipe()
		t.Cleanup(func() { pw.Close() })
		req, _ := http.NewRequest("POST", "http://"+h.addr+"/upload", pr)
		req.Header.Set("Authorization", "Bearer "+tokGood)
		req.ContentLength = 1000
		done := make(chan error, 1)
		go func() {
			resp, err := h2cClient(t).Do(req)
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			done <- err
		}()
		if _, err := io.WriteString(pw, strings.Repeat("a", 10)); err != nil {
			t.Fatal(err)
		}
		sent := time.Now()
		select {
		case err := <-done:
			checkIdleAfter(t, sent, time.Now(), idleShort)
			if err == nil {
				t.Error("request with a stalled body succeeded, want a stream error")
			}
		case <-time.After(closeLimit(idleShort)):
			t.Fatal("stream with a stalled request body still open")
		}
		select {
		case r := <-got:
			if r.err == nil {
				t.Errorf("application read a complete body of %d bytes, want an error", r.n)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("application handler still reading the body")
		}
		checkIdleMetric(t, h, "h2", 1)
	})
	t.Run("response body stalls", func(t *testing.T) {
		flushed := make(chan time.Time, 1)
		release := make(chan struct{})
		t.Cleanup(func() { close(release) })
		app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1000")
			io.WriteString(w, strings.Repeat("b", 500))
			http.NewResponseController(w).Flush()
			flushed <- time.Now()
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}))
		h := start(t, appAddr(app), Config{StreamIdleTimeout: idleShort})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+h.addr+"/download", nil)
		req.Header.Set("Authorization", "Bearer "+tokGood)
		resp, err := h2cClient(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if _, err := io.ReadFull(resp.Body, make([]byte, 500)); err != nil {
			t.Fatalf("first 500 bytes: %v", err)
		}
		from := <-flushed
		res := make(chan error, 1)
		go func() {
			_, err := io.ReadAll(resp.Body)
			res <- err
		}()
		select {
		case err := <-res:
			checkIdleAfter(t, from, time.Now(), idleShort)
			if err == nil {
				t.Error("stalled response body ended cleanly, want a stream error")
			}
		case <-time.After(closeLimit(idleShort)):
			t.Fatal("stream with a stalled response body still open")
		}
		checkIdleMetric(t, h, "h2", 1)
	})
}

func TestStreamIdleTimeoutDefault(t *testing.T) {
	for _, tt := range []struct {
		set, want time.Duration
		watched   bool
	}{
		{0, 5 * time.Minute, true},
		{time.Second, time.Second, true},
		{-1, -1, false},
	} {
		c := Config{Authorizer: AuthorizerFunc(testAuthorizer), StreamIdleTimeout: tt.set}
		if err := c.setDefaults(); err != nil {
			t.Fatal(err)
		}
		w := newStreamWatch(c.StreamIdleTimeout, nil)
		if diff := cmp.Diff([]any{tt.want, tt.watched}, []any{c.StreamIdleTimeout, w != nil}); diff != "" {
			t.Errorf("StreamIdleTimeout %v: (timeout, watched) mismatch (-want +got):\n%s", tt.set, diff)
		}
	}
}
