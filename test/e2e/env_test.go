package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/bpf"
	"github.com/portcullis-mesh/portcullis/bpf/podnet"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

// waitTimeout bounds every wait of these tests.
const waitTimeout = 20 * time.Second

// Workload identities of the demo, as in tools/demo.
const (
	tenant         = "72f988bf-0000-4000-8000-000000000001"
	frontendClient = "aaaaaaaa-0000-4000-8000-00000000f00d"
	trustDomain    = "cluster.local"
)

// appKind says what runs in a pod.
type appKind int

const (
	// noApp: the pod has no server; it only makes calls (curl).
	noApp appKind = iota
	// e2eApp: this test binary as runApp.
	e2eApp
	// demoApp: tools/demoapp on appPort.
	demoApp
)

// podSpec describes one workload of a test.
type podSpec struct {
	Name, ServiceAccount, ClientID string
	App                            appKind
	// CPUs pins the pod's process (taskset -c CPUs). Empty: not pinned.
	CPUs string
	// Labels are labels besides app: <Name>.
	Labels map[string]string
}

// demoPods are the demo's three workloads, with the e2e app (a superset
// of demoapp) in orders-api.
func demoPods(app appKind) []podSpec {
	return []podSpec{
		{Name: "frontend", ServiceAccount: "frontend", ClientID: frontendClient, App: noApp},
		{Name: "orders-api", ServiceAccount: "orders", App: app},
		{Name: "attacker", ServiceAccount: "attacker", App: noApp},
	}
}

// pod is a workload of a test: a testenv pod (netns, veth, cgroup) with
// the process of its spec.
type pod struct {
	*testenv.Pod
	Spec podSpec
}

// Addr is the pod's IPv4 address with port.
func (p *pod) Addr(port uint16) netip.AddrPort { return netip.AddrPortFrom(p.IPv4, port) }

// URL is http://<pod IPv4>:<port><path>.
func (p *pod) URL(port uint16, path string) string {
	return "http://" + p.Addr(port).String() + path
}

// URL6 is http://[<pod IPv6>]:<port><path>.
func (p *pod) URL6(port uint16, path string) string {
	return "http://" + netip.AddrPortFrom(p.IPv6, port).String() + path
}

// env is one test's world: pods on a bridge, a config directory and an
// agent.
type env struct {
	t     testing.TB
	bins  binaries
	idp   string
	dir   string
	net   *testenv.Network
	pods  map[string]*pod
	agent *agent
}

// newEnv creates the pods of specs, writes the workloads file and the
// agent's config (policies are written by the test), but does not start
// the agent.
func newEnv(t testing.TB, specs []podSpec) *env {
	t.Helper()
	bins, idpURL := setup(t)
	e := &env{t: t, bins: bins, idp: idpURL, dir: t.TempDir(), pods: map[string]*pod{}}
	e.net = testenv.NewNetwork(t)
	for _, s := range specs {
		p := &pod{Pod: e.net.NewPod(t, testenv.PodOptions{NoProcess: true}), Spec: s}
		e.pods[s.Name] = p
		switch s.App {
		case e2eApp:
			self, err := os.Executable()
			if err != nil {
				t.Fatalf("find test binary: %v", err)
			}
			cmd := pinned(s.CPUs, self, "-test.run=^$")
			cmd.Env = append(os.Environ(), appEnv+"="+s.Name)
			startServer(t, p, cmd)
		case demoApp:
			cmd := pinned(s.CPUs, bins.DemoApp, "-listen", fmt.Sprintf(":%d", appPort), "-name", s.Name)
			startServer(t, p, cmd)
			e.waitPort(p, appPort)
		}
	}
	if err := os.MkdirAll(filepath.Join(e.dir, "policies"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.writeWorkloads()
	e.agent = newAgent(t, e)
	return e
}

// pinned is exec.Command, under taskset when cpus is not empty. taskset
// execs the command, so the PID is the command's.
func pinned(cpus, name string, args ...string) *exec.Cmd {
	if cpus == "" {
		return exec.Command(name, args...)
	}
	return exec.Command("taskset", append([]string{"-c", cpus, name}, args...)...)
}

// writeWorkloads writes the local-mode workloads file with the pods named,
// or every pod when none is named. It replaces the file atomically (write,
// then rename), as the agent may be watching it.
func (e *env) writeWorkloads(names ...string) {
	e.t.Helper()
	e.installWorkloads(nil, names...)
}

// installWorkloads writes the workloads file with the pods named (every pod
// when none) and atomically puts it in place. extra, when not nil, returns
// YAML lines to add to a pod's entry.
func (e *env) installWorkloads(extra func(*pod) string, names ...string) {
	e.t.Helper()
	var b strings.Builder
	b.WriteString("workloads:\n")
	for _, p := range e.pods {
		if len(names) > 0 && !slices.Contains(names, p.Spec.Name) {
			continue
		}
		labels := "app: " + p.Spec.Name
		for _, k := range slices.Sorted(maps.Keys(p.Spec.Labels)) {
			labels += ", " + k + ": " + p.Spec.Labels[k]
		}
		fmt.Fprintf(&b, "- namespace: shop\n  name: %s\n  serviceAccount: %s\n  labels: {%s}\n",
			p.Spec.Name, p.Spec.ServiceAccount, labels)
		fmt.Fprintf(&b, "  ips: [%s, %q]\n  netns: %s\n  cgroup: %s\n", p.IPv4, p.IPv6.String(), p.NetnsPath, p.CgroupPath)
		if p.Spec.ClientID != "" {
			fmt.Fprintf(&b, "  clientID: %s\n", p.Spec.ClientID)
		}
		if extra != nil {
			b.WriteString(extra(p))
		}
	}
	e.writeFile("workloads.yaml.tmp", b.String())
	if err := os.Rename(filepath.Join(e.dir, "workloads.yaml.tmp"), filepath.Join(e.dir, "workloads.yaml")); err != nil {
		e.t.Fatalf("install workloads: %v", err)
	}
}

func (e *env) writeFile(name, content string) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.dir, name), []byte(content), 0o644); err != nil {
		e.t.Fatalf("write %s: %v", name, err)
	}
}

