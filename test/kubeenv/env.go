package kubeenv

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// AdminUser is the user of Env.Config: a member of system:masters.
const AdminUser = "kubeenv-admin"

// Options configures an Env.
type Options struct {
	// Users maps extra user names to their groups; each gets a static bearer
	// token (Env.UserConfig). A service account's identity is simulated by
	// a name like "system:serviceaccount:ns:name" with the groups
	// "system:serviceaccounts" and "system:serviceaccounts:ns". Nil means
	// only AdminUser exists.
	Users map[string][]string
	// CRDDir, when set, is a directory of CustomResourceDefinition YAML
	// files applied (and waited for) once the API server is ready. Empty
	// means no CRDs.
	CRDDir string
	// APIServerArgs are extra kube-apiserver flags, appended last so they
	// override the defaults. Nil means none.
	APIServerArgs []string
	// StartTimeout bounds the wait for etcd and the API server to become
	// ready. Zero means 90 seconds.
	StartTimeout time.Duration
}

// Env is a running etcd and kube-apiserver on loopback.
type Env struct {
	// Dir is the temporary directory holding data, certificates and logs.
	Dir string
	// Host is the API server URL, https://127.0.0.1:<port>.
	Host string
	// CAData is the PEM CA that signed the serving certificate.
	CAData []byte
	// Kubeconfig is the path of an admin kubeconfig file.
	Kubeconfig string

	bins      map[string]string
	tokens    map[string]string // user → bearer token
	etcd      *process
	apiserver *process
	ownDir    bool
}

// Start runs an Env for the test and stops it in tb.Cleanup. It skips (or
// fails, under PORTCULLIS_REQUIRE_PRIVILEGED=1) when the binaries are
// missing, and fails the test when the control plane does not come up.
func Start(tb testing.TB, opts Options) *Env {
	tb.Helper()
	bins := RequireBinaries(tb)
	e, err := newEnv(bins, tb.TempDir(), false, opts)
	if err != nil {
		tb.Fatalf("start kube control plane: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("kube-apiserver log tail:\n%s", e.apiserver.tail(40))
			tb.Logf("etcd log tail:\n%s", e.etcd.tail(20))
		}
		if err := e.Stop(); err != nil {
			tb.Errorf("stop kube control plane: %v", err)
		}
	})
	return e
}

// New runs an Env outside a test (e.g. from TestMain or a benchmark
// driver). The caller must call Stop, which also removes Dir.
func New(opts Options) (*Env, error) {
	bins, err := Binaries()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kubeenv-")
	if err != nil {
		return nil, fmt.Errorf("create temp dir: %w", err)
	}
	e, err := newEnv(bins, dir, true, opts)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return e, nil
}

func newEnv(bins map[string]string, dir string, ownDir bool, opts Options) (_ *Env, err error) {
	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = 90 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	e := &Env{Dir: dir, bins: bins, tokens: map[string]string{}, ownDir: ownDir}
	defer func() {
		if err != nil {
			err = errors.Join(err, e.stopProcesses())
			if e.apiserver != nil {
				err = fmt.Errorf("%w\nkube-apiserver log tail:\n%s", err, e.apiserver.tail(30))
			} else if e.etcd != nil {
				err = fmt.Errorf("%w\netcd log tail:\n%s", err, e.etcd.tail(30))
			}
		}
	}()

	pki, err := newPKI(dir)
	if err != nil {
		return nil, err
	}
	e.CAData = pki.caPEM

	if err := retryPorts(func() error { return e.startEtcd(ctx) }, &e.etcd); err != nil {
		return nil, err
	}
	if err := e.writeTokens(opts.Users); err != nil {
		return nil, err
	}
	if err := retryPorts(func() error { return e.startAPIServer(ctx, pki, opts.APIServerArgs) }, &e.apiserver); err != nil {
		return nil, err
	}
	e.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := e.WriteKubeconfig(e.Kubeconfig, AdminUser); err != nil {
		return nil, err
	}
	if opts.CRDDir != "" {
		if err := e.ApplyCRDs(ctx, opts.CRDDir); err != nil {
			return nil, err
		}
	}
	return e, nil
}

func (e *Env) startEtcd(ctx context.Context) error {
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	client := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	args := []string{
		"--name=kubeenv",
		"--data-dir=" + filepath.Join(e.Dir, "etcd"),
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=kubeenv=" + peer,
		// Test data is disposable: skipping fsync makes writes cheap.
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	}
	e.etcd, err = startProcess(e.bins["etcd"], args, filepath.Join(e.Dir, "etcd.log"))
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	return e.etcd.waitReady(ctx, func() bool {
		resp, err := hc.Get(client + "/health")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte(`"health":"true"`))
	})
}

// writeTokens writes the static token file: one random token per user.
func (e *Env) writeTokens(users map[string][]string) error {
	all := map[string][]string{AdminUser: {"system:masters"}}
	for u, g := range users {
		all[u] = g
	}
	names := make([]string, 0, len(all))
	for u := range all {
		names = append(names, u)
	}
	sort.Strings(names)
	var b strings.Builder
	for i, u := range names {
		tok, err := randomToken()
		if err != nil {
			return err
		}
		e.tokens[u] = tok
		// token,user,uid,"group1,group2"
		fmt.Fprintf(&b, "%s,%s,uid-%d,%q\n", tok, u, i, strings.Join(all[u], ","))
	}
	return os.WriteFile(filepath.Join(e.Dir, "tokens.csv"), []byte(b.String()), 0o600)
}

