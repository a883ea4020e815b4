package kubee2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
	"github.com/portcullis-mesh/portcullis/bpf/cgroupv2"
	"github.com/portcullis-mesh/portcullis/bpf/podnet"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
	"github.com/portcullis-mesh/portcullis/test/kubeenv"
	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
)

// waitTimeout bounds every wait of these tests.
const waitTimeout = 30 * time.Second

const (
	// agentUser is the agent's service account, with the DaemonSet's RBAC.
	agentUser = "system:serviceaccount:portcullis:portcullis-agent"
	// clientIDAnnotation carries a ServiceAccount's Entra Workload ID.
	clientIDAnnotation = "azure.workload.identity/client-id"
	trustDomain        = "cluster.local"
)

// spiffeID is the SPIFFE ID of a service account of the shop namespace.
func spiffeID(sa string) string {
	return fmt.Sprintf("spiffe://%s/ns/shop/sa/%s", trustDomain, sa)
}

// cluster is one API server, one devidp, one pod network shared by every
// "node", and the agents.
type cluster struct {
	t      testing.TB
	env    *kubeenv.Env
	client kubernetes.Interface
	idp    *idp.IDP
	idpURL string
	net    *testenv.Network
	dir    string
	// cgroupBase is this run's directory below the cgroup v2 root; the
	// pods' kubepods.slice hierarchy lives under it.
	cgroupBase string
	pause      string // a "pause" executable (sleep under that name)
	pods       map[string]*kpod
	agents     map[string]*agent
}

// newCluster starts the control plane with the CRDs and the DaemonSet's
// namespace and RBAC, the namespace shop, and devidp.
func newCluster(t testing.TB) *cluster {
	t.Helper()
	testenv.RequirePrivileged(t)
	kubeenv.RequireBinaries(t)
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	agentBinary(t) // before the control plane: go build competes for the CPUs
	c := &cluster{t: t, dir: t.TempDir(), pods: map[string]*kpod{}, agents: map[string]*agent{}}
	c.env = kubeenv.Start(t, kubeenv.Options{
		CRDDir: filepath.Join(root, "daemonset", "crds"),
		Users:  map[string][]string{agentUser: {"system:serviceaccounts", "system:serviceaccounts:portcullis"}},
	})
	ctx := c.ctx()
	for _, f := range []string{"namespace.yaml", "rbac.yaml"} {
		if out, err := c.env.Kubectl(ctx, "apply", "--server-side", "-f", filepath.Join(root, "daemonset", "manifests", f)); err != nil {
			t.Fatalf("apply %s: %v\n%s", f, err, out)
		}
	}
	c.client = kubernetes.NewForConfigOrDie(c.env.Config())
	if _, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	if c.idp, err = idp.New(idp.Options{}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c.idp.Handler(""))
	t.Cleanup(srv.Close)
	c.idpURL = srv.URL

	c.net = testenv.NewNetwork(t)
	cgRoot, err := cgroupv2.Root()
	if err != nil {
		t.Fatal(err)
	}
	c.cgroupBase = filepath.Join(cgRoot, fmt.Sprintf("kubee2e-%d-%s", os.Getpid(), randomHex(4)))
	if err := os.Mkdir(c.cgroupBase, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := removeCgroupTree(c.cgroupBase); err != nil {
			t.Errorf("remove cgroups: %v", err)
		}
	})
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	c.pause = filepath.Join(c.dir, "pause")
	if err := os.Symlink(sleep, c.pause); err != nil {
		t.Fatal(err)
	}
	return c
}

// ctx is a context bounded by waitTimeout, for one API call or kubectl.
func (c *cluster) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	c.t.Cleanup(cancel)
	return ctx
}