// setPolicies replaces the policy file atomically (write, then rename), as
// a configuration management tool would. {{IDP}} becomes devidp's URL.
func (e *env) setPolicies(yaml string) {
	e.t.Helper()
	yaml = strings.ReplaceAll(yaml, "{{IDP}}", e.idp)
	tmp := filepath.Join(e.dir, "policies.yaml.tmp")
	if err := os.WriteFile(tmp, []byte(yaml), 0o644); err != nil {
		e.t.Fatalf("write policies: %v", err)
	}
	if err := os.Rename(tmp, filepath.Join(e.dir, "policies", "policies.yaml")); err != nil {
		e.t.Fatalf("install policies: %v", err)
	}
}

// demoPolicies is tools/demo/policies.yaml with devidp's URL.
func (e *env) demoPolicies() string {
	e.t.Helper()
	root, err := moduleRoot()
	if err != nil {
		e.t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "tools/demo/policies.yaml"))
	if err != nil {
		e.t.Fatalf("read demo policies: %v", err)
	}
	s := strings.ReplaceAll(string(b), "http://127.0.0.1:8400", "{{IDP}}")
	if s == string(b) {
		e.t.Fatal("tools/demo/policies.yaml no longer names http://127.0.0.1:8400: update the test")
	}
	return s
}

// startServer starts cmd inside p's netns and cgroup, waits for it to
// print "ready" (the e2e app) or for nothing (demoapp: callers wait for
// the port), and stops it when the test ends.
func startServer(t testing.TB, p *pod, cmd *exec.Cmd) {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	startInPod(t, p, cmd)
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("%s stderr:\n%s", p.Spec.Name, stderr.String())
		}
	})
	if p.Spec.App != e2eApp {
		go func() { _, _ = io.Copy(io.Discard, stdout) }()
		return
	}
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- strings.TrimSpace(line)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case line := <-ready:
		if line != "ready" {
			t.Fatalf("app in %s: got %q, want ready; stderr: %s", p.Spec.Name, line, stderr.String())
		}
	case <-time.After(waitTimeout):
		t.Fatalf("app in %s: not ready after %v; stderr: %s", p.Spec.Name, waitTimeout, stderr.String())
	}
}

// startInPod starts cmd inside p's network namespace and cgroup: born in
// the cgroup (clone3 CLONE_INTO_CGROUP), forked from a thread inside the
// netns.
func startInPod(t testing.TB, p *pod, cmd *exec.Cmd) {
	t.Helper()
	cg, err := os.Open(p.CgroupPath)
	if err != nil {
		t.Fatalf("open cgroup of %s: %v", p.Spec.Name, err)
	}
	defer cg.Close()
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if err := podnet.Do(p.NetnsPath, cmd.Start); err != nil {
		t.Fatalf("start %s in %s: %v", cmd.Path, p.Spec.Name, err)
	}
}