func (e *Env) startAPIServer(ctx context.Context, p *pki, extra []string) error {
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	e.Host = "https://127.0.0.1:" + strconv.Itoa(ports[0])
	args := []string{
		"--etcd-servers=" + e.etcd.url(),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports[0]),
		"--cert-dir=" + filepath.Join(e.Dir, "certs"),
		"--tls-cert-file=" + p.servingCert,
		"--tls-private-key-file=" + p.servingKey,
		"--token-auth-file=" + filepath.Join(e.Dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--anonymous-auth=false",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.saKey,
		"--service-account-signing-key-file=" + p.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		// Without a controller manager no token controller populates
		// service accounts, so the ServiceAccount admission plugin would
		// refuse every pod; without node endpoints the default reconciler
		// would keep rewriting the kubernetes Endpoints.
		"--disable-admission-plugins=ServiceAccount",
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=0",
	}
	args = append(args, extra...)
	e.apiserver, err = startProcess(e.bins["kube-apiserver"], args, filepath.Join(e.Dir, "kube-apiserver.log"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.caPEM)
	hc := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	defer hc.CloseIdleConnections()
	return e.apiserver.waitReady(ctx, func() bool {
		req, _ := http.NewRequest(http.MethodGet, e.Host+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+e.tokens[AdminUser])
		resp, err := hc.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode == http.StatusOK
	})
}

// Config returns a rest.Config for AdminUser (system:masters).
func (e *Env) Config() *rest.Config { return e.UserConfig(AdminUser) }

// UserConfig returns a rest.Config authenticating as user, one of
// Options.Users or AdminUser. It panics on an unknown user: that is a bug in
// the test.
func (e *Env) UserConfig(user string) *rest.Config {
	tok, ok := e.tokens[user]
	if !ok {
		panic(fmt.Sprintf("kubeenv: no token for user %q", user))
	}
	return &rest.Config{
		Host:            e.Host,
		BearerToken:     tok,
		TLSClientConfig: rest.TLSClientConfig{CAData: append([]byte(nil), e.CAData...)},
		QPS:             1000,
		Burst:           2000,
		UserAgent:       "kubeenv/" + user,
	}
}

// WriteKubeconfig writes a kubeconfig for user to path.
func (e *Env) WriteKubeconfig(path, user string) error {
	tok, ok := e.tokens[user]
	if !ok {
		return fmt.Errorf("write kubeconfig: no token for user %q", user)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubeenv"] = &clientcmdapi.Cluster{Server: e.Host, CertificateAuthorityData: e.CAData}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: tok}
	cfg.Contexts["kubeenv"] = &clientcmdapi.Context{Cluster: "kubeenv", AuthInfo: user}
	cfg.CurrentContext = "kubeenv"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// Kubectl runs kubectl with the admin kubeconfig and returns its combined
// output. The error includes the output when kubectl fails.
func (e *Env) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, e.bins["kubectl"], append([]string{"--kubeconfig=" + e.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// Stop stops the API server, then etcd, and removes Dir when New created it.
// Stop informers before calling it: a watch that outlives the server only
// produces reconnect noise until its context ends.
func (e *Env) Stop() error {
	err := e.stopProcesses()
	if e.ownDir {
		err = errors.Join(err, os.RemoveAll(e.Dir))
	}
	return err
}

func (e *Env) stopProcesses() error {
	var err error
	if e.apiserver != nil {
		err = errors.Join(err, e.apiserver.stop())
	}
	if e.etcd != nil {
		err = errors.Join(err, e.etcd.stop())
	}
	return err
}

// process is a child process with its output in a log file.
type process struct {
	name   string
	cmd    *exec.Cmd
	log    string
	args   []string
	exited chan struct{}
	err    error // valid after exited is closed
}

func startProcess(bin string, args []string, logPath string) (*process, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create log %s: %w", logPath, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Its own process group, so a terminal's ^C reaches the test binary
	// only and the test's cleanup stops the child in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &process{name: filepath.Base(bin), cmd: cmd, log: logPath, args: args, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	return p, nil
}

// url returns etcd's client URL.
func (p *process) url() string {
	for _, a := range p.args {
		if v, ok := strings.CutPrefix(a, "--advertise-client-urls="); ok {
			return v
		}
	}
	return ""
}

// waitReady polls ready every 100ms until it reports true, the process
// exits, or ctx ends. Polling is the only readiness signal a child process
// offers.
func (p *process) waitReady(ctx context.Context, ready func() bool) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if ready() {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before becoming ready: %v", p.name, p.err)
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to become ready: %w", p.name, ctx.Err())
		case <-tick.C:
		}
	}
}

// stop sends SIGTERM, waits up to 15 s, then kills.
func (p *process) stop() error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return nil
	case <-time.After(15 * time.Second):
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.exited:
		return fmt.Errorf("%s ignored SIGTERM for 15s and was killed", p.name)
	case <-time.After(5 * time.Second):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// tail returns the last n lines of the process log.
func (p *process) tail(n int) string {
	if p == nil {
		return ""
	}
	f, err := os.Open(p.log)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// retryPorts runs start up to three times while it fails because a port
// picked by freePorts was taken by someone else before the child bound it
// (tests of several packages run in parallel).
func retryPorts(start func() error, p **process) error {
	var err error
	for range 3 {
		if err = start(); err == nil {
			return nil
		}
		if *p == nil || !strings.Contains((*p).tail(50), "address already in use") {
			return err
		}
		if serr := (*p).stop(); serr != nil {
			return errors.Join(err, serr)
		}
		*p = nil
	}
	return err
}

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago; retryPorts covers the race with other processes.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate token: %w", err)
	}
	return hex.EncodeToString(b), nil
}
