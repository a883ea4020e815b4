package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
)

// entraIssuer is the shop namespace's Issuer for devidp's tenant, the
// first document of the tests' policy sets.
const entraIssuer = `apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: entra, namespace: shop}
spec:
  azureAD:
    tenantID: ` + tenant + `
    authorityHost: {{IDP}}
    audiences: [api://orders]
---
`

// readerPolicies: on both app ports, a valid token with Orders.Read is
// needed for everything.
const readerPolicies = entraIssuer + `apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: readers, namespace: shop}
spec:
  selector:
    matchLabels: {app: orders-api}
  mode: {{MODE}}
  action: Allow
  rules:
  - to:
      ports: [8080, 9090]
    when:
      issuers: [{name: entra}]
      roles: {anyOf: [{{ROLE}}]}
`

func readers(mode, role string) string {
	return strings.NewReplacer("{{MODE}}", mode, "{{ROLE}}", role).Replace(readerPolicies)
}

// tokens of the protocol tests.
type tokens struct{ read, noRole string }

// protocolEnv is orders-api running the e2e app behind the agent with
// readerPolicies in enforce mode.
func protocolEnv(t *testing.T) (*env, tokens) {
	return protocolEnvAccel(t, false)
}

// protocolEnvAccel is protocolEnv with local acceleration the node's
// default when accel (orders-api states no choice of its own); then the
// test must end with checkAccelerated.
func protocolEnvAccel(t *testing.T, accel bool) (*env, tokens) {
	e := newEnv(t, demoPods(e2eApp))
	e.setPolicies(readers("Enforce", "Orders.Read"))
	if accel {
		e.agent.Extra = fmt.Sprintf("localAcceleration:\n  enabled: true\n  mark: %d\n", accelMark(t))
	}
	e.agent.Start()
	return e, mintTokens(t)
}

// accelMark is an acceleration mark of the test's own: agents of tests
// running in parallel each attach a datapath at the cgroup root, and each
// datapath accelerates the sockets that carry its mark.
func accelMark(t testing.TB) uint32 {
	h := fnv.New32a()
	fmt.Fprintf(h, "%d/%s", os.Getpid(), t.Name())
	return h.Sum32() | 1
}

// checkAccelerated fails the test unless the agent's connections to the
// application were accelerated and none fell back to TCP.
func checkAccelerated(t *testing.T, e *env) {
	t.Helper()
	const m = "portcullis_datapath_events_total"
	if got := e.agent.metric(m, `event="accel_paired"`); got == 0 {
		t.Errorf("%s{event=\"accel_paired\"} = 0: no upstream connection was accelerated", m)
	}
	t.Logf("accel_paired %v, accel_tcp_only %v", e.agent.metric(m, `event="accel_paired"`), e.agent.metric(m, `event="accel_tcp_only"`))
	if got := e.agent.metric(m, `event="accel_update_error"`); got != 0 {
		t.Errorf("%s{event=\"accel_update_error\"} = %v, want 0", m, got)
	}
}

// mintTokens mints a token with Orders.Read and one with another role.
func mintTokens(t *testing.T) tokens {
	return tokens{
		read:   mint(t, idp.TokenRequest{Audience: "api://orders", Roles: []string{"Orders.Read"}}),
		noRole: mint(t, idp.TokenRequest{Audience: "api://orders", Roles: []string{"Orders.Audit"}}),
	}
}

func TestProtocols(t *testing.T) { testProtocols(t, false) }

// TestProtocolsAccelerated: every protocol works the same with local
// acceleration on (gRPC and h2c streams, upgrades spliced in user space).
func TestProtocolsAccelerated(t *testing.T) { testProtocols(t, true) }