// waitPort waits until something listens on port in p (dialed over the
// pod's loopback, which is never captured).
func (e *env) waitPort(p *pod, port uint16) {
	e.t.Helper()
	d := e.dialer(p)
	deadline := time.Now().Add(waitTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
		cancel()
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("nothing listens on port %d in %s after %v: %v", port, p.Spec.Name, waitTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dialer dials from inside p's netns (but from the test's cgroup, so the
// kernel does not attribute the connection to p's workload).
func (e *env) dialer(p *pod) *podnet.Dialer {
	e.t.Helper()
	d, err := podnet.NewDialer(p.NetnsPath)
	if err != nil {
		e.t.Fatalf("dialer for %s: %v", p.Spec.Name, err)
	}
	e.t.Cleanup(func() { d.Close() })
	return d
}

// stats reads the e2e app's counters in p.
func (e *env) stats(p *pod) appStats {
	e.t.Helper()
	d := e.dialer(p)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/", statsPort))
	if err != nil {
		e.t.Fatalf("stats of %s: %v", p.Spec.Name, err)
	}
	defer resp.Body.Close()
	var s appStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		e.t.Fatalf("decode stats of %s: %v", p.Spec.Name, err)
	}
	return s
}

// curlResult is what curl got.
type curlResult struct {
	Status  int
	Header  http.Header
	Body    string
	Proto   string
	Elapsed time.Duration
}

// curl runs curl from p (its netns and cgroup, so the kernel knows the
// caller) or from the host netns when p is nil.
func (e *env) curl(p *pod, args ...string) curlResult {
	e.t.Helper()
	dir := e.t.TempDir()
	hdr, body := filepath.Join(dir, "headers"), filepath.Join(dir, "body")
	full := append([]string{"-sS", "-m", "10", "-o", body, "-D", hdr, "-w", "%{http_code} %{http_version}"}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "curl", full...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	start := time.Now()
	if p == nil {
		if err := cmd.Start(); err != nil {
			e.t.Fatalf("start curl: %v", err)
		}
	} else {
		startInPod(e.t, p, cmd)
	}
	err := cmd.Wait()
	res := curlResult{Elapsed: time.Since(start)}
	if err != nil {
		e.t.Fatalf("curl %s from %s: %v: %s", strings.Join(args, " "), podName(p), err, stderr.String())
	}
	if _, err := fmt.Sscanf(out.String(), "%d %s", &res.Status, &res.Proto); err != nil {
		e.t.Fatalf("curl output %q: %v", out.String(), err)
	}
	b, _ := os.ReadFile(body)
	res.Body = string(b)
	h, _ := os.ReadFile(hdr)
	res.Header = parseHeaders(string(h))
	return res
}

func podName(p *pod) string {
	if p == nil {
		return "host"
	}
	return p.Spec.Name
}

// parseHeaders parses the last header block curl wrote with -D.
func parseHeaders(s string) http.Header {
	h := http.Header{}
	blocks := strings.Split(strings.TrimSpace(strings.ReplaceAll(s, "\r\n", "\n")), "\n\n")
	for _, line := range strings.Split(blocks[len(blocks)-1], "\n")[1:] {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			h.Add(strings.TrimSpace(k), strings.TrimSpace(v))
		}
	}
	return h
}

// syncBuffer is a bytes.Buffer safe for a writing process and a reading
// test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}

// hostClient is a net/http client in the host netns (ingress from outside
// the node's pods) that keeps connections alive.
func hostClient(t testing.TB) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: 15 * time.Second, Transport: tr}
}

// do makes one request and returns status and body; transport errors fail
// the test.
func do(t testing.TB, c *http.Client, method, url, token string, body io.Reader) (*http.Response, string) {
	t.Helper()
	resp, b, err := tryDo(c, method, url, token, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp, b
}

func tryDo(c *http.Client, method, url, token string, body io.Reader) (*http.Response, string, error) {
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return nil, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, string(b), fmt.Errorf("read body: %w", err)
	}
	return resp, string(b), nil
}

// freePort returns a loopback TCP port nobody listens on right now.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// pinDirFor is the test's pin directory, unique per process and test.
func pinDirFor(t testing.TB) string {
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	return filepath.Join(bpf.BPFFSRoot, "portcullis", fmt.Sprintf("e2e-%d-%s", os.Getpid(), name))
}
