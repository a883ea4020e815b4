package verifier

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/agent/audit"
	"github.com/portcullis-mesh/portcullis/agent/metrics"
	"github.com/portcullis-mesh/portcullis/identity"
)

// Tokens understood by testAuthorizer.
const (
	tokGood      = "good.token.sig"
	tokExpired   = "expired.token.sig"
	tokNoRole    = "norole.token.sig"
	tokAuditDeny = "auditdeny.token.sig"
)

// testAuthorizer decides by token, like tokencheck plus a policy would.
func testAuthorizer(_ context.Context, r *Request) Decision {
	info := TokenInfo{Issuer: "https://idp.test/tenant/v2.0", Tenant: "tenant", ObjectID: "oid-1", Subject: "sub-1", ClientID: "app-1"}
	switch r.Token {
	case "":
		return Decision{Status: 401, Reason: ReasonMissingToken}
	case tokGood:
		return Decision{Allow: true, Policy: "shop/readers", Rule: "0", Token: info,
			Headers: []HeaderField{{"X-Claim-Oid", "oid-1"}, {"X-Bad", "a\r\nInjected: yes"}}}
	case tokNoRole:
		return Decision{Status: 403, Reason: ReasonNoMatchingRule, Policy: "shop/readers", Token: info}
	case tokAuditDeny:
		return Decision{Status: 403, Reason: ReasonNoMatchingRule, Policy: "shop/audit", Mode: AuditOnly, Token: info}
	}
	return Decision{Status: 401, Reason: "expired"}
}

// recorder is an Auditor that keeps every record.
type recorder struct {
	mu   sync.Mutex
	recs []audit.Record
}

func (r *recorder) Log(rec *audit.Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, *rec)
}

func (r *recorder) all() []audit.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]audit.Record(nil), r.recs...)
}

// dialTo is a Dialer that sends every connection to addr, standing in for
// "the original destination inside the pod".
type dialTo string

func (d dialTo) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	var nd net.Dialer
	return nd.DialContext(ctx, network, string(d))
}

var frontendSource = identity.Source{ID: "spiffe://cluster.local/ns/shop/sa/frontend", Namespace: "shop", ServiceAccount: "frontend"}

type harness struct {
	srv     *Server
	addr    string // the verifier's listener
	port    uint16
	audit   *recorder
	metrics *metrics.Metrics
}

// start runs a verifier in front of appAddr. cfg's Authorizer, Dialer,
// Audit, Metrics and Sources default to the test ones.
func start(t *testing.T, appAddr string, cfg Config) *harness {
	t.Helper()
	return startOn(t, "127.0.0.1:0", appAddr, cfg)
}

// startOn is start with the verifier listening on listenAddr.
func startOn(t *testing.T, listenAddr, appAddr string, cfg Config) *harness {
	t.Helper()
	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{audit: &recorder{}, metrics: metrics.New(metrics.BuildInfo{})}
	if cfg.Authorizer == nil {
		cfg.Authorizer = AuthorizerFunc(testAuthorizer)
	}
	if cfg.Dialer == nil {
		cfg.Dialer = dialTo(appAddr)
	}
	if cfg.Audit == nil {
		cfg.Audit = h.audit
	}
	if cfg.Metrics == nil {
		cfg.Metrics = h.metrics
	}
	if cfg.Sources == nil {
		cfg.Sources = SourceResolverFunc(func(_, _ netip.AddrPort) identity.Source { return frontendSource })
	}
	if cfg.Workload == "" {
		cfg.Workload = "shop/orders-api"
	}
	if cfg.StripHeaders == nil {
		cfg.StripHeaders = []string{"x-claim-oid"}
	}
	h.srv, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- h.srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-served:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Shutdown")
		}
	})
	h.addr = ln.Addr().String()
	h.port = uint16(ln.Addr().(*net.TCPAddr).Port)
	return h
}

// startApp runs an application speaking HTTP/1.1 and h2c.
func startApp(t *testing.T, handler http.Handler) *httptest.Server {
	t.Helper()
	app := httptest.NewUnstartedServer(handler)
	app.Config.Protocols = new(http.Protocols)
	app.Config.Protocols.SetHTTP1(true)
	app.Config.Protocols.SetUnencryptedHTTP2(true)
	app.Start()
	t.Cleanup(app.Close)
	return app
}

func appAddr(app *httptest.Server) string { return app.Listener.Addr().String() }

// h1Client is an HTTP/1.1 client with keep-alive and no proxy.
func h1Client(t *testing.T) *http.Client {
	tr := &http.Transport{Proxy: nil, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// h2cClient speaks HTTP/2 with prior knowledge.
func h2cClient(t *testing.T) *http.Client {
	tr := &http.Transport{Proxy: nil, Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func get(t *testing.T, c *http.Client, url, token string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp
}

// metricValue sums the samples of a counter or gauge whose labels include
// the given ones.
func metricValue(t *testing.T, m *metrics.Metrics, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, s := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range s.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			if c := s.GetCounter(); c != nil {
				sum += c.GetValue()
			} else if g := s.GetGauge(); g != nil {
				sum += g.GetValue()
			}
		}
	}
	return sum
}