// serviceAccount creates a ServiceAccount of shop, with a Workload ID
// client ID when clientID is not empty.
func (c *cluster) serviceAccount(name, clientID string) {
	c.t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name}}
	if clientID != "" {
		sa.Annotations = map[string]string{clientIDAnnotation: clientID}
	}
	if _, err := c.client.CoreV1().ServiceAccounts("shop").Create(c.ctx(), sa, metav1.CreateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// apply runs kubectl apply -f on yaml ({{IDP}} replaced by devidp's URL).
func (c *cluster) apply(yaml string) {
	c.t.Helper()
	f := filepath.Join(c.dir, "apply.yaml")
	if err := os.WriteFile(f, []byte(strings.ReplaceAll(yaml, "{{IDP}}", c.idpURL)), 0o644); err != nil {
		c.t.Fatal(err)
	}
	if out, err := c.env.Kubectl(c.ctx(), "apply", "-f", f); err != nil {
		c.t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
}

// mint returns a devidp app token for api://orders.
func (c *cluster) mint(clientID string, roles ...string) string {
	c.t.Helper()
	tok, err := c.idp.Mint(idp.TokenRequest{Audience: "api://orders", App: true, ClientID: clientID, Roles: roles})
	if err != nil {
		c.t.Fatal(err)
	}
	return tok
}

// podSpec describes a pod of a test.
type podSpec struct {
	// Namespace is the Pod's namespace. Empty: shop.
	Namespace                  string
	Name, Node, ServiceAccount string
	Labels                     map[string]string
	// Server runs the echo server on appPort; otherwise the pod only
	// makes calls.
	Server bool
	// StatusIP, when valid, is the address the Pod's status claims instead
	// of the pod's real one.
	StatusIP netip.Addr
	// HostNetwork makes a host-network pod: its processes run in the
	// host's network namespace, its status claims StatusIP. No Server.
	HostNetwork bool
}

// kpod is a pod: a Pod object, a netns on the shared bridge, and a sandbox
// ("pause") and, for servers, the echo server in kubepods-shaped cgroups
// named after the Pod's UID (systemd driver, BestEffort).
type kpod struct {
	spec    podSpec
	net     *testenv.Pod
	uid     string
	podCg   string // the pod's slice
	appCg   string // the container scope of the server and of calls
	procs   []*exec.Cmd
	deleted bool
}

func (p *kpod) url(path string) string {
	return "http://" + netip.AddrPortFrom(p.net.IPv4, appPort).String() + path
}

func (p *kpod) url6(path string) string {
	return "http://" + netip.AddrPortFrom(p.net.IPv6, appPort).String() + path
}

// tcxPrograms returns the IDs of the programs attached at TCX ingress of
// the pod's interface (the capture program when the pod is enrolled).
func (c *cluster) tcxPrograms(p *kpod) []ebpf.ProgramID {
	c.t.Helper()
	var ids []ebpf.ProgramID
	err := podnet.Do(p.net.NetnsPath, func() error {
		iface, err := net.InterfaceByName(testenv.PodInterface)
		if err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: iface.Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		for _, prog := range res.Programs {
			ids = append(ids, prog.ID)
		}
		return nil
	})
	if err != nil {
		c.t.Fatalf("query TCX programs of %s: %v", p.spec.Name, err)
	}
	return ids
}

// addPod creates the pod's network, its Pod object (Running, with its
// addresses) and its processes.
func (c *cluster) addPod(s podSpec) *kpod {
	c.t.Helper()
	if s.Namespace == "" {
		s.Namespace = "shop"
	}
	p := &kpod{spec: s}
	var ips []string
	if !s.HostNetwork {
		p.net = c.net.NewPod(c.t, testenv.PodOptions{NoProcess: true})
		ips = []string{p.net.IPv4.String(), p.net.IPv6.String()}
	}
	if s.StatusIP.IsValid() {
		ips = []string{s.StatusIP.String()}
	}
	created, err := kubeenv.RunningPod(c.ctx(), c.client, kubeenv.Pod{
		Namespace: s.Namespace, Name: s.Name, Node: s.Node, ServiceAccount: s.ServiceAccount,
		Labels: s.Labels, IPs: ips, HostNetwork: s.HostNetwork,
	})
	if err != nil {
		c.t.Fatal(err)
	}
	p.uid = string(created.UID)
	c.t.Cleanup(func() {
		if !p.deleted {
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			_ = kubeenv.DeletePodNow(ctx, c.client, s.Namespace, s.Name)
		}
	})

	qos := filepath.Join(c.cgroupBase, "kubepods.slice", "kubepods-besteffort.slice")
	p.podCg = filepath.Join(qos, "kubepods-besteffort-pod"+strings.ReplaceAll(p.uid, "-", "_")+".slice")
	sandboxCg := filepath.Join(p.podCg, "cri-containerd-"+randomHex(32)+".scope")
	p.appCg = filepath.Join(p.podCg, "cri-containerd-"+randomHex(32)+".scope")
	for _, d := range []string{sandboxCg, p.appCg} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			c.t.Fatal(err)
		}
	}
	c.t.Cleanup(func() {
		for _, cmd := range p.procs {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	sandbox := exec.Command(c.pause, "infinity")
	c.startIn(p, sandboxCg, sandbox)
	p.procs = append(p.procs, sandbox)
	if s.Server {
		self, err := os.Executable()
		if err != nil {
			c.t.Fatal(err)
		}
		app := exec.Command(self, "-test.run=^$")
		app.Env = append(os.Environ(), appEnv+"="+s.Name)
		out, err := app.StdoutPipe()
		if err != nil {
			c.t.Fatal(err)
		}
		var stderr strings.Builder
		app.Stderr = &stderr
		c.startIn(p, p.appCg, app)
		p.procs = append(p.procs, app)
		ready := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(out).ReadString('\n')
			ready <- strings.TrimSpace(line)
			_, _ = io.Copy(io.Discard, out)
		}()
		select {
		case line := <-ready:
			if line != "ready" {
				c.t.Fatalf("server of %s: got %q, want ready", s.Name, line)
			}
		case <-time.After(waitTimeout):
			c.t.Fatalf("server of %s not ready after %v", s.Name, waitTimeout)
		}
	}
	c.pods[s.Namespace+"/"+s.Name] = p
	return p
}

// startIn starts cmd in cgroup dir and in p's network namespace (the
// host's for a host-network pod).
func (c *cluster) startIn(p *kpod, dir string, cmd *exec.Cmd) {
	c.t.Helper()
	cg, err := os.Open(dir)
	if err != nil {
		c.t.Fatal(err)
	}
	defer cg.Close()
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	start := cmd.Start
	if p.net != nil {
		start = func() error { return podnet.Do(p.net.NetnsPath, cmd.Start) }
	}
	if err := start(); err != nil {
		c.t.Fatalf("start %s in pod %s: %v", cmd.Path, p.spec.Name, err)
	}
}

// deletePod deletes the Pod object with grace period 0 (no kubelet).
func (c *cluster) deletePod(p *kpod) {
	c.t.Helper()
	if err := kubeenv.DeletePodNow(c.ctx(), c.client, p.spec.Namespace, p.spec.Name); err != nil {
		c.t.Fatal(err)
	}
	p.deleted = true
}

// callResult is what a call made from inside a pod got.
type callResult struct {
	Status int
	Echo   echo
	Err    string // curl's error output when the call failed
}

// call runs curl in from's network namespace and container cgroup, so the
// datapath sees a socket of that pod, and returns the status and the echo
// (when the app answered).
func (c *cluster) call(from *kpod, method, url, token string) callResult {
	c.t.Helper()
	args := []string{"-sS", "-m", "5", "-o", "-", "-w", "\n%{http_code}", "-X", method}
	if token != "" {
		args = append(args, "-H", "Authorization: Bearer "+token)
	}
	cmd := exec.Command("curl", append(args, url)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	c.startIn(from, from.appCg, cmd)
	err := cmd.Wait()
	out := stdout.String()
	i := strings.LastIndexByte(out, '\n')
	var r callResult
	r.Status, _ = strconv.Atoi(strings.TrimSpace(out[i+1:]))
	if err != nil {
		r.Err = strings.TrimSpace(stderr.String())
		return r
	}
	if r.Status == http.StatusOK {
		if err := json.Unmarshal([]byte(out[:max(i, 0)]), &r.Echo); err != nil {
			c.t.Fatalf("%s %s from %s: body %q: %v", method, url, from.spec.Name, out, err)
		}
	}
	return r
}

// agent is one portcullis-agent process playing one node.
type agent struct {
	c       *cluster
	node    string
	bin     string
	config  string
	admin   string
	socket  string
	pinDir  string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	// readyAfter is how long the last start took, from the process
	// starting to /readyz answering 200.
	readyAfter time.Duration
}

// startAgent runs an agent in Kubernetes mode as node, with the agent's
// service-account identity, its own pin directory, admin port and debug
// socket. The datapath stays pinned when it exits (fail closed); the pins
// are removed when the test ends.
func (c *cluster) startAgent(node string) *agent {
	c.t.Helper()
	a := &agent{
		c: c, node: node, bin: agentBinary(c.t),
		config:  filepath.Join(c.dir, "agent-"+node+".yaml"),
		admin:   freeAddr(c.t),
		socket:  filepath.Join(c.dir, "debug-"+node+".sock"),
		pinDir:  fmt.Sprintf("/sys/fs/bpf/portcullis/kubee2e-%d-%s", os.Getpid(), node),
		logPath: filepath.Join(c.dir, "agent-"+node+".log"),
	}
	kubeconfig := filepath.Join(c.dir, "agent.kubeconfig")
	if err := c.env.WriteKubeconfig(kubeconfig, agentUser); err != nil {
		c.t.Fatal(err)
	}
	cfg := fmt.Sprintf(`mode: kubernetes
nodeName: %s
trustDomain: %s
adminAddress: %s
debugSocket: %s
pinDir: %s
teardownOnExit: false
shutdownGrace: 2s
kubernetes:
  kubeconfig: %s
  podName: portcullis-agent-%s
  podNamespace: portcullis
audit:
  path: %s
log:
  format: text
  level: info
`, node, trustDomain, a.admin, a.socket, a.pinDir, kubeconfig, node, filepath.Join(c.dir, "audit-"+node+".log"))
	if err := os.WriteFile(a.config, []byte(cfg), 0o600); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() {
		a.stop()
		if c.t.Failed() {
			b, _ := os.ReadFile(a.logPath)
			c.t.Logf("agent %s log (tail):\n%s", node, tail(string(b), 60))
		}
		c.removePins(a)
	})
	a.start()
	c.agents[node] = a
	return a
}

// removePins removes what the agent left pinned (it keeps its datapath on
// exit: fail closed).
func (c *cluster) removePins(a *agent) {
	if err := os.RemoveAll(a.pinDir); err != nil {
		c.t.Errorf("remove pins of %s: %v", a.node, err)
	}
}

// start runs the agent process and waits for /readyz.
func (a *agent) start() {
	t := a.c.t
	t.Helper()
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	a.cmd = exec.Command(a.bin, "--config", a.config)
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start agent %s: %v", a.node, err)
	}
	started := time.Now()
	done := make(chan struct{})
	a.done = done
	cmd := a.cmd
	go func() { _ = cmd.Wait(); close(done) }()
	if err := waitReady(a.admin, done, a.readyTimeout()); err != nil {
		b, _ := os.ReadFile(a.logPath)
		t.Fatalf("agent %s: %v; log:\n%s", a.node, err, tail(string(b), 40))
	}
	a.readyAfter = time.Since(started)
}

// readyTimeout bounds the agent's start: waitTimeout, or 5 minutes for
// the scale benchmark's big cluster.
func (a *agent) readyTimeout() time.Duration {
	if _, ok := a.c.t.(*testing.B); ok {
		return 5 * time.Minute
	}
	return waitTimeout
}

// waitReady polls /readyz (the agent offers no other signal) until 200,
// the process ending (done closed) or timeout.
func waitReady(admin string, done <-chan struct{}, timeout time.Duration) error {
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return errors.New("exited before it was ready")
		default:
		}
		resp, err := hc.Get("http://" + admin + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = strings.TrimSpace(string(b))
		} else {
			last = err.Error()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %v: %s", timeout, last)
}

// kill ends the agent with SIGKILL: nothing is torn down.
func (a *agent) kill() {
	if a.done == nil {
		return
	}
	_ = a.cmd.Process.Kill()
	<-a.done
	a.done = nil
}

// stop ends the agent with SIGTERM (SIGKILL after 15 s).
func (a *agent) stop() {
	if a.done == nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(15 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
	a.done = nil
}

// metric returns the value of the first sample of /metrics whose line
// starts with name (labels included, e.g. `x{a="b"}`), and whether there
// was one.
func (a *agent) metric(name string) (float64, bool) {
	a.c.t.Helper()
	resp, err := http.Get("http://" + a.admin + "/metrics")
	if err != nil {
		a.c.t.Fatalf("metrics of %s: %v", a.node, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				a.c.t.Fatalf("metric %s of %s: %v", name, a.node, err)
			}
			return f, true
		}
	}
	return 0, false
}

// bpfMaps dumps the agent's datapath maps through its debug API.
func (a *agent) bpfMaps() *debugv1.DumpBPFMapsResponse {
	a.c.t.Helper()
	conn, err := grpc.NewClient("passthrough:///portcullis-agent",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", a.socket)
		}),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		a.c.t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := debugv1.NewDebugClient(conn).DumpBPFMaps(ctx, &debugv1.DumpBPFMapsRequest{})
	if err != nil {
		a.c.t.Fatalf("dump bpf maps of %s: %v", a.node, err)
	}
	return r
}

