package verifier

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/agent/audit"
	"github.com/portcullis-mesh/portcullis/agent/metrics"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkForward compares a small GET straight to a net/http application
// with the same GET through the verifier (allow-all authorizer, audit and
// metrics on) and through httputil.ReverseProxy, on loopback. Client,
// proxy and application share the process, so cpu-ns/op is the whole
// process's CPU per request: the proxy's cost is the difference to
// "direct".
//
//	go test -run '^$' -bench Forward -benchtime 20000x ./agent/verifier/
func BenchmarkForward(b *testing.B) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello, world\n")
	}))
	defer app.Close()

	al := audit.New(audit.Config{Writer: io.Discard})
	defer al.Close(context.Background())
	allow := AuthorizerFunc(func(_ context.Context, r *Request) Decision {
		return Decision{Allow: true, Policy: "bench/allow", Token: TokenInfo{Issuer: "https://idp", Subject: "s"}}
	})
	srv, err := New(Config{Authorizer: allow, Dialer: dialTo(app.Listener.Addr().String()),
		Audit: benchAudit(al), Metrics: benchMetrics(), Workload: "bench/app"})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()

	target, _ := url.Parse(app.URL)
	rp := httptest.NewServer(httputil.NewSingleHostReverseProxy(target))
	defer rp.Close()

	for _, tt := range []struct{ name, url string }{
		{"direct", app.URL},
		{"verifier", "http://" + ln.Addr().String()},
		{"reverseproxy", rp.URL},
	} {
		for _, conns := range []int{1, 16} {
			b.Run(tt.name+"/conns="+itoa(conns), func(b *testing.B) {
				tr := &http.Transport{MaxIdleConnsPerHost: conns, DisableCompression: true}
				defer tr.CloseIdleConnections()
				client := &http.Client{Transport: tr}
				req, _ := http.NewRequest("GET", tt.url+"/orders/42", nil)
				req.Header.Set("Authorization", "Bearer "+tokGood)
				do := func() {
					resp, err := client.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				do() // warm the connection pools
				b.ReportAllocs()
				cpu0 := cpuTime()
				b.ResetTimer()
				if conns == 1 {
					for b.Loop() {
						do()
					}
				} else {
					b.SetParallelism((conns + 1) / 2)
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							do()
						}
					})
				}
				b.StopTimer()
				b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

func benchAudit(al *audit.Logger) Auditor {
	if os.Getenv("NOAUDIT") != "" {
		return nil
	}
	return al
}

func benchMetrics() *metrics.Metrics {
	if os.Getenv("NOAUDIT") != "" {
		return nil
	}
	return metrics.New(metrics.BuildInfo{})
}