func testProtocols(t *testing.T, accel bool) {
	e, tok := protocolEnvAccel(t, accel)
	orders := e.pods["orders-api"]
	if accel {
		defer checkAccelerated(t, e)
	}

	t.Run("http1 keep-alive", func(t *testing.T) {
		c := hostClient(t)
		before := e.stats(orders)
		for i, tc := range []struct {
			token string
			want  int
		}{{tok.read, 200}, {"", 401}, {tok.noRole, 403}, {tok.read, 200}, {tok.read, 200}} {
			resp, body := do(t, c, http.MethodGet, orders.URL(appPort, fmt.Sprintf("/orders/%d", i)), tc.token, nil)
			if resp.StatusCode != tc.want {
				t.Errorf("request %d: got %d, want %d: %s", i, resp.StatusCode, tc.want, body)
			}
		}
		after := e.stats(orders)
		if got := after.Requests - before.Requests; got != 3 {
			t.Errorf("app served %d requests, want 3 (refused ones never reach it)", got)
		}
		if got := after.Conns - before.Conns; got > 1 {
			t.Errorf("app accepted %d connections for 3 keep-alive requests, want at most 1 (pooled upstream)", got)
		}
	})

	t.Run("h2c prior knowledge, net/http", func(t *testing.T) {
		protocols := new(http.Protocols)
		protocols.SetUnencryptedHTTP2(true)
		tr := &http.Transport{Protocols: protocols}
		t.Cleanup(tr.CloseIdleConnections)
		c := &http.Client{Transport: tr, Timeout: 15 * time.Second}
		// Allowed and refused streams interleaved on one connection.
		var wg sync.WaitGroup
		errs := make(chan error, 40)
		for i := range 40 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				token, want := tok.read, 200
				switch i % 4 {
				case 1:
					token, want = "", 401
				case 2:
					token, want = tok.noRole, 403
				}
				resp, body, err := tryDo(c, http.MethodGet, orders.URL(appPort, fmt.Sprintf("/orders/%d", i)), token, nil)
				switch {
				case err != nil:
					errs <- fmt.Errorf("stream %d: %w", i, err)
				case resp.Proto != "HTTP/2.0":
					errs <- fmt.Errorf("stream %d: got %s, want HTTP/2.0", i, resp.Proto)
				case resp.StatusCode != want:
					errs <- fmt.Errorf("stream %d: got %d, want %d: %s", i, resp.StatusCode, want, body)
				case want == 200 && !strings.Contains(body, fmt.Sprintf(`"path":"/orders/%d"`, i)):
					errs <- fmt.Errorf("stream %d: app answered %s", i, body)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("h2c prior knowledge, curl", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want int
		}{
			{[]string{"-H", "Authorization: Bearer " + tok.read}, 200},
			{nil, 401},
		} {
			res := e.curl(nil, append(tc.args, "--http2-prior-knowledge", orders.URL(appPort, "/orders/1"))...)
			if res.Status != tc.want || res.Proto != "2" {
				t.Errorf("got %d over HTTP/%s, want %d over HTTP/2: %s", res.Status, res.Proto, tc.want, res.Body)
			}
		}
	})

	t.Run("h2c upgrade, curl", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want int
		}{
			{[]string{"-H", "Authorization: Bearer " + tok.read}, 200},
			{nil, 401},
		} {
			res := e.curl(nil, append(tc.args, "--http2", orders.URL(appPort, "/orders/1"))...)
			if res.Status != tc.want {
				t.Errorf("got %d, want %d: %s", res.Status, tc.want, res.Body)
			}
			if tc.want == 200 && res.Proto != "2" {
				t.Errorf("allowed upgrade answered over HTTP/%s, want the switch to HTTP/2", res.Proto)
			}
		}
	})

	t.Run("grpc", func(t *testing.T) {
		conn, err := grpc.NewClient(orders.Addr(grpcPort).String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatalf("grpc client: %v", err)
		}
		t.Cleanup(func() { conn.Close() })
		client := healthpb.NewHealthClient(conn)
		for _, tc := range []struct {
			name  string
			token string
			want  codes.Code
		}{
			{"valid token with the role", tok.read, codes.OK},
			{"no token", "", codes.Unauthenticated},
			{"token without the role", tok.noRole, codes.PermissionDenied},
			{"valid again on the same connection", tok.read, codes.OK},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if tc.token != "" {
					ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tc.token)
				}
				resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "orders"})
				st := status.Convert(err)
				if st.Code() != tc.want {
					t.Fatalf("got %v (%q), want %v", st.Code(), st.Message(), tc.want)
				}
				if tc.want != codes.OK {
					if st.Message() == "" {
						t.Errorf("got %v without a message, want one", st.Code())
					}
					return
				}
				if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
					t.Errorf("got health %v, want SERVING", resp.GetStatus())
				}
			})
		}
	})

	t.Run("websocket", func(t *testing.T) {
		before := e.stats(orders)
		if code, _ := websocketEcho(t, orders.Addr(appPort).String(), "", "refused?"); code != 401 {
			t.Errorf("upgrade without a token: got %d, want 401", code)
		}
		if got := e.stats(orders).Requests - before.Requests; got != 0 {
			t.Errorf("a refused upgrade reached the app (%d requests)", got)
		}
		code, echo := websocketEcho(t, orders.Addr(appPort).String(), tok.read, "hello through portcullis")
		if code != 101 || echo != "orders-api: hello through portcullis" {
			t.Errorf("upgrade with a token: got %d and echo %q, want 101 and the app's echo", code, echo)
		}
	})
}