// attachStates maps "namespace/name" of every workload the agent knows on
// its node to its attach state ("attached", "excluded: self", …), through
// the debug API's ListWorkloads.
func (a *agent) attachStates() map[string]string {
	a.c.t.Helper()
	conn, err := grpc.NewClient("passthrough:///portcullis-agent",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", a.socket)
		}),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		a.c.t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := debugv1.NewDebugClient(conn).ListWorkloads(ctx, &debugv1.ListWorkloadsRequest{})
	if err != nil {
		a.c.t.Fatalf("list workloads of %s: %v", a.node, err)
	}
	m := map[string]string{}
	for _, w := range r.GetWorkloads() {
		if w.GetAttachState() != "remote" {
			m[w.GetNamespace()+"/"+w.GetName()] = w.GetAttachState()
		}
	}
	return m
}

// enrolled lists the workloads in the agent's datapath enrolment map.
func (a *agent) enrolled() []string {
	var w []string
	for _, e := range a.bpfMaps().GetEnrolled() {
		w = append(w, e.GetWorkload())
	}
	return w
}

func freeAddr(tb testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// removeCgroupTree removes dir and every cgroup below it, deepest first,
// retrying briefly while the kernel still counts exited processes.
func removeCgroupTree(dir string) error {
	var dirs []string
	err := filepathWalkDirs(dir, func(p string) { dirs = append(dirs, p) })
	if err != nil {
		return err
	}
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		var err error
		for range 50 {
			if err = os.Remove(dirs[i]); err == nil || errors.Is(err, os.ErrNotExist) {
				err = nil
				break
			}
			time.Sleep(20 * time.Millisecond) // cgroup still populated by an exiting process
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// filepathWalkDirs calls fn for dir and every directory below it, parents
// before children (cgroupfs files are skipped).
func filepathWalkDirs(dir string, fn func(string)) error {
	fn(dir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := filepathWalkDirs(filepath.Join(dir, e.Name()), fn); err != nil {
				return err
			}
		}
	}
	return nil
}
