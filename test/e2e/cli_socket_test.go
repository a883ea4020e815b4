package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// cliProc is a CLI left running (decisions --follow), read line by line.
type cliProc struct {
	cmd    *exec.Cmd
	lines  chan string
	done   chan struct{}
	stderr syncBuffer
}

// start runs the CLI with args in the background. The test's cleanup kills
// it if it still runs.
func (c *cli) start(t *testing.T, args ...string) *cliProc {
	t.Helper()
	p := &cliProc{lines: make(chan string, 1024), done: make(chan struct{})}
	p.cmd = exec.Command(c.bin, append([]string{"--socket", c.socket}, args...)...)
	p.cmd.Env = c.environ()
	p.cmd.Stderr = &p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start portcullis %s: %v", strings.Join(args, " "), err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, out)
		close(p.lines)
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// next returns the next line of output, within waitTimeout.
func (p *cliProc) next(t *testing.T) string {
	t.Helper()
	line, err := p.nextLine()
	if err != nil {
		t.Fatal(err)
	}
	return line
}

// nextLine is next, with an error for the caller to put in context.
func (p *cliProc) nextLine() (string, error) {
	select {
	case line, ok := <-p.lines:
		if !ok {
			return "", fmt.Errorf("portcullis exited (%v) before the line the test waits for; stderr %q", p.cmd.ProcessState, p.stderr.String())
		}
		return line, nil
	case <-time.After(waitTimeout):
		return "", fmt.Errorf("no line from portcullis within %v; stderr %q", waitTimeout, p.stderr.String())
	}
}

// exit waits for the process to end within waitTimeout and returns its
// exit code.
func (p *cliProc) exit(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(waitTimeout):
		t.Fatalf("portcullis still running %v later; stderr %q", waitTimeout, p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// TestCLIDecisionsFollow: `decisions --follow` streams a request made
// while it runs, applies its filters to live records, and exits 0 when
// interrupted.
func TestCLIDecisionsFollow(t *testing.T) {
	e := newEnv(t, demoPods(e2eApp))
	e.setPolicies(e.demoPolicies())
	e.agent.Start()
	c := newCLI(t, e)
	tok := mintCLITokens(t)
	orders := e.pods["orders-api"]
	hc := hostClient(t)

	// A decision made before following: the stream starts with it, which
	// tells the test the stream is subscribed (recent and live records come
	// without a gap).
	do(t, hc, http.MethodGet, orders.URL(appPort, "/orders/before"), "", nil)
	waitDecisions(t, c, 1)
	f := c.start(t, "decisions", "--follow", "--deny-only", "--workload", "shop/orders-api", "-o", "json")
	read := func() decisionLine {
		t.Helper()
		line := f.next(t)
		var d decisionLine
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			t.Fatalf("decision line %q: %v", line, err)
		}
		return d
	}
	if got, want := read(), (decisionLine{Decision: "deny", Reason: "missing_token", Source: "anonymous", Method: "GET", Path: "/orders/before", Status: 401}); got != want {
		t.Fatalf("first followed decision: got %+v, want %+v", got, want)
	}

	// An allow (filtered out by --deny-only), then a deny from a pod: the
	// next line is the deny.
	if resp, _ := do(t, hc, http.MethodGet, orders.URL(appPort, "/orders/allowed"), tok.read, nil); resp.StatusCode != 200 {
		t.Fatalf("GET /orders/allowed: got %d, want 200", resp.StatusCode)
	}
	if res := e.curl(e.pods["attacker"], orders.URL(appPort, "/internal/during")); res.Status != 403 {
		t.Fatalf("GET /internal/during from attacker: got %d, want 403", res.Status)
	}
	want := decisionLine{Decision: "deny", Reason: "no_matching_rule", Source: "spiffe://" + trustDomain + "/ns/shop/sa/attacker",
		Method: "GET", Path: "/internal/during", Status: 403}
	if got := read(); got != want {
		t.Errorf("followed decision during the test: got %+v, want %+v", got, want)
	}

	if err := f.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatalf("interrupt portcullis: %v", err)
	}
	if code := f.exit(t); code != 0 {
		t.Errorf("decisions --follow after an interrupt: exit %d, want 0; stderr %q", code, f.stderr.String())
	}
	var rest []string
	for line := range f.lines { // closed once the process exited
		rest = append(rest, line)
	}
	if len(rest) > 0 {
		t.Errorf("decisions --follow printed more than the two denies: %q", rest)
	}
}

// TestCLISocket checks the debug socket the agent serves: root only, what
// a non-root caller is told, and that server reflection lets a generic
// client (what grpcurl does) list the services and call one.
func TestCLISocket(t *testing.T) {
	e := newEnv(t, demoPods(noApp))
	e.setPolicies(e.demoPolicies())
	e.agent.Start()
	c := newCLI(t, e)

	t.Run("mode", func(t *testing.T) {
		fi, err := os.Lstat(c.socket)
		if err != nil {
			t.Fatalf("debug socket: %v", err)
		}
		if fi.Mode().Type() != os.ModeSocket {
			t.Errorf("%s: got type %v, want a socket", c.socket, fi.Mode().Type())
		}
		if got := fi.Mode().Perm(); got != 0o600 {
			t.Errorf("%s: got mode %04o, want 0600", c.socket, got)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 {
			t.Errorf("%s: owned by uid %d, want root", c.socket, st.Uid)
		}
	})

	t.Run("not root", func(t *testing.T) {
		// Let nobody reach the socket file, so that only the socket's own
		// mode refuses: the directories of the test are made traversable and
		// the CLI is copied next to the socket.
		for _, dir := range []string{filepath.Dir(e.dir), e.dir} {
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		b, err := os.ReadFile(c.bin)
		if err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(e.dir, "portcullis")
		if err := os.WriteFile(bin, b, 0o755); err != nil {
			t.Fatal(err)
		}
		nobody := &cli{bin: bin, socket: c.socket, cred: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
		r := nobody.run(t, "", "status")
		n := newNormaliser()
		n.set(e.dir, "$DIR")
		golden(t, "not_root", n, r)
		if r.Code != 3 || strings.Count(r.Stderr, "\n") != 1 || !strings.Contains(r.Stderr, "permission denied") {
			t.Errorf("status as uid 65534: got exit %d, stderr %q; want exit 3 and one line saying permission denied", r.Code, r.Stderr)
		}
		if r := c.run(t, "", "status"); r.Code != 0 {
			t.Errorf("status as root: exit %d, want 0; stderr %q", r.Code, r.Stderr)
		}
	})

	t.Run("reflection", func(t *testing.T) {
		conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatalf("grpc client: %v", err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatalf("server reflection: %v", err)
		}
		ask := func(req *reflectionpb.ServerReflectionRequest) *reflectionpb.ServerReflectionResponse {
			t.Helper()
			if err := stream.Send(req); err != nil {
				t.Fatalf("reflection request: %v", err)
			}
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("reflection answer: %v", err)
			}
			if er := resp.GetErrorResponse(); er != nil {
				t.Fatalf("reflection answer: error %d %s", er.GetErrorCode(), er.GetErrorMessage())
			}
			return resp
		}

		// grpcurl list
		var services []string
		for _, s := range ask(&reflectionpb.ServerReflectionRequest{
			MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
		}).GetListServicesResponse().GetService() {
			services = append(services, s.GetName())
		}
		for _, want := range []string{"grpc.reflection.v1.ServerReflection", "portcullis.debug.v1.Debug"} {
			if !slices.Contains(services, want) {
				t.Errorf("reflection lists %q, want it to include %s", services, want)
			}
		}

		// grpcurl describe portcullis.debug.v1.Debug
		set := &descriptorpb.FileDescriptorSet{}
		for _, b := range ask(&reflectionpb.ServerReflectionRequest{
			MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "portcullis.debug.v1.Debug"},
		}).GetFileDescriptorResponse().GetFileDescriptorProto() {
			fd := &descriptorpb.FileDescriptorProto{}
			if err := proto.Unmarshal(b, fd); err != nil {
				t.Fatalf("file descriptor from reflection: %v", err)
			}
			set.File = append(set.File, fd)
		}
		files, err := protodesc.NewFiles(set)
		if err != nil {
			t.Fatalf("file descriptors from reflection do not resolve: %v", err)
		}
		d, err := files.FindDescriptorByName("portcullis.debug.v1.Debug")
		if err != nil {
			t.Fatalf("service from reflection: %v", err)
		}
		sd := d.(protoreflect.ServiceDescriptor)
		var methods []string
		for i := range sd.Methods().Len() {
			methods = append(methods, string(sd.Methods().Get(i).Name()))
		}
		slices.Sort(methods)
		wantMethods := []string{"DumpBPFMaps", "Explain", "GetStatus", "InspectToken", "ListIssuers", "ListPolicies", "ListWorkloads", "TailDecisions"}
		if diff := cmp.Diff(wantMethods, methods); diff != "" {
			t.Errorf("methods of the Debug service (-want +got):\n%s", diff)
		}

		// grpcurl … portcullis.debug.v1.Debug/GetStatus, with messages
		// built from the reflected descriptors only.
		m := sd.Methods().ByName("GetStatus")
		in, out := dynamicpb.NewMessage(m.Input()), dynamicpb.NewMessage(m.Output())
		if err := conn.Invoke(ctx, "/portcullis.debug.v1.Debug/GetStatus", in, out); err != nil {
			t.Fatalf("GetStatus through reflected descriptors: %v", err)
		}
		if got := out.Get(m.Output().Fields().ByName("node_name")).String(); got != "e2e-node" {
			t.Errorf("GetStatus node_name: got %q, want e2e-node", got)
		}
	})

	t.Run("grpcurl", func(t *testing.T) {
		grpcurl, err := exec.LookPath("grpcurl")
		if err != nil {
			t.Skip("grpcurl is not installed; the reflection subtest does what it does")
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, grpcurl, "-plaintext", "-unix", c.socket, "list").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "portcullis.debug.v1.Debug") {
			t.Errorf("grpcurl list: %v: %s", err, out)
		}
		out, err = exec.CommandContext(ctx, grpcurl, "-plaintext", "-unix", c.socket, "portcullis.debug.v1.Debug/GetStatus").CombinedOutput()
		if err != nil || !strings.Contains(string(out), `"e2e-node"`) {
			t.Errorf("grpcurl GetStatus: %v: %s", err, out)
		}
	})
}

// TestCLIUnreachable: when nothing serves the socket, every command exits
// 3 with one line naming the socket, what the kernel said and what to
// check.
func TestCLIUnreachable(t *testing.T) {
	checkHint := func(t *testing.T, r cliResult, cause string) {
		t.Helper()
		if r.Code != 3 {
			t.Errorf("got exit %d, want 3", r.Code)
		}
		if strings.Count(r.Stderr, "\n") != 1 || !strings.Contains(r.Stderr, "("+cause+")") ||
			!strings.Contains(r.Stderr, "is portcullis-agent running on this node?") {
			t.Errorf("got stderr %q, want one line with (%s) and the hint", r.Stderr, cause)
		}
	}

	t.Run("no socket", func(t *testing.T) {
		dir := t.TempDir()
		c := &cli{bin: portcullisBin(t), socket: filepath.Join(dir, "missing.sock")}
		n := newNormaliser()
		n.set(dir, "$DIR")
		for _, tc := range []struct {
			name string
			args []string
		}{
			{"unreachable_status", []string{"status"}},
			{"unreachable_follow", []string{"decisions", "--follow"}},
			{"unreachable_version", []string{"version"}},
		} {
			r := c.run(t, "", tc.args...)
			golden(t, tc.name, n, r)
			checkHint(t, r, "no such file or directory")
		}
	})

	t.Run("agent stopped", func(t *testing.T) {
		e := newEnv(t, demoPods(noApp))
		e.setPolicies(e.demoPolicies())
		e.agent.Start()
		c := newCLI(t, e)
		n := newNormaliser()
		n.set(e.dir, "$DIR")
		f := c.start(t, "decisions", "--follow")
		if r := c.run(t, "", "status"); r.Code != 0 {
			t.Fatalf("status with the agent running: exit %d: %s", r.Code, r.Stderr)
		}

		e.agent.Stop()
		// A follower ends with the agent, as unreachable (exit 3): the
		// server ends follow streams with Unavailable on shutdown.
		if code := f.exit(t); code != 3 {
			t.Errorf("decisions --follow when the agent stopped: exit %d, want 3; stderr %q", code, f.stderr.String())
		}
		if _, err := os.Lstat(c.socket); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket after the agent stopped: got %v, want it removed", err)
		}
		r := c.run(t, "", "workloads")
		golden(t, "unreachable_stopped", n, r)
		checkHint(t, r, "no such file or directory")

		// A killed agent leaves its socket behind: nobody accepts on it.
		e.agent.Start()
		c.waitSocket(t)
		e.agent.Kill()
		r = c.run(t, "", "policies", "-o", "json")
		golden(t, "unreachable_killed", n, r)
		checkHint(t, r, "connection refused")
	})
}