// websocketEcho performs a hand-written WebSocket handshake (RFC 6455) on
// /ws, and when it is accepted sends msg as one masked text frame and
// returns the text of the frame that comes back.
func websocketEcho(t *testing.T, addr, token, msg string) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	keyRaw := make([]byte, 16)
	_, _ = rand.Read(keyRaw)
	key := base64.StdEncoding.EncodeToString(keyRaw)
	req := "GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n"
	if token != "" {
		req += "Authorization: Bearer " + token + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		t.Fatalf("send handshake: %v", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read handshake answer: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body.Close()
		return resp.StatusCode, ""
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if got, want := resp.Header.Get("Sec-WebSocket-Accept"), base64.StdEncoding.EncodeToString(sum[:]); got != want {
		t.Errorf("got Sec-WebSocket-Accept %q, want %q", got, want)
	}
	// One masked text frame (client frames must be masked).
	frame := []byte{0x81, 0x80 | byte(len(msg))}
	mask := make([]byte, 4)
	_, _ = rand.Read(mask)
	frame = append(frame, mask...)
	for i := range len(msg) {
		frame = append(frame, msg[i]^mask[i%4])
	}
	if _, err := c.Write(frame); err != nil {
		t.Fatalf("send frame: %v", err)
	}
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(br, hdr); err != nil {
		t.Fatalf("read frame: %v", err)
	}
	if hdr[0] != 0x81 {
		t.Fatalf("got frame header %#x, want a final text frame", hdr[0])
	}
	n := int(hdr[1] & 0x7f)
	if n == 126 {
		ext := make([]byte, 2)
		if _, err := io.ReadFull(br, ext); err != nil {
			t.Fatal(err)
		}
		n = int(binary.BigEndian.Uint16(ext))
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(br, payload); err != nil {
		t.Fatalf("read frame payload: %v", err)
	}
	return resp.StatusCode, string(payload)
}

// TestStream100MB streams 100 MB up and 100 MB down through the agent and
// checks the bytes arrive intact while the agent's peak resident memory
// stays far below the body size (nothing buffers a body whole).
func TestStream100MB(t *testing.T) { testStream100MB(t, false) }

// TestStream100MBAccelerated: with local acceleration the bodies go
// through user space on the agent's side (never splice(2): the redirected
// bytes are not in the TCP receive queue) and arrive intact.
func TestStream100MBAccelerated(t *testing.T) { testStream100MB(t, true) }

func testStream100MB(t *testing.T, accel bool) {
	const size = 100 << 20
	e, tok := protocolEnvAccel(t, accel)
	if accel {
		defer checkAccelerated(t, e)
	}
	orders := e.pods["orders-api"]
	c := hostClient(t)
	c.Timeout = 2 * time.Minute
	pid := e.agent.PID()
	base := procStatusKB(t, pid, "VmHWM")

	want := sha256.New()
	if _, err := io.Copy(want, io.LimitReader(&pattern{}, size)); err != nil {
		t.Fatal(err)
	}
	wantSum := hex.EncodeToString(want.Sum(nil))

	t.Run("upload", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPost, orders.URL(appPort, "/upload"), io.LimitReader(&pattern{}, size))
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = size
		req.Header.Set("Authorization", "Bearer "+tok.read)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("upload: %v", err)
		}
		defer resp.Body.Close()
		var got appReply
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
			t.Fatalf("status %d; decode app answer: %v", resp.StatusCode, err)
		}
		if got.Bytes != size || got.SHA256 != wantSum {
			t.Errorf("app received %d bytes with sha256 %s, want %d with %s", got.Bytes, got.SHA256, size, wantSum)
		}
	})
	t.Run("download", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, orders.URL(appPort, fmt.Sprintf("/download?n=%d", size)), nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+tok.read)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("download: %v", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("got %d, want 200", resp.StatusCode)
		}
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil {
			t.Fatalf("read body after %d bytes: %v", n, err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); n != size || got != wantSum {
			t.Errorf("got %d bytes with sha256 %s, want %d with %s", n, got, size, wantSum)
		}
	})
	hwm := procStatusKB(t, pid, "VmHWM")
	t.Logf("agent VmHWM: %d KiB before, %d KiB after 2x100 MB", base, hwm)
	// "Well below the body": a copy of the body would add 100 MiB.
	if grew := hwm - base; grew > 24<<10 {
		t.Errorf("agent peak RSS grew by %d KiB while streaming 100 MB, want < 24 MiB", grew)
	}
	if hwm > 80<<10 {
		t.Errorf("agent peak RSS %d KiB, want < 80 MiB", hwm)
	}
}
