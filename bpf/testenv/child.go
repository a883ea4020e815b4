package testenv

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Environment of the re-executed pod process.
const (
	childEnv      = "PORTCULLIS_TESTENV_POD"       // pod name; set means "be the pod process"
	childPortsEnv = "PORTCULLIS_TESTENV_APP_PORTS" // comma-separated ports
)

// childTimeout bounds every network operation of the pod process.
const childTimeout = 5 * time.Second

// Main is the TestMain of packages that create pods with processes: in the
// re-executed pod process it runs the app and exits, otherwise it runs the
// tests.
func Main(m *testing.M) {
	if name := os.Getenv(childEnv); name != "" {
		os.Exit(runChild(name, os.Getenv(childPortsEnv)))
	}
	os.Exit(m.Run())
}

// runChild serves HTTP on every port (dual-stack) and answers commands on
// stdin until stdin closes:
//
//	accepted <port>  -> "ok <connections accepted on port>"
//	get <ip:port> [timeout ms] -> "ok <local addr> <base64 response>" or "err <base64 error>"
func runChild(name, portList string) int {
	accepted := make(map[uint16]*atomic.Int64)
	for _, f := range strings.Split(portList, ",") {
		if f == "" {
			continue
		}
		p, err := strconv.ParseUint(f, 10, 16)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bad port %q: %v\n", f, err)
			return 2
		}
		port := uint16(p)
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			fmt.Fprintf(os.Stderr, "listen on %d: %v\n", port, err)
			return 2
		}
		n := new(atomic.Int64)
		accepted[port] = n
		srv := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				local := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
				fmt.Fprintf(w, "app=%s port=%d local=%s remote=%s\n", name, port, local, r.RemoteAddr)
			}),
			ConnState: func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					n.Add(1)
				}
			},
			ReadHeaderTimeout: childTimeout,
		}
		go srv.Serve(ln) //nolint:errcheck // serves until the process exits
	}
	fmt.Println("ready")

	var mu sync.Mutex
	reply := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "accepted":
			p, _ := strconv.ParseUint(arg, 10, 16)
			var v int64
			if n := accepted[uint16(p)]; n != nil {
				v = n.Load()
			}
			reply("ok %d", v)
		case "get":
			addr, ms, _ := strings.Cut(arg, " ")
			timeout := childTimeout
			if v, err := strconv.Atoi(ms); err == nil && v > 0 {
				timeout = time.Duration(v) * time.Millisecond
			}
			local, body, err := childGet(addr, timeout)
			if err != nil {
				reply("err %s", base64.StdEncoding.EncodeToString([]byte(err.Error())))
				continue
			}
			reply("ok %s %s", local, base64.StdEncoding.EncodeToString(body))
		default:
			reply("err %s", base64.StdEncoding.EncodeToString([]byte("unknown command "+cmd)))
		}
	}
	return 0
}

// childGet opens a TCP connection to addr, sends an HTTP/1.0 GET and reads
// the whole answer, all within timeout.
func childGet(addr string, timeout time.Duration) (string, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", nil, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return "", nil, err
	}
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: portcullis\r\n\r\n"); err != nil {
		return "", nil, err
	}
	body, err := io.ReadAll(c)
	return c.LocalAddr().String(), body, err
}
