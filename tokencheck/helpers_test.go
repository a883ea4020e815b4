package tokencheck

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
)

const (
	tenantA = "aaaaaaaa-0000-4000-8000-00000000000a"
	tenantB = "bbbbbbbb-0000-4000-8000-00000000000b"
	tenantC = "cccccccc-0000-4000-8000-00000000000c"
	audURI  = "api://orders"
	audID   = "0a0a0a0a-1111-4222-8333-444444444444"
)

// RSA key generation is slow; tests share keys, generated on first use.
var (
	keyPoolMu sync.Mutex
	keyPool   = map[int]*rsa.PrivateKey{}
)

func testKey(t testing.TB, i int) *rsa.PrivateKey {
	t.Helper()
	keyPoolMu.Lock()
	defer keyPoolMu.Unlock()
	if k := keyPool[i]; k != nil {
		return k
	}
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("generate key: %v", err)
	}
	keyPool[i] = k
	return k
}

// idpMode makes the test IdP misbehave.
type idpMode int32

const (
	modeOK   idpMode = iota
	modeDown         // 503 on every request
	modeHang         // requests hang until the test ends
)

// testIDP is a devidp behind an httptest server whose availability tests
// control, counting requests for key sets.
type testIDP struct {
	*idp.IDP
	srv       *httptest.Server
	mode      atomic.Int32
	jwksHits  atomic.Int64
	allHits   atomic.Int64
	hangUntil chan struct{}
}

func newTestIDP(t testing.TB, tenants ...string) *testIDP {
	t.Helper()
	p, err := idp.New(idp.Options{Tenants: tenants, Keys: []*rsa.PrivateKey{testKey(t, 0)}})
	if err != nil {
		t.Fatalf("idp.New: %v", err)
	}
	ti := &testIDP{IDP: p, hangUntil: make(chan struct{})}
	var h http.Handler
	ti.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ti.allHits.Add(1)
		switch idpMode(ti.mode.Load()) {
		case modeDown:
			http.Error(w, "down for the test", http.StatusServiceUnavailable)
			return
		case modeHang:
			select {
			case <-ti.hangUntil:
			case <-r.Context().Done():
			}
			return
		}
		if len(r.URL.Path) > 5 && r.URL.Path[len(r.URL.Path)-5:] == "/keys" {
			ti.jwksHits.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	h = p.Handler(ti.srv.URL)
	t.Cleanup(func() {
		close(ti.hangUntil)
		ti.srv.Close()
	})
	return ti
}

func (ti *testIDP) setMode(m idpMode) { ti.mode.Store(int32(m)) }

func (ti *testIDP) mint(t testing.TB, req idp.TokenRequest) string {
	t.Helper()
	if req.Audience == "" {
		req.Audience = audURI
	}
	tok, err := ti.Mint(req)
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	return tok
}

func (ti *testIDP) azure(ref, tenant string) IssuerConfig {
	return IssuerConfig{
		Ref: ref,
		AzureAD: &AzureADConfig{
			TenantID:      tenant,
			AuthorityHost: ti.srv.URL,
			Audiences:     []string{audURI, audID},
		},
	}
}

// clock is a settable test clock, starting at the real time.
type clock struct{ off atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) Advance(d time.Duration) { c.off.Add(int64(d)) }
func testConfig(c *clock) Config         { return Config{Now: c.Now, FetchTimeout: 2 * time.Second} }
func ctxT(t testing.TB) context.Context  { return t.Context() }
func noErr(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// newValidator starts a Validator, waits for its first key fetch and
// closes it when the test ends.
func newValidator(t testing.TB, cfg Config, issuers ...IssuerConfig) *Validator {
	t.Helper()
	v, err := New(cfg, issuers)
	noErr(t, err, "New")
	t.Cleanup(func() { v.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	noErr(t, v.WaitReady(ctx), "WaitReady")
	return v
}
