package enforcer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/portcullis-mesh/portcullis/agent/verifier"
	"github.com/portcullis-mesh/portcullis/identity"
)

func TestAccelerate(t *testing.T) {
	type row struct {
		Mark        uint32
		NodeDefault bool
		Choice      string
		Accelerated bool
	}
	var got []row
	for _, mark := range []uint32{0, 0x5043} {
		for _, node := range []bool{false, true} {
			for _, c := range []identity.Acceleration{identity.AccelerationDefault, identity.AccelerationOn, identity.AccelerationOff} {
				got = append(got, row{mark, node, c.String(), accelerate(mark, node, c)})
			}
		}
	}
	want := []row{
		// A datapath without a mark accelerates nothing.
		{0, false, "default", false},
		{0, false, "on", false},
		{0, false, "off", false},
		{0, true, "default", false},
		{0, true, "on", false},
		{0, true, "off", false},
		// The workload's choice, else the node's default.
		{0x5043, false, "default", false},
		{0x5043, false, "on", true},
		{0x5043, false, "off", false},
		{0x5043, true, "default", true},
		{0x5043, true, "on", true},
		{0x5043, true, "off", false},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("accelerate (-want +got):\n%s", diff)
	}
}

// dialTo dials addr whatever address the verifier asks for (the accepted
// connection's own address, which here is the verifier's listener).
type dialTo string

func (d dialTo) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	var nd net.Dialer
	return nd.DialContext(ctx, network, string(d))
}

// TestAcceptorHandover replaces a verifier the way replaceVerifierLocked
// does (a new view served, the old one closed, retireReplaced), under a
// stream of requests on new and kept-alive connections: no request fails,
// and new connections reach the new verifier.
func TestAcceptorHandover(t *testing.T) {
	app := func(name string) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, name)
		}))
		t.Cleanup(s.Close)
		return s
	}
	allow := verifier.AuthorizerFunc(func(context.Context, *verifier.Request) verifier.Decision {
		return verifier.Decision{Allow: true}
	})
	const headerTimeout = 200 * time.Millisecond
	start := func(acc *acceptor, appName string) *podVerifier {
		srv, err := verifier.New(verifier.Config{
			Authorizer: allow, Dialer: dialTo(app(appName).Listener.Addr().String()), ReadHeaderTimeout: headerTimeout,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		v := acc.view()
		served := make(chan struct{})
		go func() {
			defer close(served)
			if err := srv.Serve(v); err != nil && !errors.Is(err, verifier.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				t.Errorf("Serve: %v", err)
			}
		}()
		return &podVerifier{srv: srv, view: v, served: served}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acc := newAcceptor(ln)
	t.Cleanup(func() { acc.Close() })
	old := start(acc, "old")
	url := "http://" + ln.Addr().String() + "/"

	var (
		stop             = make(chan struct{})
		wg               sync.WaitGroup
		mu               sync.Mutex
		errs             []error
		sawNew, requests atomic.Int64
	)
	get := func(c *http.Client) {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := c.Get(url)
			if err == nil {
				var body []byte
				body, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
				if string(body) == "new" {
					sawNew.Add(1)
				}
			}
			requests.Add(1)
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}
	}
	for i := range 4 {
		wg.Add(1)
		// Half on a new connection per request, half kept alive.
		go get(&http.Client{Transport: &http.Transport{DisableKeepAlives: i%2 == 0}, Timeout: 10 * time.Second})
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("requests through the old verifier", func() bool { return requests.Load() > 50 })

	start(acc, "new")
	old.view.Close()
	retired := make(chan struct{})
	go func() {
		defer close(retired)
		retireReplaced(old, headerTimeout, 5*time.Second, nil)
	}()
	select {
	case <-retired:
	case <-time.After(10 * time.Second):
		t.Fatal("retireReplaced did not return within 10s")
	}
	n := requests.Load()
	waitFor("requests through the new verifier", func() bool { return requests.Load() > n+50 && sawNew.Load() > 0 })
	close(stop)
	wg.Wait()
	if len(errs) > 0 {
		t.Errorf("%d of %d requests failed across the handover; first: %v", len(errs), requests.Load(), errs[0])
	}
}

// TestAcceptorClose: closing a view leaves the others served; closing the
// acceptor ends every view.
func TestAcceptorClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acc := newAcceptor(ln)
	t.Cleanup(func() { acc.Close() })
	a, b := acc.view(), acc.view()
	a.Close()
	if _, err := a.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept on a closed view: got %v, want net.ErrClosed", err)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := b.Accept()
	if err != nil {
		t.Fatalf("Accept on the open view: %v", err)
	}
	if got.RemoteAddr().String() != c.LocalAddr().String() {
		t.Errorf("accepted %v, want the connection from %v", got.RemoteAddr(), c.LocalAddr())
	}
	got.Close()

	done := make(chan error, 1)
	go func() {
		_, err := b.Accept()
		done <- err
	}()
	acc.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after the acceptor closed: got %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still blocked 5s after the acceptor closed")
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Errorf("dial after the acceptor closed: got no error, want refused")
	}
}

// BenchmarkAccept measures dial + accept + close of loopback connections
// straight from the listener and through an acceptor's view: what the
// hand-off costs per new connection.
func BenchmarkAccept(b *testing.B) {
	for _, tc := range []struct {
		name string
		wrap func(net.Listener) (net.Listener, func())
	}{
		{"listener", func(ln net.Listener) (net.Listener, func()) { return ln, func() { ln.Close() } }},
		{"acceptor", func(ln net.Listener) (net.Listener, func()) {
			acc := newAcceptor(ln)
			return acc.view(), func() { acc.Close() }
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			l, closeFn := tc.wrap(ln)
			defer closeFn()
			addr := ln.Addr().String()
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
			for b.Loop() {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				var one [1]byte
				c.Read(one[:]) // EOF once the server side closed
				c.Close()
			}
		})
	}
}

// TestRetireReplacedOnClose: a replaced verifier waits out the header
// timeout before it is retired, unless the Enforcer closes meanwhile.
func TestRetireReplacedOnClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acc := newAcceptor(ln)
	t.Cleanup(func() { acc.Close() })
	srv, err := verifier.New(verifier.Config{
		Authorizer: verifier.AuthorizerFunc(func(context.Context, *verifier.Request) verifier.Decision { return verifier.Decision{} }),
	})
	if err != nil {
		t.Fatal(err)
	}
	v := &podVerifier{srv: srv, view: acc.view()}
	served := make(chan struct{})
	v.served = served
	go func() {
		defer close(served)
		srv.Serve(v.view)
	}()
	v.view.Close()

	closing := make(chan struct{})
	retired := make(chan struct{})
	go func() {
		defer close(retired)
		retireReplaced(v, time.Hour, 5*time.Second, closing)
	}()
	select {
	case <-retired:
		t.Fatal("retired before the header timeout and before closing")
	case <-time.After(50 * time.Millisecond):
	}
	close(closing)
	select {
	case <-retired:
	case <-time.After(10 * time.Second):
		t.Fatal("not retired 10s after closing")
	}
	if err := srv.Serve(acc.view()); !errors.Is(err, verifier.ErrServerClosed) {
		t.Errorf("Serve after retirement: %v, want ErrServerClosed", err)
	}
}
