package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Ports of the e2e app inside its pod.
const (
	appPort    = 8080 // HTTP/1.1 and h2c (prior knowledge); captured
	directPort = 8081 // the same server, on a port no test policy names
	grpcPort   = 9090 // gRPC health service; captured when a policy names it
	statsPort  = 9999 // counters, on the pod's loopback only: never captured
)

// appEnv, when set, makes the test binary the e2e app; its value is the
// service name the app reports.
const appEnv = "PORTCULLIS_E2E_APP"

// appStats are the app's counters, read over its loopback stats port.
type appStats struct {
	// Conns counts TCP connections accepted on appPort and grpcPort.
	Conns int64 `json:"conns"`
	// Requests counts HTTP requests and gRPC calls served.
	Requests int64 `json:"requests"`
	// BodyBytes counts request body bytes read.
	BodyBytes int64 `json:"body_bytes"`
}

// appReply is what the app answers on every plain HTTP path.
type appReply struct {
	Service string            `json:"service"`
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Proto   string            `json:"proto"`
	Bytes   int64             `json:"bytes"`
	SHA256  string            `json:"sha256"`
	Headers map[string]string `json:"headers"`
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// runApp is the pod's application. It serves until its stdin closes, which
// is how the test stops it, and prints "ready" once every port listens.
func runApp(name string) int {
	var conns, requests, bodyBytes atomic.Int64
	listen := func(addr string) net.Listener {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "listen on %s: %v\n", addr, err)
			os.Exit(2)
		}
		return ln
	}
	httpLn := countingListener{listen(fmt.Sprintf(":%d", appPort)), &conns}
	directLn := countingListener{listen(fmt.Sprintf(":%d", directPort)), &conns}
	grpcLn := countingListener{listen(fmt.Sprintf(":%d", grpcPort)), &conns}
	statsLn := listen(fmt.Sprintf("127.0.0.1:%d", statsPort))

	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		_, _ = io.WriteString(w, "hello, world\n")
	})
	mux.HandleFunc("/download", func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		_, _ = io.Copy(w, io.LimitReader(&pattern{}, n))
	})
	upgrader := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(typ, append([]byte(name+": "), msg...)); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		h := sha256.New()
		n, _ := io.Copy(h, countingReader{r.Body, &bodyBytes})
		hs := map[string]string{}
		keys := make([]string, 0, len(r.Header))
		for k := range r.Header {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			lk := strings.ToLower(k)
			if strings.HasPrefix(lk, "x-portcullis-") || strings.HasPrefix(lk, "x-forwarded-") ||
				lk == "forwarded" || strings.HasPrefix(lk, "x-claim-") || lk == "authorization" {
				hs[k] = strings.Join(r.Header[k], ", ")
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(appReply{
			Service: name, Method: r.Method, Path: r.URL.Path, Proto: r.Proto,
			Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil)), Headers: hs,
		})
	})
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: protocols, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(httpLn)   //nolint:errcheck // serves until the process exits
	go srv.Serve(directLn) //nolint:errcheck // serves until the process exits

	gs := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		requests.Add(1)
		return h(ctx, req)
	}))
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("orders", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(grpcLn) //nolint:errcheck // serves until the process exits

	stats := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(appStats{Conns: conns.Load(), Requests: requests.Load(), BodyBytes: bodyBytes.Load()})
	})}
	go stats.Serve(statsLn) //nolint:errcheck // serves until the process exits

	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// countingReader adds what it reads to n, as it reads it.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n.Add(int64(k))
	return k, err
}

// pattern is an endless, cheap, non-constant byte stream, so that a
// reordered, lost or repeated chunk changes a hash.
type pattern struct{ off int64 }

func (p *pattern) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = byte((p.off + int64(i)) * 7 % 251)
	}
	p.off += int64(len(b))
	return len(b), nil
}
